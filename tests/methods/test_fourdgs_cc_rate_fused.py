"""The fused NVCC rate pieces against the formulations they replace, in float64:

* ``GaussianConditional.bits`` (one autograd node, closed-form backward, ``_GaussianBits``)
  against autograd through ``GaussianConditional.likelihood`` (the two floors included);
* the packed temporal recurrence (``NVCC._temporal_priors``: the rows of all levels side by side)
  against the padded layout it replaced (every level padded to the widest), written out here;
* ``NVCC.bits`` at three HexPlane scales (three row widths packed) against the unit-by-unit rate.
Values to rounding, gradients to 1e-9 relative."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from evalkit.codec.entropy import LIKELIHOOD_BOUND, GaussianConditional, bits_from_floored
from evalkit.models.fourdgs.hexplane import HexPlaneConfig
from evalkit.methods.fourdgs_cc.nvcc import NVCC, plane_offset
from evalkit.methods.fourdgs_cc.recurrence import reference_recurrence

from tests.methods.fourdgs_cc_common import single_thread_torch  # noqa: F401
from tests.methods.test_fourdgs_cc_rate_batched import reference_bits


def _close(a: torch.Tensor, b: torch.Tensor, rtol: float = 1e-9) -> bool:
    return bool(torch.allclose(a, b, rtol=rtol, atol=rtol * float(b.detach().abs().max()) * 1e-3 + 1e-300))


def _gaussian_inputs(n=6000, seed=0, mean_shape=None, scale_shape=None):
    g = torch.Generator().manual_seed(seed)
    x = 20 * torch.randn(n, generator=g, dtype=torch.float64)
    x[: n // 3] = torch.round(x[: n // 3])  # integers, as with rounded symbols
    mean = 20 * torch.randn(mean_shape or (n,), generator=g, dtype=torch.float64)
    scale = torch.exp(2.5 * torch.randn(scale_shape or (n,), generator=g, dtype=torch.float64))
    return [t.requires_grad_(True) for t in (x, mean, scale)]


def _reference_gaussian_bits(gc: GaussianConditional, x, mean, scale):
    return bits_from_floored(gc.likelihood(x, mean, scale))


@pytest.mark.parametrize("upstream", [1.0, 3e-4, -0.5, 0.0])
def test_fused_gaussian_bits_equal_autograd_through_the_likelihood(upstream) -> None:
    """Both floors are hit (likelihoods under 1e-9, scales under the bound), and a negative
    upstream gradient flips which side of each floor lets the gradient through."""
    gc = GaussianConditional()
    xs = _gaussian_inputs()
    x, mean, scale = xs
    with torch.no_grad():
        lik = gc.likelihood(x, mean, scale)
    assert (lik <= LIKELIHOOD_BOUND).sum() > 100 and (scale < gc.scale_bound).sum() > 100
    assert (lik > 1e-3).sum() > 100
    got = gc.bits(*xs) * upstream
    want = _reference_gaussian_bits(gc, *xs) * upstream
    assert torch.equal(got, want)  # the forward is the same ops
    for a, b in zip(torch.autograd.grad(got, xs), torch.autograd.grad(want, xs)):
        assert _close(a, b), float((a - b).abs().max())


@pytest.mark.parametrize("scale_value", [None, 0.05])  # 0.05: a broadcast scale under the floor
def test_fused_gaussian_bits_broadcast_and_partial_gradients(scale_value) -> None:
    """Broadcast mean and scale: the floor's rule applies to the summed scale gradient (as
    lower_bound on the broadcast scale does), not element by element."""
    gc = GaussianConditional()
    x, mean, scale = _gaussian_inputs(n=4 * 250, mean_shape=(250,), scale_shape=(1,))
    if scale_value is not None:
        scale = torch.full((1,), scale_value, dtype=torch.float64, requires_grad=True)
    x = x.detach().reshape(4, 250)  # no gradient for the symbols (as with mode "round")
    got = gc.bits(x, mean, scale)
    want = _reference_gaussian_bits(gc, x, mean, scale)
    assert torch.equal(got, want)
    for a, b in zip(torch.autograd.grad(got, [mean, scale]), torch.autograd.grad(want, [mean, scale])):
        assert a.shape == b.shape and _close(a, b)


def test_fused_gaussian_bits_pass_gradcheck() -> None:
    gc = GaussianConditional()
    g = torch.Generator().manual_seed(3)
    x = (3 * torch.randn(40, generator=g, dtype=torch.float64)).requires_grad_(True)
    mean = torch.randn(40, generator=g, dtype=torch.float64).requires_grad_(True)
    scale = (0.3 + torch.rand(40, generator=g, dtype=torch.float64) * 3).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda *a: gc.bits(*a), (x, mean, scale))


def padded_temporal_priors(m: NVCC, V: list[torch.Tensor]) -> list[torch.Tensor]:
    """The temporal priors as computed before the rows were packed: every level padded to the
    widest row, one window per padded row, the plain-autograd recurrence."""
    T = V[0].shape[1]
    wmax = max(v.shape[2] for v in V)
    Fp = torch.cat([F.pad(v, (0, 0, 0, wmax - v.shape[2])) for v in V], 0)
    widths = torch.tensor([v.shape[2] for v in V for _ in range(v.shape[0])])
    pos = torch.arange(wmax)[:, None] + torch.arange(-m.attn.reach, m.attn.reach + 1)[None, :]
    idx, valid = pos.clamp(0, wmax - 1), (pos[None] >= 0) & (pos[None] < widths[:, None, None])
    B, T1, C = Fp.shape[0], T - 1, Fp.shape[-1]
    rows = Fp[:, :-1].transpose(0, 1)
    kq = (m.attn.k(rows) @ m.attn.q.weight) * m.attn.dim ** -0.5
    kq, vw = kq[..., idx, :], m.attn.v(rows)[..., idx, :]
    K = kq.shape[-2]
    bias = m.attn.logit_bias(valid).reshape(B * wmax, K)
    H = reference_recurrence(Fp[:, 0].reshape(B * wmax, C), kq.reshape(T1, B * wmax, K, C), bias,
                             vw.reshape(T1, B * wmax, K, C))
    H = H.reshape(T1, B, wmax, C).transpose(0, 1)
    out, b = [], 0
    for v in V:
        out.append(H[b:b + v.shape[0], :, :v.shape[2]])
        b += v.shape[0]
    return out


def _nvcc(hp: HexPlaneConfig, seed: int = 0) -> NVCC:
    torch.manual_seed(seed)
    m = NVCC(hp, 1 / 64, hidden=8, window=2).double()
    with torch.no_grad():  # a non-trivial attention and heads
        for p in m.parameters():
            p.add_(0.3 * torch.randn_like(p))
        for lin in (m.attn.q, m.attn.k, m.attn.v):
            lin.weight.normal_(0, 0.5)
    return m


def test_packed_temporal_priors_equal_the_padded_layout() -> None:
    hp = HexPlaneConfig(feature_dim=4, resolution=[8, 8, 8, 7], multires=[1, 2, 4])
    m = _nvcc(hp)
    g = torch.Generator().manual_seed(1)
    V = [torch.randn(3, 7, w, 4, generator=g, dtype=torch.float64).requires_grad_(True) for w in (8, 16, 32)]
    got = m._temporal_priors(V)
    want = padded_temporal_priors(m, V)
    weights = [torch.randn(w.shape, generator=g, dtype=torch.float64) for w in want]
    for a, b in zip(got, want):
        assert a.shape == b.shape and _close(a, b)
    inputs = V + list(m.attn.parameters())
    ga = torch.autograd.grad(sum((a * w).sum() for a, w in zip(got, weights)), inputs)
    gb = torch.autograd.grad(sum((b * w).sum() for b, w in zip(want, weights)), inputs)
    for k, (a, b) in enumerate(zip(ga, gb)):
        assert _close(a, b), (k, float((a - b).abs().max()))


@pytest.mark.parametrize("mode", ["noise", "ste"])
def test_nvcc_rate_with_three_scales_equals_the_unit_by_unit_rate(mode) -> None:
    hp = HexPlaneConfig(feature_dim=4, resolution=[8, 8, 8, 6], multires=[1, 2, 4])
    m = _nvcc(hp, seed=2)
    g = torch.Generator().manual_seed(4)
    planes = [[torch.nn.Parameter(plane_offset(i) + 0.2 * torch.randn(*shape, generator=g, dtype=torch.float64))
               for i, shape in enumerate(level)] for level in hp.plane_shapes()]
    inputs = [p for level in planes for p in level] + list(m.parameters())
    torch.manual_seed(5)
    bits, _ = m.bits(planes, mode)
    torch.manual_seed(5)
    ref = reference_bits(m, planes, mode)
    assert _close(bits, ref, 1e-12), (bits.item(), ref.item())
    got = torch.autograd.grad(bits, inputs, allow_unused=True)
    want = torch.autograd.grad(ref, inputs, allow_unused=True)
    for k, (a, b) in enumerate(zip(got, want)):
        assert (a is None) == (b is None), k
        if a is not None:
            assert _close(a, b), (k, float((a - b).abs().max()))


def test_fused_gaussian_bits_round_as_autograd_in_float32() -> None:
    """The backward is autograd's chain op for op (ndtr's derivative as autograd rounds it): in
    float32 the same numbers bit for bit on CPU, where the two sides nearly cancel too."""
    gc = GaussianConditional()
    xs = [t.detach().float().requires_grad_(True) for t in _gaussian_inputs(seed=7)]
    got, want = gc.bits(*xs), _reference_gaussian_bits(gc, *xs)
    assert torch.equal(got, want)
    for a, b in zip(torch.autograd.grad(got, xs), torch.autograd.grad(want, xs)):
        assert torch.equal(a, b)
