"""The deformation field replayed as CUDA graphs in training (``DeformationField.use_cuda_graphs``)
gives the eager field's outputs and gradients, captures again when the point count changes, and
is never used where it does not apply (CPU, no gradients, a float time)."""
from __future__ import annotations

import pytest
import torch

from evalkit.methods.fourdgs.config import FourDGSConfig
from evalkit.methods.fourdgs.deformation import DeformationField

TINY = dict(feature_dim=8, resolution=[16, 16, 16, 8], multires=[1, 2], net_width=32)


def _field(device, deform=("xyz", "scale", "rot")) -> DeformationField:
    torch.manual_seed(0)
    cfg = FourDGSConfig(**TINY, deform=list(deform)).deformation_config()
    return DeformationField(cfg, torch.tensor([[-1.0] * 3, [1.0] * 3])).to(device)


def _inputs(n: int, device, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.rand(*s, generator=g).to(device)
    return [(r(n, 3) * 2 - 1).requires_grad_(True), r(n, 3).requires_grad_(True), r(n, 4).requires_grad_(True),
            r(n).requires_grad_(True), r(n, 16, 3).requires_grad_(True)]


def _run(field: DeformationField, inputs, t):
    """Outputs and the gradients of a fixed weighted sum, w.r.t. the inputs and the parameters."""
    for x in [*inputs, *field.parameters()]:
        x.grad = None
    d = field(*inputs, t)
    outs = [d.means, d.log_scales, d.quats, d.opacity_logits, d.sh]
    loss = sum((o * torch.linspace(0.5, 1.5, o.numel(), device=o.device).view_as(o)).sum() for o in outs)
    loss.backward()
    grads = [x.grad.clone() if x.grad is not None else None for x in [*inputs, *field.parameters()]]
    return [o.detach().clone() for o in outs], grads


def _same(a, b, exact: bool) -> None:
    for x, y in zip(a, b):
        assert (x is None) == (y is None)
        if x is not None:
            if exact:
                assert torch.equal(x, y)
            else:  # the HexPlane backward adds with atomics: the order of additions varies
                torch.testing.assert_close(x, y, rtol=1e-5, atol=1e-6)


def test_off_cuda_the_graphs_do_not_apply_and_results_are_the_eager_ones():
    field = _field("cpu")
    inputs = _inputs(200, "cpu")
    t = torch.tensor(0.3)
    eager = _run(field, inputs, t)
    field.use_cuda_graphs(True)
    graphed = _run(field, inputs, t)
    assert field.graph_captures == 0
    _same(eager[0], graphed[0], exact=True)
    _same(eager[1], graphed[1], exact=True)


@pytest.mark.gpu
@pytest.mark.parametrize("deform", [("xyz", "scale", "rot"), ("xyz", "scale", "rot", "opacity", "sh")])
def test_graphed_field_matches_the_eager_one_and_recaptures_on_a_new_point_count(deform):
    eager_field, field = _field("cuda", deform), _field("cuda", deform)  # the same parameters
    field.use_cuda_graphs(True)
    for n, t, captures in ((1000, torch.tensor(0.3, device="cuda"), 1),
                           (1000, torch.tensor(0.7, device="cuda"), 1),   # same shapes: replayed
                           (1037, torch.tensor(0.7, device="cuda"), 2),   # densified: captured again
                           (1037, torch.rand(1037, device="cuda"), 3)):   # per-point times (batched views)
        inputs = _inputs(n, "cuda", seed=n)
        eager = _run(eager_field, inputs, t)
        graphed = _run(field, inputs, t)
        assert field.graph_captures == captures
        _same(eager[0], graphed[0], exact=False)
        _same(eager[1], graphed[1], exact=False)
    with torch.no_grad():  # rendering: eager, and no capture
        field(*[x.detach() for x in _inputs(500, "cuda")], torch.tensor(0.5, device="cuda"))
    assert field.graph_captures == 3
