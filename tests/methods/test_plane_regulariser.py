"""PlaneRegulariser: the same value and plane gradients as differentiating HexPlane.regulariser."""
from __future__ import annotations

import pytest
import torch

from evalkit.methods.fourdgs.hexplane import HexPlane, HexPlaneConfig
from evalkit.methods.fourdgs.plane_regulariser import PlaneRegulariser

WEIGHTS = (1e-2, 3e-2, 5e-2)


def _grid(device: str) -> HexPlane:
    torch.manual_seed(0)
    hp = HexPlane(HexPlaneConfig(feature_dim=3, resolution=[6, 7, 5, 4], multires=[1, 2]),
                  torch.tensor([[-1.0, -1.0, -1.0], [1.0, 1.0, 1.0]])).to(device)
    for p in hp.planes():
        p.data.normal_(1.0, 0.3)  # away from the smooth start, so every term has a gradient
    return hp


def _eager(hp: HexPlane, scale: float) -> tuple[torch.Tensor, list[torch.Tensor]]:
    value = hp.regulariser(*WEIGHTS)
    grads = torch.autograd.grad(scale * value, hp.planes())
    return value.detach(), list(grads)


def _check(hp: HexPlane, reg: PlaneRegulariser, scale: float) -> None:
    want_value, want_grads = _eager(hp, scale)
    for p in hp.planes():
        p.grad = None
    value = reg()
    (scale * value).backward()
    torch.testing.assert_close(value.detach(), want_value, rtol=1e-5, atol=1e-8)
    for p, g in zip(hp.planes(), want_grads):
        torch.testing.assert_close(p.grad, g, rtol=1e-4, atol=1e-9)


def test_value_and_gradients_match_autograd_on_cpu() -> None:
    hp = _grid("cpu")
    _check(hp, PlaneRegulariser(hp, *WEIGHTS), scale=2.5)  # a loss weight reaches the gradients


@pytest.mark.gpu
def test_graph_replay_matches_eager_and_follows_parameter_updates() -> None:
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    hp = _grid("cuda")
    reg = PlaneRegulariser(hp, *WEIGHTS)
    _check(hp, reg, scale=1.0)
    assert reg.failed is None and reg._graph is not None
    with torch.no_grad():  # an optimiser step updates the planes in place: the replay must see it
        for p in hp.planes():
            p.add_(0.1 * torch.randn_like(p))
    _check(hp, reg, scale=3.0)
    other = _grid("cuda")  # other planes (another model): captured again, not stale
    reg.grid = other
    _check(other, reg, scale=1.0)


@pytest.mark.gpu
def test_a_failed_capture_falls_back_and_leaves_random_draws_working(monkeypatch) -> None:
    """A capture that fails (here: a synchronisation inside it) must not poison the process: the
    value comes eagerly, and the CUDA generator and current stream are usable afterwards."""
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    hp = _grid("cuda")
    reg = PlaneRegulariser(hp, *WEIGHTS)
    eager = reg._eager

    def sync_in_capture(planes):
        if torch.cuda.is_current_stream_capturing():
            torch.cuda.synchronize()  # not permitted while capturing
        return eager(planes)

    monkeypatch.setattr(reg, "_eager", sync_in_capture)
    stream = torch.cuda.current_stream()
    _check(hp, reg, scale=1.0)
    assert reg.failed is not None
    assert torch.cuda.current_stream() == stream
    torch.randn(1000, device="cuda").sum().item()  # raised "Offset increment outside graph capture" before
