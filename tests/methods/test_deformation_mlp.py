"""The deformation MLP as one autograd node (``deformation_mlp``) against the module path."""
from __future__ import annotations

import pytest
import torch

from evalkit.models.fourdgs.deformation import DeformationConfig, DeformationField
from evalkit.models.fourdgs.deformation_mlp import mlp_forward
from evalkit.models.fourdgs.hexplane import HexPlaneConfig


def _field(depth: int, deform: list[str]) -> DeformationField:
    torch.manual_seed(0)
    cfg = DeformationConfig(HexPlaneConfig(feature_dim=4, resolution=[6, 5, 4, 3], multires=[1, 2]),
                            depth=depth, width=8, deform=deform)
    field = DeformationField(cfg, torch.tensor([[-1.0, -1.0, -1.0], [1.0, 1.0, 1.0]])).double()
    with torch.no_grad():  # biases and planes away from their structured initial values
        for p in field.parameters():
            p.add_(0.3 * torch.randn_like(p))
    return field


def _inputs(n: int = 37):
    g = torch.Generator().manual_seed(1)
    means = (torch.rand(n, 3, generator=g, dtype=torch.float64) * 2 - 1).requires_grad_()
    scales = torch.randn(n, 3, generator=g, dtype=torch.float64).requires_grad_()
    quats = torch.randn(n, 4, generator=g, dtype=torch.float64).requires_grad_()
    opac = torch.randn(n, generator=g, dtype=torch.float64).requires_grad_()
    sh = torch.randn(n, 4, 3, generator=g, dtype=torch.float64).requires_grad_()
    t = torch.rand(n, generator=g, dtype=torch.float64)
    return means, scales, quats, opac, sh, t


def _run(field: DeformationField, fused: bool, inputs):
    field.fused = fused
    means, scales, quats, opac, sh, t = inputs
    d = field(means, scales, quats, opac, sh, t)
    outs = [d.means, d.log_scales, d.quats, d.opacity_logits, d.sh]
    # a loss touching every output with different weights, so each gradient path is exercised
    g = torch.Generator().manual_seed(2)
    loss = sum((o * torch.randn(o.shape, generator=g, dtype=o.dtype)).sum() for o in outs)
    wrt = [means, scales, quats, opac, sh, *field.parameters()]
    grads = torch.autograd.grad(loss, wrt, allow_unused=True)
    return [o.detach() for o in outs], grads


@pytest.mark.parametrize("depth", [0, 1, 3])
@pytest.mark.parametrize("deform", [["xyz", "scale", "rot"], ["xyz", "opacity", "sh"], ["rot"]])
def test_fused_mlp_matches_modules(depth, deform):
    """Values and every gradient (inputs, MLP, planes) agree with the nn.Module path in float64,
    for trunks of one and several layers and for heads with and without a residual base."""
    field = _field(depth, deform)
    inputs = _inputs()
    ref_out, ref_grads = _run(field, False, inputs)
    out, grads = _run(field, True, inputs)
    for a, b in zip(out, ref_out):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    names = ["means", "scales", "quats", "opacities", "sh"] + [n for n, _ in field.named_parameters()]
    for name, a, b in zip(names, grads, ref_grads):
        assert a is not None and b is not None, name  # every input and parameter is used
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12, msg=lambda m: f"{name}: {m}")
    # one node: a deformed quaternion's grad_fn is the Function's backward itself
    if "rot" in deform:
        field.fused = True
        d = field(*inputs[:5], inputs[5])
        assert type(d.quats.grad_fn).__name__ == "_DeformationMLPBackward"


def test_gradcheck_of_the_function():
    """The hand-written backward against finite differences (torch.autograd.gradcheck)."""
    g = torch.Generator().manual_seed(3)
    r = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64, requires_grad=True)
    feat = r(6, 5)
    trunk = [(r(4, 5), r(4)), (r(4, 4), r(4))]
    heads = [(r(6, 3), (r(4, 4), r(4)), (r(3, 4), r(3))), (None, (r(4, 4), r(4)), (r(2, 4), r(2)))]
    flat = [feat] + [t for layer in trunk for t in layer] + [t for h in heads for t in (h[0], *h[1], *h[2])
                                                             if t is not None]

    def fn(*xs):
        it = iter(xs)
        f = next(it)
        tr = [(next(it), next(it)) for _ in trunk]
        hs = []
        for base, _, _ in heads:
            b = next(it) if base is not None else None
            hs.append((b, (next(it), next(it)), (next(it), next(it))))
        return tuple(mlp_forward(f, tr, hs))

    assert torch.autograd.gradcheck(fn, flat)


def test_no_grad_forward_needs_no_graph():
    """Rendering (no_grad) gives the same deformed Gaussians without recording anything."""
    field = _field(0, ["xyz", "scale", "rot"])
    inputs = [x.detach() for x in _inputs()]
    with torch.no_grad():
        field.fused = True
        a = field(*inputs[:5], inputs[5])
        field.fused = False
        b = field(*inputs[:5], inputs[5])
    assert a.means.grad_fn is None
    torch.testing.assert_close(a.means, b.means, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(a.quats, b.quats, rtol=1e-12, atol=1e-12)


def test_a_frozen_mlp_gets_no_gradients_and_the_inputs_still_do():
    """Frozen weights (``requires_grad_(False)``) receive None, as through the modules, while the
    deformed Gaussians' gradients reach the means; an MLP without heads is refused."""
    field = _field(1, ["xyz", "scale", "rot"])
    for m in [field.feature_out, field.heads]:
        m.requires_grad_(False)
    means, scales, quats, opac, sh, t = _inputs()
    d = field(means, scales, quats, opac, sh, t)
    (d.means.sum() + d.quats.sum()).backward()
    assert all(p.grad is None for p in field.mlp_parameters())
    assert means.grad is not None and means.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="one head"):
        mlp_forward(torch.zeros(2, 3), [(torch.zeros(4, 3), torch.zeros(4))], [])
