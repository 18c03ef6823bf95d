"""The batched training rate (``NVCC.bits``: symbols of all planes in one op, space planes of a level
and every Gaussian unit in one call; ``grid_planes``: all planes on the grid in one autograd node)
against a reference written here unit by unit, as the coder walks them: same bits, same gradients
for the planes and every entropy-model parameter."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from evalkit.codec.entropy import LIKELIHOOD_BOUND, FactorizedPrior, lower_bound, stacked_factorized_likelihood
from evalkit.codec.quantize import add_uniform_noise, round_ste
from evalkit.models.fourdgs.hexplane import SPACE_PLANES, TIME_PLANES, HexPlaneConfig
from evalkit.methods.fourdgs_cc.nvcc import NVCC, grid_planes, lerp_matrix, plane_offset, ste_plane

from tests.methods.fourdgs_cc_common import single_thread_torch  # noqa: F401

STEP = 1 / 64
HP = HexPlaneConfig(feature_dim=4, resolution=[8, 8, 8, 5], multires=[1, 2])


def relax(mode: str):
    return {"ste": round_ste, "round": torch.round, "noise": add_uniform_noise}[mode]


def ref_factorized_bits(prior: FactorizedPrior, x: torch.Tensor) -> torch.Tensor:
    """Bits of x (N, C) under ``prior``, as the factorized prior was written before batching."""
    h = torch.cat([x.t().unsqueeze(1) - 0.5, x.t().unsqueeze(1) + 0.5], -1)
    for i, (m, b) in enumerate(zip(prior.matrices, prior.biases)):
        h = torch.matmul(F.softplus(m), h) + b
        if i < len(prior.factors):
            h = h + torch.tanh(prior.factors[i]) * torch.tanh(h)
    lower, upper = h.chunk(2, dim=-1)
    sign = -torch.sign(lower + upper).detach()
    lik = lower_bound((torch.sigmoid(sign * upper) - torch.sigmoid(sign * lower)).abs(), LIKELIHOOD_BOUND)
    return -torch.log2(lower_bound(lik, LIKELIHOOD_BOUND)).sum()


def ref_gaussian_bits(m: NVCC, x: torch.Tensor, mean: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return -torch.log2(lower_bound(m.conditional.likelihood(x, mean, scale), LIKELIHOOD_BOUND)).sum()


def ref_first_bits(m: NVCC, prior: FactorizedPrior | None, x: torch.Tensor) -> torch.Tensor:
    if prior is not None:
        return ref_factorized_bits(prior, x)
    q = torch.round(x.detach())
    return x.new_tensor(float(x.numel()) * float(torch.log2(q.max() - q.min() + 1.0)))


def reference_bits(m: NVCC, planes: list[list[torch.Tensor]], mode: str) -> torch.Tensor:
    """The NVCC rate unit by unit: each space plane alone, the hidden state row by row with the
    coder's attention step (``m.attn``), one likelihood call per unit."""
    step, C = m.step, m.C
    y = [[(p[0] - plane_offset(i)) / step for i, p in enumerate(level)] for level in planes]
    yh = [[round_ste(t) for t in level] for level in y]
    yt = [[relax(mode)(t) for t in level] for level in y]
    total = torch.zeros((), dtype=planes[0][0].dtype)
    for k, i in enumerate(SPACE_PLANES):
        for s in range(m.S):
            target = yt[s][i].permute(1, 2, 0)
            if m.has_spatial(s):
                prior = F.interpolate((yh[s - 1][i] * step)[None], size=target.shape[:2], mode="bilinear",
                                      align_corners=True)[0].permute(1, 2, 0)
                delta, log_scale = m.head_space(prior[None], torch.tensor([s * 6 + i]))
                total = total + ref_gaussian_bits(m, target, (prior + delta[0]) / step, torch.exp(log_scale[0]))
            else:
                prior = m.first_space[k * m.n_first + s] if len(m.first_space) else None
                total = total + ref_first_bits(m, prior, target.reshape(-1, C))
    V = [torch.stack([yh[s][i].permute(1, 2, 0) for i in TIME_PLANES]) * step for s in range(m.S)]
    Y = [torch.stack([yt[s][i].permute(1, 2, 0) for i in TIME_PLANES]) for s in range(m.S)]
    T = V[0].shape[1]
    for s in range(m.S):
        ids = torch.tensor([s * 6 + i for i in TIME_PLANES])
        if m.has_spatial(s):
            sp = F.interpolate(V[s - 1].reshape(-1, *V[s - 1].shape[2:]).transpose(1, 2), size=V[s].shape[2],
                               mode="linear", align_corners=True).transpose(1, 2).reshape(*V[s].shape)
            delta, log_scale = m.head_s(sp[:, 0], ids)
            total = total + ref_gaussian_bits(m, Y[s][:, 0], (sp[:, 0] + delta) / step, torch.exp(log_scale))
        else:
            prior = m.first_time[0 if m.spatial_prior else s] if len(m.first_time) else None
            total = total + ref_first_bits(m, prior, Y[s][:, 0].reshape(-1, C))
        h, rows = V[s][:, 0], []
        for t in range(1, T):  # temporal prior of row t: the hidden state, or the previous row
            h = m.attn(h, V[s][:, t - 1]) if m.hidden_update else V[s][:, t - 1]
            rows.append(h)
        tp = torch.stack(rows, 1)
        if m.has_spatial(s):
            delta, log_scale = m.head_st(torch.cat([tp, sp[:, 1:]], -1), ids)
        else:
            delta, log_scale = m.head_t(tp, ids)
        total = total + ref_gaussian_bits(m, Y[s][:, 1:], (tp + delta) / step, torch.exp(log_scale))
    return total


def _model(variant: dict) -> tuple[NVCC, list[list[torch.nn.Parameter]]]:
    torch.manual_seed(0)
    m = NVCC(HP, STEP, hidden=8, window=2, **variant).double()
    with torch.no_grad():  # non-trivial networks: attention, heads and priors away from their start
        for p in m.parameters():
            p.add_(0.3 * torch.randn_like(p))
    g = torch.Generator().manual_seed(1)
    planes = [[torch.nn.Parameter((plane_offset(i) + 0.2 * torch.randn(*shape, generator=g)).double())
               for i, shape in enumerate(level)] for level in HP.plane_shapes()]
    return m, planes


VARIANTS = {"full": {}, "w/o SP": {"spatial_prior": False}, "w/o HF": {"hidden_update": False},
            "uniform first feature": {"first_feature": "uniform"}}


@pytest.mark.parametrize("mode", ["ste", "round", "noise"])
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_batched_nvcc_rate_equals_the_unit_by_unit_rate(variant, mode) -> None:
    """Also with noise: on CPU the batched draw gives every symbol the noise a draw per plane does."""
    m, planes = _model(VARIANTS[variant])
    inputs = [p for level in planes for p in level] + [p for p in m.parameters()]
    torch.manual_seed(5)
    bits, n = m.bits(planes, mode)
    torch.manual_seed(5)
    ref = reference_bits(m, planes, mode)
    assert n == sum(p.numel() for p in inputs[:12])
    assert torch.allclose(bits, ref, rtol=1e-12), (bits.item(), ref.item())
    if mode == "round":
        return  # no gradient through hard rounding of the coded symbols
    got = torch.autograd.grad(bits, inputs, allow_unused=True)
    want = torch.autograd.grad(ref, inputs, allow_unused=True)
    for k, (a, b) in enumerate(zip(got, want)):
        assert (a is None) == (b is None), k
        if a is not None:
            assert torch.allclose(a, b, rtol=1e-9, atol=1e-12), (k, float((a - b).abs().max()))


def test_batched_rate_in_float32_stays_within_float_tolerance() -> None:
    """Training runs in float32: the batched sums differ from the per-unit ones by rounding only.
    Gradients are sums of thousands of terms that cancel (entries up to ~1e4 beside entries near
    0), so their rounding is bounded relative to each gradient's scale; exactness is the float64
    test's job."""
    m, planes = _model({})
    m = m.float()
    planes = [[torch.nn.Parameter(p.detach().float()) for p in level] for level in planes]
    flat = [p for level in planes for p in level]
    bits, _ = m.bits(planes, "ste")
    ref = reference_bits(m, planes, "ste")
    assert torch.allclose(bits, ref, rtol=1e-5)
    for a, b in zip(torch.autograd.grad(bits, flat), torch.autograd.grad(ref, flat)):
        assert float((a - b).abs().max()) <= 1e-4 * float(b.abs().max())


def test_stacked_factorized_priors_equal_each_prior_alone() -> None:
    torch.manual_seed(0)
    priors = [FactorizedPrior(3) for _ in range(3)]
    with torch.no_grad():
        for p in priors:
            for q in p.parameters():
                q.add_(0.5 * torch.randn_like(q))
    x = (4 * torch.randn(3, 3, 50)).requires_grad_(True)
    params = [q for p in priors for q in p.parameters()]
    got = -torch.log2(stacked_factorized_likelihood(priors, x.reshape(9, 1, 50))).sum()
    want = sum(ref_factorized_bits(p, x[k].t()) for k, p in enumerate(priors))
    assert torch.allclose(got, want, rtol=1e-6)
    for a, b in zip(torch.autograd.grad(got, [x, *params]), torch.autograd.grad(want, [x, *params])):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-6)


def test_grid_planes_equal_ste_planes_bit_for_bit() -> None:
    g = torch.Generator().manual_seed(0)
    shapes = [(1, 4, 8, 8), (1, 4, 5, 8), (1, 4, 16, 16)]
    planes = [torch.nn.Parameter(scale * torch.randn(*sh, generator=g) + off)
              for sh, scale, off in zip(shapes, (0.3, 50.0, 1e4), (0.0, 1.0, 1.0))]
    indices = [0, 2, 5]  # a space plane and two time planes (offset 1)
    out = grid_planes(planes, indices, STEP)
    ref = [ste_plane(p, i, STEP) for p, i in zip(planes, indices)]
    weights = [torch.randn(p.shape, generator=g) for p in planes]
    got = torch.autograd.grad(sum((o * w).sum() for o, w in zip(out, weights)), planes)
    want = torch.autograd.grad(sum((r * w).sum() for r, w in zip(ref, weights)), planes)
    for o, r, a, b in zip(out, ref, got, want):
        assert torch.equal(o, r)
        assert torch.equal(a, b)


@pytest.mark.parametrize("w_in,w_out", [(64, 128), (25, 50), (3, 7), (5, 5), (1, 4), (8, 3), (4, 1)])
def test_lerp_matrix_upsamples_as_the_linear_interpolation(w_in: int, w_out: int) -> None:
    """Training upsamples a level's time rows with a GEMM; the coder uses F.interpolate."""
    x = torch.randn(3, 5, w_in, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(w_in))
    want = F.interpolate(x.reshape(-1, w_in, 4).transpose(1, 2), size=w_out, mode="linear",
                         align_corners=True).transpose(1, 2).reshape(3, 5, w_out, 4)
    got = torch.matmul(lerp_matrix(w_in, w_out, x.dtype, "cpu"), x)
    assert torch.allclose(got, want, rtol=0, atol=1e-12)
