"""PlaneRegulariser: the same value and plane gradients as differentiating HexPlane.regulariser,
eagerly (CPU), from the fused kernel in Triton's CPU interpreter, and on CUDA."""
from __future__ import annotations

import pytest
import torch

from evalkit.models.fourdgs.hexplane import HexPlane, HexPlaneConfig
from evalkit.models.fourdgs.plane_regulariser import PlaneRegulariser, _Attach
from tests.methods.real_shapes import Shape, hexplane_shapes
from tests.methods.triton_interpreter import run_in_interpreter

WEIGHTS = (1e-2, 3e-2, 5e-2)


def _grid(device: str, C: int = 3, res=(6, 7, 5, 4), multires=(1, 2)) -> HexPlane:
    torch.manual_seed(0)
    hp = HexPlane(HexPlaneConfig(feature_dim=C, resolution=list(res), multires=list(multires)),
                  torch.tensor([[-1.0, -1.0, -1.0], [1.0, 1.0, 1.0]])).to(device)
    for p in hp.planes():
        p.data.normal_(1.0, 0.3)  # away from the smooth start, so every term has a gradient
    return hp


def _check(hp: HexPlane, reg: PlaneRegulariser, scale: float) -> None:
    value = hp.regulariser(*WEIGHTS)
    want = torch.autograd.grad(scale * value, hp.planes())
    for p in hp.planes():
        p.grad = None
    got = reg()
    (scale * got).backward()
    torch.testing.assert_close(got.detach(), value.detach(), rtol=1e-5, atol=1e-8)
    for p, g in zip(hp.planes(), want):
        torch.testing.assert_close(p.grad, g, rtol=1e-4, atol=1e-9)


def test_precomputed_gradients_reach_autograd_scaled_by_the_loss_weight() -> None:
    """``_Attach`` (how the kernel's gradients enter ``loss.backward``), fed the eager gradients
    from ``values``; the kernel itself: interpreter and CUDA tests below."""
    hp = _grid("cpu")
    reg = PlaneRegulariser(hp, *WEIGHTS, backend="torch")
    value = hp.regulariser(*WEIGHTS)
    want = torch.autograd.grad(2.5 * value, hp.planes())
    got = _Attach.apply(*reg.values(), *hp.planes())
    (2.5 * got).backward()
    torch.testing.assert_close(got.detach(), value.detach())
    for p, g in zip(hp.planes(), want):
        torch.testing.assert_close(p.grad, g)


def test_unknown_backend_is_refused() -> None:
    with pytest.raises(ValueError, match="backend"):
        PlaneRegulariser(_grid("cpu"), *WEIGHTS, backend="graph")


def test_fused_kernel_matches_autograd_in_the_interpreter() -> None:
    assert "regulariser agrees" in run_in_interpreter("_triton_regulariser_check.py")


REAL_SHAPES = hexplane_shapes()


@pytest.mark.gpu
@pytest.mark.parametrize("shape", list(REAL_SHAPES.values()), ids=list(REAL_SHAPES))
def test_fused_kernel_on_cuda_matches_autograd_at_real_sizes(shape: Shape) -> None:
    C, res, multires = shape
    hp = _grid("cuda", C=C, res=res, multires=multires)
    reg = PlaneRegulariser(hp, *WEIGHTS, backend="triton")
    _check(hp, reg, scale=1.0)
    with torch.no_grad():  # an optimiser step updates the planes in place: the next call sees it
        for p in hp.planes():
            p.add_(0.1 * torch.randn_like(p))
    _check(hp, reg, scale=3.0)
    assert reg.failed is None
