"""Entropy models: exact round trips (also adversarial), coded size vs rate estimate,
differentiable rates, and decoder determinism (parameters and tables independent of device/dtype)."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import special
from torch import nn

from evalkit.codec import entropy
from evalkit.codec.container import BitstreamError
from evalkit.codec.entropy import (FactorizedPrior, GaussianConditional, compress_uniform, compute_params_on_cpu,
                                   decompress_uniform, get_scale_table)
from evalkit.codec.serialize import state_dict_from_bytes, state_dict_to_bytes


@pytest.fixture
def one_thread():
    """Small CPU graphs run much faster single-threaded on a busy 2-core machine."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _gc_round_trip(gc: GaussianConditional, q, mean, scale) -> bytes:
    data = gc.compress(q, mean, scale)
    back = gc.decompress(data, mean, scale)
    assert back.dtype == torch.int64 and tuple(back.shape) == tuple(np.shape(mean))
    assert torch.equal(back, torch.as_tensor(np.asarray(q)).long().reshape(back.shape))
    return data


# -- Gaussian conditional ------------------------------------------------------------
def test_scale_table_is_compressai_grid() -> None:
    t = get_scale_table()
    assert len(t) == 64 and t[0] == pytest.approx(0.11) and t[-1] == pytest.approx(256.0)
    assert np.allclose(np.diff(np.log(t)), math.log(256 / 0.11) / 63)


@pytest.mark.parametrize("family", ["gaussian", "laplacian"])
def test_gaussian_round_trip_random(family: str) -> None:
    g = torch.Generator().manual_seed(0)
    n = 20000
    mean = (torch.rand(n, generator=g, dtype=torch.float64) - 0.5) * 200
    scale = torch.exp(torch.empty(n, dtype=torch.float64).uniform_(math.log(0.01), math.log(2000), generator=g))
    q = torch.round(mean + scale * torch.randn(n, generator=g, dtype=torch.float64) * 1.5).long()
    _gc_round_trip(GaussianConditional(family), q, mean.float(), scale.float())


@pytest.mark.parametrize("case", ["all_equal", "pm30000", "far_2e40", "single", "table_ends", "huge_mean",
                                  "two_dim", "empty", "int32_extremes"])
def test_gaussian_round_trip_adversarial(case: str) -> None:
    gc = GaussianConditional()
    n = 3000
    if case == "all_equal":
        q, mean, scale = torch.full((n,), 7), torch.full((n,), 7.3), torch.full((n,), 0.11)
    elif case == "pm30000":
        q = torch.tensor([30000, -30000] * (n // 2))
        mean, scale = torch.zeros(n), torch.full((n,), 0.11)
    elif case == "far_2e40":
        q = torch.tensor([2**40, -2**40, 2**61 - 5, -(2**61) + 5] * 10)
        mean, scale = torch.full((40,), 0.4), torch.full((40,), 256.0)
    elif case == "single":
        q, mean, scale = torch.tensor([-3]), torch.tensor([2.5]), torch.tensor([1.0])
    elif case == "table_ends":
        scale = torch.tensor([0.0, 1e-9, 0.05, 0.11, 0.1100001, 255.9, 256.0, 300.0, 1e8, float("inf")] * 50)
        mean = torch.linspace(-3.7, 3.3, 500)
        q = torch.round(mean + torch.randn(500) * scale.clamp(max=1e3)).long()
    elif case == "huge_mean":
        mean = torch.full((n,), 1e6, dtype=torch.float64) + torch.rand(n, dtype=torch.float64)
        q = torch.round(mean + torch.randn(n, dtype=torch.float64) * 3).long()
        scale = torch.full((n,), 3.0)
    elif case == "two_dim":
        mean, scale = torch.randn(200, 7) * 10, torch.rand(200, 7) * 5
        q = torch.round(mean + torch.randn(200, 7) * scale).long()
    elif case == "empty":
        q, mean, scale = torch.zeros(0, dtype=torch.long), torch.zeros(0), torch.ones(0)
        assert gc.compress(q, mean, scale) == b""
    else:  # int32 extremes with a well-matched model
        q = torch.tensor([2**31 - 1, -2**31] * 100)
        mean, scale = q.double() + 0.25, torch.full((200,), 2.0)
    _gc_round_trip(gc, q, mean, scale)


@pytest.mark.parametrize("family,n", [("gaussian", 200_000), ("laplacian", 50_000)])
def test_gaussian_coded_size_near_estimate(family: str, n: int) -> None:
    """Data drawn from the model itself: real bytes within 3% of the differentiable estimate."""
    g = torch.Generator().manual_seed(1)
    gc = GaussianConditional(family)
    mean = (torch.rand(n, generator=g, dtype=torch.float64) - 0.5) * 40
    scale = torch.exp(torch.empty(n, dtype=torch.float64).uniform_(math.log(0.5), math.log(50), generator=g))
    if family == "gaussian":
        noise = torch.randn(n, generator=g, dtype=torch.float64)
    else:
        u = torch.rand(n, generator=g, dtype=torch.float64) - 0.5
        noise = -torch.sign(u) * torch.log1p(-2 * u.abs())
    q = torch.round(mean + scale * noise)
    est = float(gc.bits(q, mean, scale))
    data = _gc_round_trip(gc, q.long(), mean, scale)
    assert 0.99 * est < len(data) * 8 < 1.03 * est + 256


def test_gaussian_rate_is_differentiable() -> None:
    gc = GaussianConditional()
    x = torch.tensor([0.0, 1.0, 2.0, 3.0])
    mean = torch.tensor([0.2, 0.5, 3.0, 0.0], requires_grad=True)
    scale = torch.tensor([1.0, 2.0, 0.5, 0.2], requires_grad=True)
    gc.bits(x, mean, scale).backward()
    assert torch.all(torch.isfinite(mean.grad)) and torch.all(torch.isfinite(scale.grad))
    # moving the mean towards x lowers the rate
    assert torch.equal(torch.sign(mean.grad[:3]), torch.sign(mean.detach()[:3] - x[:3]))
    # x = 3 at scale 0.2 has likelihood ~4e-36, below the 1e-9 floor: the floor (CompressAI's
    # LowerBound, not a plain clamp) still lets the gradient say "widen the scale"
    assert float(gc.likelihood(x, mean, scale)[3].detach()) == pytest.approx(1e-9)
    assert scale.grad[3] < 0
    # the estimate equals -log2 of the closed-form discretised Gaussian
    p = special.ndtr((1.5 - 0.5) / 2.0) - special.ndtr((0.5 - 0.5) / 2.0)
    assert float(gc.likelihood(torch.tensor([1.0]), torch.tensor([0.5]), torch.tensor([2.0]))) == pytest.approx(p)
    assert float(gc.likelihood(torch.tensor([0.0]), torch.tensor([0.0]), torch.tensor([0.01]))) == pytest.approx(
        special.ndtr(0.5 / 0.11) - special.ndtr(-0.5 / 0.11))  # scale floored at 0.11


def test_gaussian_param_grid_is_dtype_independent() -> None:
    """The coder sees only (integer mean part, table id), computed in float64 from the values:
    a float32 tensor and the same values in float64 give identical ids."""
    gc = GaussianConditional()
    g = torch.Generator().manual_seed(2)
    mean32 = torch.randn(10000, generator=g) * 50
    scale32 = torch.exp(torch.randn(10000, generator=g) * 3)
    a = gc.quantize_params(mean32, scale32)
    b = gc.quantize_params(mean32.double(), scale32.double())
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    # the scale index is the nearest grid entry in the log domain
    k = b[1] // gc.mean_grid
    logt = np.log(get_scale_table())
    s = np.log(np.maximum(scale32.double().numpy(), 0.11))
    assert np.all(np.abs(logt[k] - s) <= np.abs(logt[np.clip(k + 1, 0, 63)] - s) + 1e-12)
    assert np.all(np.abs(logt[k] - s) <= np.abs(logt[np.clip(k - 1, 0, 63)] - s) + 1e-12)
    # tables are a pure function of the configuration
    t1 = gc.tables
    entropy._conditional_tables.cache_clear()
    t2 = GaussianConditional().tables
    assert t1 is not t2 and np.array_equal(t1.cdf, t2.cdf) and np.array_equal(t1.lo, t2.lo)


def test_params_from_a_network_decode_across_dtype_and_reload() -> None:
    """Encoder: a float32 network as trained (on a GPU in real use). Decoder: the network
    rebuilt from its stored bytes. Raw outputs differ between float32 and float64 evaluation,
    but compute_params_on_cpu gives bit-identical parameters on both sides."""
    torch.manual_seed(3)
    net = nn.Sequential(nn.Linear(4, 32), nn.Tanh(), nn.Linear(32, 2))
    ctx = torch.randn(5000, 4) * 3

    def params(m: nn.Module, c: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = m(c)
        return out[:, 0] * 20, torch.exp(out[:, 1])

    raw32 = params(net, ctx)[0]
    raw64 = params(net.double(), ctx.double())[0]
    net.float()
    assert not torch.equal(raw32.double(), raw64)  # why a shared deterministic path is needed

    gc = GaussianConditional()
    mean_e, scale_e = compute_params_on_cpu(_Wrap(net, params), ctx)
    q = torch.round(mean_e + torch.randn(5000, dtype=torch.float64) * scale_e).long()
    data = gc.compress(q, mean_e, scale_e)

    dec_net = nn.Sequential(nn.Linear(4, 32), nn.Tanh(), nn.Linear(32, 2))
    dec_net.load_state_dict(state_dict_from_bytes(state_dict_to_bytes(net.state_dict())))
    mean_d, scale_d = compute_params_on_cpu(_Wrap(dec_net, params), ctx)
    assert torch.equal(mean_d, mean_e) and torch.equal(scale_d, scale_e)
    assert torch.equal(gc.decompress(data, mean_d, scale_d), q)
    assert next(net.parameters()).dtype == torch.float32  # the caller's module is untouched


class _Wrap(nn.Module):
    def __init__(self, net: nn.Module, fn) -> None:
        super().__init__()
        self.net, self.fn = net, fn

    def forward(self, c: torch.Tensor):
        return self.fn(self.net, c)


def test_decoder_with_other_parameters_fails_loudly() -> None:
    gc = GaussianConditional()
    mean, scale = torch.randn(5000) * 5, torch.rand(5000) * 4 + 0.5
    q = torch.round(mean + torch.randn(5000) * scale).long()
    data = gc.compress(q, mean, scale)
    with pytest.raises(BitstreamError, match="parameters differ"):
        gc.decompress(data, mean, scale * 1.5, source="scene.evk")
    with pytest.raises(BitstreamError, match="scene.evk"):
        gc.decompress(data[:-10], mean, scale, source="scene.evk")
    with pytest.raises(ValueError, match="NaN"):
        gc.compress(q, mean, torch.full_like(scale, float("nan")))


# -- factorized prior ----------------------------------------------------------------
def _laplace_data(n: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    b = torch.tensor([0.7, 3.0, 12.0])
    mu = torch.tensor([0.0, 5.0, -20.0])
    u = torch.rand(n, 3, generator=g, dtype=torch.float64) - 0.5
    return torch.round(mu + b * (-torch.sign(u) * torch.log1p(-2 * u.abs())).float())


@pytest.fixture(scope="module")
def fitted_prior() -> tuple[FactorizedPrior, torch.Tensor]:
    """A prior fitted briefly (noise relaxation) to discretised Laplacian data."""
    n_threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        torch.manual_seed(0)
        q = _laplace_data(30000, seed=4)
        prior = FactorizedPrior(3)
        opt = torch.optim.Adam(prior.parameters(), lr=0.05)
        g = torch.Generator().manual_seed(5)
        for _ in range(250):
            batch = q[torch.randint(0, len(q), (2048,), generator=g)]
            loss = prior.bits(batch + torch.empty_like(batch).uniform_(-0.5, 0.5, generator=g)) / batch.numel()
            opt.zero_grad()
            loss.backward()
            opt.step()
    finally:
        torch.set_num_threads(n_threads)
    return prior, q


def test_factorized_fit_and_coded_size(fitted_prior) -> None:
    prior, q = fitted_prior
    est = float(prior.bits(q).detach())
    data = prior.compress(q.long())
    assert torch.equal(prior.decompress(data, len(q)), q.long())
    assert 0.99 * est < len(data) * 8 < 1.03 * est + 256
    # the brief fit is close to the true entropy of the discretised Laplacians
    true_bits = 0.0
    for b in (0.7, 3.0, 12.0):
        k = np.arange(-2000, 2001)
        cdf = lambda t: np.where(t < 0, 0.5 * np.exp(np.minimum(t, 0) / b), 1 - 0.5 * np.exp(-np.maximum(t, 0) / b))
        p = cdf(k + 0.5) - cdf(k - 0.5)
        true_bits += -(p[p > 0] * np.log2(p[p > 0])).sum() * len(q)
    assert est < 1.02 * true_bits


def test_factorized_tables_independent_of_module_dtype_and_reload(fitted_prior) -> None:
    prior, q = fitted_prior
    lo, hi = np.array([-8, -20, -120]), np.array([8, 30, 80])
    t32 = prior.cdf_tables(lo, hi)
    t64 = FactorizedPrior.from_state_bytes(prior.state_bytes()).double().cdf_tables(lo, hi)
    assert np.array_equal(t32.cdf, t64.cdf)
    # the numpy float64 evaluation used for tables is the same function as the training graph
    x = torch.linspace(-60, 60, 241, dtype=torch.float64).repeat(3, 1)
    ref = prior.double()._logits_cumulative(x.unsqueeze(1)).squeeze(1).detach().numpy()
    prior.float()
    assert np.abs(prior.logits_cumulative_f64(x.numpy()) - ref).max() < 1e-9
    # decoder side: a prior rebuilt from the stored bytes decodes the encoder's stream
    dec = FactorizedPrior.from_state_bytes(prior.state_bytes())
    data = prior.compress(q[:500].long())
    assert torch.equal(dec.decompress(data, 500), q[:500].long())
    other = FactorizedPrior(3)
    with pytest.raises(BitstreamError):
        other.decompress(data, 500)


@pytest.mark.parametrize("case", ["outliers", "far_2e40", "all_equal", "single_row", "one_channel_wide", "empty"])
def test_factorized_round_trip_adversarial(fitted_prior, case: str) -> None:
    prior, q = fitted_prior
    q = q[:2000].long().clone()
    if case == "outliers":
        q[::7, 1] = 30000
        q[::11, 2] = -30000
    elif case == "far_2e40":
        q[:4, 0] = torch.tensor([2**40, -2**40, 2**61, -2**61])
    elif case == "all_equal":
        q[:] = 123
    elif case == "single_row":
        q = q[:1]
    elif case == "one_channel_wide":
        q[:, 2] = torch.randint(-20000, 20000, (len(q),))  # wider than one table: escapes take the rest
    else:
        q = q[:0]
        assert prior.compress(q) == b""
    assert torch.equal(prior.decompress(prior.compress(q), len(q)), q)


def test_factorized_rate_is_differentiable() -> None:
    prior = FactorizedPrior(2)
    x = torch.randn(100, 2, requires_grad=True)
    prior.bits(x * 4).backward()
    assert torch.all(torch.isfinite(x.grad)) and x.grad.abs().sum() > 0
    for name, p in prior.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, name


def test_factorized_rejects_bad_shapes() -> None:
    prior = FactorizedPrior(3)
    with pytest.raises(ValueError, match=r"\(N, 3\)"):
        prior.compress(torch.zeros(10, 2, dtype=torch.long))
    with pytest.raises(BitstreamError, match="not a factorized-prior state"):
        FactorizedPrior.from_state_bytes(b"\x00")


# -- uniform -------------------------------------------------------------------------
@pytest.mark.parametrize("lo,hi", [(-1, 1), (0, 5), (100, 1099), (0, 0), (0, 255), (0, 65535), (-5, 2**20)])
def test_uniform_round_trip_and_size(lo: int, hi: int) -> None:
    g = torch.Generator().manual_seed(6)
    q = torch.randint(lo, hi + 1, (40, 250), generator=g)
    q[0, :2] = torch.tensor([lo, hi])
    data = compress_uniform(q, lo, hi)
    assert torch.equal(decompress_uniform(data, q.shape, lo, hi), q)
    n = hi - lo + 1
    if n & (n - 1) == 0 or n > 8190:  # raw fixed-width bits: 8/16-bit values exactly 1/2 bytes each
        assert len(data) == math.ceil(q.numel() * math.ceil(math.log2(n)) / 8)
    else:  # arithmetic coded: within 1% of log2(n) bits per value
        assert q.numel() * math.log2(n) / 8 - 1 <= len(data) <= q.numel() * math.log2(n) / 8 * 1.01 + 8


def test_uniform_rejects_out_of_range() -> None:
    with pytest.raises(ValueError, match="outside the uniform range"):
        compress_uniform(torch.tensor([0, 4]), 0, 3)
    with pytest.raises(BitstreamError, match="u.evk"):
        decompress_uniform(compress_uniform(torch.arange(10), 0, 2**20)[:-1], 10, 0, 2**20, source="u.evk")
