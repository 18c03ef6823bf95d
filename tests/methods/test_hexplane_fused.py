"""The fused Triton HexPlane lookup (``hexplane_triton``) against the PyTorch path: in Triton's CPU
interpreter, on CUDA at a realistic size, and the backend selection / fallback of ``HexPlane``."""
from __future__ import annotations

import warnings

import pytest
import torch

from evalkit.models.fourdgs import hexplane_triton
from evalkit.models.fourdgs.hexplane import HexPlane, HexPlaneConfig
from tests.methods.real_shapes import Shape, hexplane_shapes
from tests.methods.triton_interpreter import run_in_interpreter


def _grid(cls=HexPlane, device="cpu", C=4, res=(6, 5, 4, 7), multires=(1, 2), seed=0) -> HexPlane:
    torch.manual_seed(seed)
    grid = cls(HexPlaneConfig(feature_dim=C, resolution=list(res), multires=list(multires)),
               torch.tensor([[-1.0, -2.0, 0.0], [1.0, 2.0, 3.0]]))
    with torch.no_grad():
        for p in grid.parameters():
            p.uniform_(0.0, 1.5)
    return grid.to(device)


def _points(grid: HexPlane, n: int) -> torch.Tensor:
    lo, hi = grid.aabb  # 10 % beyond the box on each side: border clipping included
    return ((torch.rand(n, 3, device=lo.device) * 1.2 - 0.1) * (hi - lo) + lo).requires_grad_(True)


def _run(grid: HexPlane, backend: str, xyz: torch.Tensor, t) -> tuple[torch.Tensor, list[torch.Tensor]]:
    HexPlane.backend = backend
    try:
        feats = grid(xyz, t)
        w = torch.randn(feats.shape, generator=torch.Generator().manual_seed(1)).to(feats.device)
        return feats.detach(), list(torch.autograd.grad(feats, [xyz, *grid.parameters()], w))
    finally:
        HexPlane.backend = "auto"


def test_triton_kernels_match_the_pytorch_path_in_the_interpreter() -> None:
    """The CUDA path's Triton kernels, run by Triton's CPU interpreter, against PyTorch."""
    assert "triton hexplane agrees" in run_in_interpreter("_triton_hexplane_check.py")


def test_auto_backend_uses_pytorch_on_cpu_and_rejects_unknown_backends() -> None:
    grid = _grid()
    xyz = _points(grid, 10)
    assert not grid._fused(torch.zeros(1, 4), grid.sampled_planes())
    HexPlane.backend = "cuda"
    try:
        with pytest.raises(ValueError):
            grid(xyz, 0.5)
    finally:
        HexPlane.backend = "auto"


def test_kernel_failure_falls_back_to_pytorch_with_one_warning(monkeypatch) -> None:
    grid = _grid()
    xyz = _points(grid, 10)
    ref = grid(xyz, 0.3)

    calls = []

    def broken(*_, **__):
        calls.append(1)
        raise RuntimeError("no compiler")

    monkeypatch.setattr(hexplane_triton, "failed", None)
    monkeypatch.setattr(hexplane_triton, "sample", broken)
    monkeypatch.setattr(HexPlane, "_fused", lambda self, *_: hexplane_triton.failed is None)
    with pytest.warns(RuntimeWarning, match="no compiler"):
        out = grid(xyz, 0.3)
    assert torch.equal(out, ref) and hexplane_triton.failed is not None
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a second warning would raise here
        assert torch.equal(grid(xyz, 0.3), ref)
    assert len(calls) == 1  # no second attempt
    HexPlane.backend = "triton"  # forced: the error surfaces
    monkeypatch.setattr(HexPlane, "_fused", lambda self, *_: True)
    try:
        with pytest.raises(RuntimeError, match="no compiler"):
            grid(xyz, 0.3)
    finally:
        HexPlane.backend = "auto"


def _close(a: torch.Tensor, b: torch.Tensor, rel: float) -> bool:
    return bool((a - b).abs().max() <= rel * b.abs().max() + 1e-6)


REAL_SHAPES = hexplane_shapes()


@pytest.mark.gpu
@pytest.mark.parametrize("shape", list(REAL_SHAPES.values()), ids=list(REAL_SHAPES))
@pytest.mark.parametrize("quantised", [False, True])
def test_triton_hexplane_on_cuda_matches_pytorch(quantised: bool, shape: Shape) -> None:
    """Realistic sizes (N=50k, the D-NeRF and HyperNeRF plane shapes): features and the
    gradients of positions and of every plane, "triton" against "torch"; the quantised subclass
    samples non-leaf planes."""
    from evalkit.methods.fourdgs_cc.model import QuantizedHexPlane
    C, res, multires = shape
    grid = _grid(QuantizedHexPlane if quantised else HexPlane, "cuda", C=C, res=res, multires=multires)
    grid.step = 1 / 64 if quantised else 0.0
    assert grid._fused(torch.zeros(1, 4, device="cuda"), grid.sampled_planes())
    xyz = _points(grid, 50_000)
    for t in (torch.rand(50_000, device="cuda"), 0.37):
        out, grads = _run(grid, "triton", xyz, t)
        ref, ref_grads = _run(grid, "torch", xyz, t)
        assert hexplane_triton.failed is None
        assert _close(out, ref, 1e-5)
        for g, r in zip(grads, ref_grads):
            assert g.shape == r.shape and g.is_contiguous() and _close(g, r, 1e-4)


@pytest.mark.gpu
def test_triton_hexplane_replays_from_a_cuda_graph() -> None:
    """As ``FourDGSModel.freeze_for_rendering`` uses it: no host sync, no host-to-device copy."""
    grid = _grid(device="cuda", C=16)
    xyz = _points(grid, 1000).detach()
    t = torch.zeros((), device="cuda")
    with torch.no_grad():
        grid(xyz, t)  # warm-up: compile, shape table
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            out = grid(xyz, t)
        for v in (0.25, 0.8):
            t.fill_(v)
            graph.replay()
            torch.testing.assert_close(out, grid(xyz, v), rtol=0, atol=0)
    assert hexplane_triton.failed is None  # the kernels ran, not the PyTorch fallback
