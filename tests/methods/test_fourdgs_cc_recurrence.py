"""NVCC's training recurrence (hand-written backward, optional CUDA graph) against autograd and
against the coding path's step-by-step attention."""
from __future__ import annotations

import pytest
import torch

from evalkit.methods.fourdgs.hexplane import HexPlaneConfig
from evalkit.methods.fourdgs_cc.nvcc import NVCC, TIME_PLANES
from evalkit.methods.fourdgs_cc.recurrence import GraphedRecurrence, recurrence, reference_recurrence


def _inputs(T1=7, N=11, K=5, C=4, dtype=torch.float64, device="cpu", seed=0):
    g = torch.Generator().manual_seed(seed)
    mk = lambda *s: torch.randn(*s, generator=g, dtype=dtype).to(device).requires_grad_(True)  # noqa: E731
    bias = torch.randn(N, K, generator=g, dtype=dtype)
    bias[:3, :2] -= 1e4  # masked window slots, as at row ends
    return mk(N, C), mk(T1, N, K, C), bias.to(device).requires_grad_(True), mk(T1, N, K, C)


def test_recurrence_matches_autograd_forward_and_gradients() -> None:
    xs = _inputs()
    w = torch.randn(7, 11, 4, dtype=torch.float64)
    out = recurrence(*xs)
    grads = torch.autograd.grad((out * w).sum(), xs)
    ref = reference_recurrence(*xs)
    ref_grads = torch.autograd.grad((ref * w).sum(), xs)
    assert torch.allclose(out, ref, atol=1e-12)
    for g, r in zip(grads, ref_grads):
        assert torch.allclose(g, r, atol=1e-10)


def test_recurrence_passes_gradcheck() -> None:
    xs = _inputs(T1=3, N=4, K=3, C=2)
    assert torch.autograd.gradcheck(recurrence, xs)


def test_training_priors_equal_the_coding_path() -> None:
    """The batched training recurrence gives the hidden states the coder computes row by row."""
    torch.manual_seed(0)
    hp = HexPlaneConfig(feature_dim=4, resolution=[8, 8, 8, 6], multires=[1, 2])
    nvcc = NVCC(hp, 1 / 64, hidden=8, window=2).double()
    with torch.no_grad():  # a non-trivial attention, not the near-identity start
        for lin in (nvcc.attn.q, nvcc.attn.k, nvcc.attn.v):
            lin.weight.normal_(0, 0.5)
    V = [torch.randn(3, 6, w, 4, dtype=torch.float64) for w in (8, 16)]
    train = nvcc._temporal_priors(V)
    for s, v in enumerate(V):
        h = v[:, 0]
        for t in range(1, 6):
            h = nvcc.attn(h, v[:, t - 1])
            assert torch.allclose(train[s][:, t - 1], h, atol=1e-10), (s, t)
    assert len(TIME_PLANES) == 3


@pytest.mark.gpu
def test_cuda_graph_replay_equals_eager() -> None:
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    owner = object.__new__(type("Owner", (), {}))
    graphed = GraphedRecurrence(owner)
    for seed in range(3):  # the second and third calls replay the captured graph
        xs = _inputs(T1=20, N=64, K=5, C=8, dtype=torch.float32, device="cuda", seed=seed)
        w = torch.randn(20, 64, 8, device="cuda")
        out = graphed(*xs)
        grads = torch.autograd.grad((out * w).sum(), xs)
        ref = recurrence(*xs)
        ref_grads = torch.autograd.grad((ref * w).sum(), xs)
        assert graphed.failed is None
        assert torch.allclose(out, ref, atol=1e-6)
        for g, r in zip(grads, ref_grads):
            assert torch.allclose(g, r, atol=1e-5)
