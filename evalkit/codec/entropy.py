"""Entropy models for integer symbols: rate estimates for training, real coding for files.

* ``GaussianConditional``: discretised Gaussian (or Laplacian) with per-symbol mean and scale.
* ``FactorizedPrior``: learned per-channel non-parametric density (Ballé et al. 2018, the
  CompressAI EntropyBottleneck network: softplus matrices, biases, tanh factors giving a
  monotone cumulative logit).
* ``compress_uniform`` / ``decompress_uniform``: every value of a known range equally likely.

Training uses ``likelihood`` / ``bits`` (differentiable; bits = -log2 of the likelihood,
floored at 1e-9). Files use ``compress`` / ``decompress``, built on ``evalkit.codec.arith``.

Decoder determinism (a file encoded on a GPU must decode on a CPU):

* Gaussian tables depend only on fixed grids: scales snap to ``scale_table`` (CompressAI's
  ``exp(linspace(log .11, log 256, 64))``) by comparisons with geometric midpoints, means snap
  to multiples of ``1 / mean_grid``. Tables are built once in float64. The *parameters*
  (mean, scale) must be bit-identical on both sides: the decoder must compute them from decoded
  data only, with the same float ops. Network outputs differ between GPU and CPU (and TF32), so
  compute them with ``compute_params_on_cpu`` (float64, CPU) at encode *and* decode time.
  A float64 ulp difference flips a grid cell with probability ~1e-15 per symbol.
* Factorized tables are computed from the network weights (stored in the bitstream as exact
  float32 bytes) in float64 with numpy elementwise ops only (no BLAS, no threads), whatever
  the module's device or dtype.
* Every stream carries a CRC of its values: a decoder whose tables differ from the encoder's
  raises ``BitstreamError`` instead of returning garbage.
"""
from __future__ import annotations

import copy
import functools
import math
from pathlib import Path
from typing import Any, Callable, Literal, Sequence

import numpy as np
import torch
from scipy import special
from torch import Tensor, nn
from torch.nn import functional as F

from evalkit.codec import arith
from evalkit.codec.bitpack import pack_bits, unpack_bits
from evalkit.codec.container import BitstreamError
from evalkit.codec.serialize import (read_uvarint, state_dict_from_bytes, state_dict_to_bytes, unzigzag,
                                     write_uvarint, zigzag)

LIKELIHOOD_BOUND = 1e-9
SCALE_BOUND = 0.11
_DEFAULT_TAIL = {"gaussian": 1e-4, "laplacian": 1e-3}


# -- differentiable helpers ----------------------------------------------------------
class _LowerBound(torch.autograd.Function):
    """max(x, bound) whose gradient still flows where it would push x up (CompressAI LowerBound)."""

    @staticmethod
    def forward(ctx, x: Tensor, bound: float) -> Tensor:
        ctx.save_for_backward(x)
        ctx.bound = bound
        return x.clamp_min(bound)

    @staticmethod
    def backward(ctx, grad: Tensor):
        (x,) = ctx.saved_tensors
        pass_through = (x >= ctx.bound) | (grad < 0)
        return grad * pass_through, None


def lower_bound(x: Tensor, bound: float) -> Tensor:
    return _LowerBound.apply(x, bound)


def bits_from_floored(likelihood: Tensor) -> Tensor:
    """Total bits = sum(-log2 likelihood) of a likelihood the models already floored at 1e-9 with
    ``lower_bound`` (flooring again would change neither the value nor the gradient)."""
    return -torch.log2(likelihood).sum()


def cpu64(module: nn.Module, dtype: torch.dtype = torch.float64) -> nn.Module:
    """A CPU copy of ``module`` in ``dtype`` (float64), in eval mode: what coding parameters are
    computed with, on the encoder's and the decoder's side alike (the original is untouched)."""
    return copy.deepcopy(module).to(device="cpu", dtype=dtype).eval()


def compute_params_on_cpu(fn: Callable[..., Any] | nn.Module, *inputs: Tensor,
                          dtype: torch.dtype = torch.float64) -> Any:
    """Evaluate ``fn(*inputs)`` on CPU in ``dtype`` without autograd.

    Use it for distribution parameters (means, scales) at encode *and* decode time so both
    sides get bit-identical values whatever device the model trained on. Modules are copied
    (the original is untouched); floating inputs are cast to ``dtype``.
    """
    if isinstance(fn, nn.Module):
        fn = cpu64(fn, dtype)
    args = [x.detach().to("cpu", dtype) if isinstance(x, Tensor) and x.is_floating_point()
            else (x.detach().cpu() if isinstance(x, Tensor) else x) for x in inputs]
    with torch.no_grad():
        return fn(*args)


def _to_f64(x: Tensor | np.ndarray | float, what: str) -> np.ndarray:
    if isinstance(x, Tensor):
        x = x.detach().to("cpu", torch.float64).numpy()
    a = np.asarray(x, dtype=np.float64)
    if np.isnan(a).any():
        raise ValueError(f"{what} contains NaN")
    return a


# -- Gaussian / Laplacian conditional ------------------------------------------------
def get_scale_table(lo: float = SCALE_BOUND, hi: float = 256.0, levels: int = 64) -> np.ndarray:
    """CompressAI's scale grid: exp(linspace(log lo, log hi, levels)), float64."""
    return np.exp(np.linspace(math.log(lo), math.log(hi), levels))


def _std_cdf(family: str, t: np.ndarray) -> np.ndarray:
    if family == "gaussian":
        return special.ndtr(t)
    return np.where(t < 0, 0.5 * np.exp(np.minimum(t, 0)), 1 - 0.5 * np.exp(-np.maximum(t, 0)))


@functools.lru_cache(maxsize=8)
def _conditional_tables(family: str, scales: tuple[float, ...], mean_grid: int,
                        tail_mass: float) -> arith.CdfTables:
    """Row k * mean_grid + f: scale scales[k], centre f / mean_grid, values [-R_k, R_k + 1]."""
    s = np.asarray(scales, dtype=np.float64)
    z = special.ndtri(1 - tail_mass / 2) if family == "gaussian" else math.log(1 / tail_mass)
    radius = np.clip(np.ceil(z * s), 1, (arith.MAX_TABLE_SYMBOLS - 4) // 2).astype(np.int64)
    lengths = np.repeat(2 * radius + 4, mean_grid)
    pmf = np.zeros((len(lengths), int(lengths.max())))
    centre = (np.arange(mean_grid) / mean_grid)[:, None]
    for k, (r, sig) in enumerate(zip(radius, s)):
        value = np.arange(-r, r + 2)[None, :]
        d = np.abs(value - centre)          # |value - centre| keeps both CDF arguments on the accurate tail
        rows = slice(k * mean_grid, (k + 1) * mean_grid)
        pmf[rows, 1:2 * r + 3] = _std_cdf(family, (0.5 - d) / sig) - _std_cdf(family, (-0.5 - d) / sig)
        pmf[rows, 0] = _std_cdf(family, (-r - 0.5 - centre[:, 0]) / sig)           # P(value < -R)
        pmf[rows, 2 * r + 3] = _std_cdf(family, -(r + 1.5 - centre[:, 0]) / sig)  # P(value > R + 1)
    return arith.CdfTables.from_pmf(pmf, lengths, -np.repeat(radius, mean_grid))


class GaussianConditional:
    """Discretised Gaussian (or Laplacian) with per-symbol mean and scale.

    P(x) = CDF((x + .5 - mean) / scale) - CDF((x - .5 - mean) / scale), scale >= ``scale_bound``.
    For "laplacian", ``scale`` is the Laplace b (std = b * sqrt 2). Coding snaps the scale to
    the nearest (log-domain) entry of ``scale_table`` and the mean to a multiple of
    ``1 / mean_grid``; values further than ~``tail_mass`` from the mean go to escapes.
    """

    def __init__(self, family: Literal["gaussian", "laplacian"] = "gaussian",
                 scale_table: Sequence[float] | None = None, mean_grid: int = 16,
                 tail_mass: float | None = None, scale_bound: float = SCALE_BOUND) -> None:
        if family not in ("gaussian", "laplacian"):
            raise ValueError(f"unknown family {family!r}")
        table = np.asarray(get_scale_table() if scale_table is None else scale_table, dtype=np.float64)
        if table.ndim != 1 or len(table) < 1 or np.any(np.diff(table) <= 0) or table[0] <= 0:
            raise ValueError("scale_table must be positive and strictly increasing")
        if mean_grid < 1 or mean_grid & (mean_grid - 1):
            raise ValueError("mean_grid must be a power of two (keeps mean * grid exact)")
        self.family = family
        self.scale_table = tuple(float(v) for v in table)
        self.mean_grid = int(mean_grid)
        # default tails: measured best coded/estimated ratios at large scales (wide tables
        # spend count-1 floors on improbable values; escapes are cheaper past this point)
        self.tail_mass = float(tail_mass if tail_mass is not None else _DEFAULT_TAIL[family])
        self.scale_bound = float(scale_bound)
        self._mids = np.sqrt(table[:-1] * table[1:])   # geometric midpoints: nearest in log domain

    # training -------------------------------------------------------------------------
    def likelihood(self, x: Tensor, mean: Tensor, scale: Tensor) -> Tensor:
        scale = lower_bound(scale, self.scale_bound)
        d = (x - mean).abs()
        upper, lower = (0.5 - d) / scale, (-0.5 - d) / scale
        if self.family == "gaussian":
            lik = torch.special.ndtr(upper) - torch.special.ndtr(lower)
        else:
            lik = _laplace_cdf(upper) - _laplace_cdf(lower)
        return lower_bound(lik, LIKELIHOOD_BOUND)

    def bits(self, x: Tensor, mean: Tensor, scale: Tensor) -> Tensor:
        """sum(-log2 ``likelihood``): the same numbers (and, up to rounding, gradients) as
        ``bits_from_floored(self.likelihood(x, mean, scale))``; for the Gaussian family in one
        autograd node with a closed-form backward (``_GaussianBits``)."""
        if self.family == "gaussian":
            return _GaussianBits.apply(x, mean, scale, self.scale_bound)
        return bits_from_floored(self.likelihood(x, mean, scale))

    # coding ---------------------------------------------------------------------------
    @property
    def tables(self) -> arith.CdfTables:
        return _conditional_tables(self.family, self.scale_table, self.mean_grid, self.tail_mass)

    def quantize_params(self, mean: Tensor | np.ndarray, scale: Tensor | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(integer mean offset, table id) per symbol, both int64, flattened.

        Deterministic function of the float values: mean * grid is exact for a power-of-two
        grid and the scale index comes from comparisons only.
        """
        m = _to_f64(mean, "mean").ravel()
        s = _to_f64(scale, "scale").ravel()
        if m.shape != s.shape:
            raise ValueError(f"mean has {m.size} values, scale {s.size}")
        if m.size and np.abs(m).max() > 2.0 ** 50:
            raise ValueError("mean magnitude above 2**50 (or infinite) cannot be coded")
        a = np.floor(m * self.mean_grid + 0.5).astype(np.int64)
        base = np.floor_divide(a, self.mean_grid)
        frac = a - base * self.mean_grid
        k = np.searchsorted(self._mids, np.maximum(s, self.scale_bound), side="right")
        return base, k * self.mean_grid + frac

    def compress(self, q: Tensor | np.ndarray, mean: Tensor | np.ndarray, scale: Tensor | np.ndarray) -> bytes:
        base, tid = self.quantize_params(mean, scale)
        v = arith._as_int64(q, "symbols")
        if v.shape != base.shape:
            raise ValueError(f"{v.size} symbols but {base.size} means")
        if v.size and (np.abs(v).max() > arith.MAX_ABS_VALUE // 2):
            raise ValueError("symbol magnitude above 2**61 is not supported")
        return arith.encode(v - base, tid, self.tables)

    def decompress(self, data: bytes, mean: Tensor | np.ndarray, scale: Tensor | np.ndarray,
                   source: str | Path = "<gaussian stream>") -> Tensor:
        """Symbols (int64) in the shape of ``mean``; mean/scale must equal the encoder's bitwise."""
        base, tid = self.quantize_params(mean, scale)
        v = arith.decode(data, tid, self.tables, source) + base
        return torch.from_numpy(v).reshape(tuple(np.shape(mean)))


_2_SQRTPI, _SQRT1_2 = 2.0 / math.sqrt(math.pi), math.sqrt(0.5)


def _ndtr_backward(grad: Tensor, t: Tensor) -> Tensor:
    """grad * Phi'(t), rounded as autograd's backward of ``torch.special.ndtr`` rounds it
    (grad * (2 / sqrt(pi) * exp(-(t / sqrt 2)^2)) / sqrt 2 / 2; checked bit for bit in the tests)."""
    return (t * _SQRT1_2).square_().neg_().exp_().mul_(_2_SQRTPI).mul_(grad).mul_(_SQRT1_2 * 0.5)



def _sum_to(grad: Tensor, shape: torch.Size) -> Tensor:
    return grad if grad.shape == shape else grad.sum_to_size(shape)


class _GaussianBits(torch.autograd.Function):
    """Bits of a discretised Gaussian, -sum log2 max(Phi(u) - Phi(l), 1e-9), u, l = (+-0.5 - |x - mean|) / s,
    s = max(scale, bound), with both floors as ``lower_bound`` (gradient kept where it pushes the
    value up), in one node. The forward is ``GaussianConditional.likelihood`` op for op (the same
    bits); the backward is the chain rule written out: fewer kernels and saved tensors than
    autograd through ~12 elementwise ops on every coded value (the NVCC rate runs it on millions
    each training step)."""

    @staticmethod
    def forward(ctx, x: Tensor, mean: Tensor, scale: Tensor, bound: float) -> Tensor:
        s = scale.clamp_min(bound)
        r = x - mean
        d = r.abs()
        upper, lower = (0.5 - d) / s, (-0.5 - d) / s
        lik = torch.special.ndtr(upper) - torch.special.ndtr(lower)
        bits = -torch.log2(lik.clamp_min(LIKELIHOOD_BOUND)).sum()
        ctx.bound, ctx.x_shape, ctx.mean_shape = bound, x.shape, mean.shape
        ctx.save_for_backward(scale, r, s, upper, lower, lik)
        return bits

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, g: Tensor):
        scale, r, s, upper, lower, lik = ctx.saved_tensors
        need_x, need_mean, need_scale = ctx.needs_input_grad[:3]
        # The chain rule in autograd's own order of operations (each factor divided by s before
        # the two sides are combined, as the divisions' backward does), so that float32 rounds
        # as the autograd formulation does where the two sides nearly cancel (large scales).
        # d bits / d lik: log2's backward, then the likelihood floor's (zero where lik < 1e-9
        # unless the gradient pushes lik up: g > 0 <=> d bits / d lik < 0).
        glik = (-g) / (lik.clamp_min(LIKELIHOOD_BOUND) * math.log(2.0))
        glik.masked_fill_((lik < LIKELIHOOD_BOUND) & (g <= 0), 0.0)
        gu = _ndtr_backward(glik, upper)  # d bits / d upper
        gl = _ndtr_backward(glik, lower)  # -d bits / d lower
        gx = gmean = gscale = None
        if need_scale:  # d upper / d s = -upper / s, d lower / d s = -lower / s
            gscale = _sum_to((gl * (lower / s)).sub_(gu * (upper / s)), scale.shape)
            gscale.mul_((scale >= ctx.bound) | (gscale < 0))  # the scale floor's backward, on scale's own shape
        if need_x or need_mean:  # d upper / d|r| = d lower / d|r| = -1 / s
            gr = gl.div_(s).sub_(gu.div_(s)).mul_(torch.sign(r))
            gx = _sum_to(gr, ctx.x_shape) if need_x else None
            gmean = _sum_to(-gr, ctx.mean_shape) if need_mean else None
        return gx, gmean, gscale, None


def _laplace_cdf(t: Tensor) -> Tensor:
    return 0.5 - 0.5 * torch.sign(t) * torch.expm1(-t.abs())


# -- learned factorized prior --------------------------------------------------------
class FactorizedPrior(nn.Module):
    """Per-channel learned density for integer symbols x of shape (N, C).

    The cumulative logit c(x) is a per-channel monotone network (softplus matrices, biases,
    tanh gates); P(x) = sigmoid(c(x + .5)) - sigmoid(c(x - .5)). ``compress`` stores the coded
    value range per channel (data range clipped to the model's 1 - tail_mass interval) and
    codes the rest through escapes, so any integers round-trip.
    """

    def __init__(self, channels: int, filters: Sequence[int] = (3, 3, 3), init_scale: float = 10.0,
                 tail_mass: float = 1e-6) -> None:
        super().__init__()
        self.channels = int(channels)
        self.filters = tuple(int(f) for f in filters)
        self.tail_mass = float(tail_mass)
        dims = (1,) + self.filters + (1,)
        scale = init_scale ** (1 / (len(dims) - 1))
        self.matrices = nn.ParameterList()
        self.biases = nn.ParameterList()
        self.factors = nn.ParameterList()
        for i in range(len(dims) - 1):
            init = math.log(math.expm1(1 / scale / dims[i + 1]))
            self.matrices.append(nn.Parameter(torch.full((channels, dims[i + 1], dims[i]), init)))
            self.biases.append(nn.Parameter(torch.rand(channels, dims[i + 1], 1) - 0.5))
            if i < len(dims) - 2:
                self.factors.append(nn.Parameter(torch.zeros(channels, dims[i + 1], 1)))

    # training -------------------------------------------------------------------------
    def params(self) -> tuple[list[Tensor], list[Tensor], list[Tensor]]:
        """(matrices, biases, factors) as lists of tensors, channel first."""
        return list(self.matrices), list(self.biases), list(self.factors)

    @staticmethod
    def _logits_cumulative_with(x: Tensor, params: tuple[list[Tensor], list[Tensor], list[Tensor]]) -> Tensor:
        """x (C, 1, N) -> cumulative logits (C, 1, N) of the network ``params`` (``params()``)."""
        h = x
        matrices, biases, factors = params
        for i, (m, b) in enumerate(zip(matrices, biases)):
            h = torch.matmul(F.softplus(m), h) + b
            if i < len(factors):
                h = h + torch.tanh(factors[i]) * torch.tanh(h)
        return h

    def _logits_cumulative(self, x: Tensor) -> Tensor:
        """x (C, 1, N) -> cumulative logits (C, 1, N)."""
        return self._logits_cumulative_with(x, self.params())

    @classmethod
    def _likelihood_cn(cls, v: Tensor, params) -> Tensor:
        """v (C, 1, N) channel first -> likelihood (C, 1, N), floored at 1e-9."""
        # both sides in one pass through the network: half the kernel launches
        lower, upper = cls._logits_cumulative_with(torch.cat([v - 0.5, v + 0.5], -1), params).chunk(2, dim=-1)
        sign = -torch.sign(lower + upper).detach()  # evaluate on the side where sigmoids are small
        lik = (torch.sigmoid(sign * upper) - torch.sigmoid(sign * lower)).abs()
        return lower_bound(lik, LIKELIHOOD_BOUND)

    def likelihood(self, x: Tensor) -> Tensor:
        """x (N, C), noisy or rounded -> likelihood (N, C), floored at 1e-9, differentiable."""
        if x.ndim != 2 or x.shape[1] != self.channels:
            raise ValueError(f"expected x of shape (N, {self.channels}), got {tuple(x.shape)}")
        return self._likelihood_cn(x.t().unsqueeze(1), self.params()).squeeze(1).t()

    def bits(self, x: Tensor) -> Tensor:
        return bits_from_floored(self.likelihood(x))

    # deterministic float64 evaluation for coding tables ----------------------------------
    def _weights64(self) -> tuple[list[np.ndarray], list[np.ndarray], list[np.ndarray]]:
        f = lambda ps: [p.detach().to("cpu", torch.float64).numpy() for p in ps]  # noqa: E731
        return f(self.matrices), f(self.biases), f(self.factors)

    def logits_cumulative_f64(self, x: np.ndarray, weights=None) -> np.ndarray:
        """Cumulative logits at x (C, K) in float64 with elementwise numpy ops in a fixed order."""
        mats, biases, factors = self._weights64() if weights is None else weights
        h = [np.asarray(x, dtype=np.float64)]           # list over the filter dimension of (C, K)
        for i, (m, b) in enumerate(zip(mats, biases)):
            sp = np.logaddexp(0.0, m)                    # softplus
            out = []
            for r in range(m.shape[1]):
                acc = sp[:, r, 0, None] * h[0]
                for col in range(1, m.shape[2]):
                    acc = acc + sp[:, r, col, None] * h[col]
                acc = acc + b[:, r, 0, None]
                if i < len(factors):
                    acc = acc + np.tanh(factors[i][:, r, 0, None]) * np.tanh(acc)
                out.append(acc)
            h = out
        return h[0]

    def _support(self, q: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Encoder's per-channel value range: data range within the model's central interval."""
        target = math.log(2 / self.tail_mass - 1)        # logit of 1 - tail/2
        w = self._weights64()
        logits = lambda x: self.logits_cumulative_f64(x[:, None], w)[:, 0]  # noqa: E731
        edges = []
        for goal in (-target, 0.0, target):
            a, b = np.full(self.channels, -1.0), np.full(self.channels, 1.0)
            for _ in range(64):                          # widen until the bracket holds the goal
                fa, fb = logits(a), logits(b)
                if np.all(fa <= goal) and np.all(fb >= goal):
                    break
                a, b = np.where(fa > goal, 2 * a, a), np.where(fb < goal, 2 * b, b)
            for _ in range(60):
                mid = 0.5 * (a + b)
                above = logits(mid) > goal
                a, b = np.where(above, a, mid), np.where(above, mid, b)
            edges.append(0.5 * (a + b))
        clip = 2.0 ** 60
        m_lo = np.floor(np.clip(edges[0], -clip, clip)).astype(np.int64)
        m_hi = np.ceil(np.clip(edges[2], -clip, clip)).astype(np.int64)
        median = np.round(np.clip(edges[1], -clip, clip)).astype(np.int64)
        lo = np.maximum(q.min(0), m_lo)
        hi = np.minimum(q.max(0), m_hi)
        empty = lo > hi                                  # data entirely outside the model's range
        lo = np.where(empty, np.clip(median, q.min(0), q.max(0)), lo)
        hi = np.where(empty, lo, hi)
        span = arith.MAX_TABLE_SYMBOLS - 3               # in-range values per table
        wide = hi - lo + 1 > span
        lo = np.where(wide, np.clip(median - span // 2, lo, hi - span + 1), lo)
        hi = np.where(wide, lo + span - 1, hi)
        return lo, hi

    def cdf_tables(self, lo: np.ndarray, hi: np.ndarray) -> arith.CdfTables:
        """Integer tables for ranges [lo_c, hi_c] (float64 CPU; same on encoder and decoder)."""
        lo, hi = np.asarray(lo, np.int64), np.asarray(hi, np.int64)
        n_in = hi - lo + 1
        width = int(n_in.max()) + 2
        j = np.arange(width + 1)[None, :]
        edges = self.logits_cumulative_f64((lo[:, None] + j - 0.5).astype(np.float64))  # c(v - .5)
        lower, upper = edges[:, :-1], edges[:, 1:]
        sign = -np.sign(lower + upper)
        pmf = np.abs(special.expit(sign * upper) - special.expit(sign * lower))
        pmf = np.concatenate([np.zeros((self.channels, 1)), pmf], axis=1)[:, :width]   # index 0 = escape
        rows = np.arange(self.channels)
        pmf[:, 0] = special.expit(edges[:, 0])                       # P(x < lo)
        pmf[rows, n_in + 1] = special.expit(-edges[rows, n_in])      # P(x > hi)
        pmf = np.where(np.arange(width)[None, :] < (n_in + 2)[:, None], pmf, 0.0)
        return arith.CdfTables.from_pmf(pmf, n_in + 2, lo)

    def compress(self, q: Tensor | np.ndarray) -> bytes:
        """q (N, C) integers -> bytes (per-channel ranges + arithmetic-coded symbols)."""
        if len(np.shape(q)) != 2 or np.shape(q)[1] != self.channels:
            raise ValueError(f"expected symbols of shape (N, {self.channels}), got {tuple(np.shape(q))}")
        v = arith._as_int64(q, "symbols")
        if v.size == 0:
            return b""
        v2 = v.reshape(-1, self.channels)
        lo, hi = self._support(v2)
        head = b"".join(write_uvarint(zigzag(int(a))) + write_uvarint(int(b - a)) for a, b in zip(lo, hi))
        tid = np.tile(np.arange(self.channels), len(v2))
        return head + arith.encode(v, tid, self.cdf_tables(lo, hi))

    def decompress(self, data: bytes, n: int, source: str | Path = "<factorized stream>") -> Tensor:
        """Inverse of ``compress`` for n rows -> int64 tensor (n, C)."""
        if n == 0:
            if data:
                raise BitstreamError(source, f"{len(data)} bytes for an empty symbol stream")
            return torch.zeros(0, self.channels, dtype=torch.int64)
        lo, span, pos = [], [], 0
        for _ in range(self.channels):
            a, pos = read_uvarint(data, pos, source)
            w, pos = read_uvarint(data, pos, source)
            lo.append(unzigzag(a))
            span.append(w)
        lo_a = np.array(lo, dtype=np.int64)
        if max(span) > arith.MAX_TABLE_SYMBOLS - 4:
            raise BitstreamError(source, "corrupt factorized stream (value range too wide)")
        tables = self.cdf_tables(lo_a, lo_a + np.array(span, dtype=np.int64))
        tid = np.tile(np.arange(self.channels), n)
        v = arith.decode(data[pos:], tid, tables, source)
        return torch.from_numpy(v).reshape(n, self.channels)

    # exact persistence ----------------------------------------------------------------
    def state_bytes(self) -> bytes:
        """Exact bytes of the weights (what the decoder needs to rebuild the tables)."""
        return state_dict_to_bytes(self.state_dict())

    @classmethod
    def from_state_bytes(cls, data: bytes, source: str | Path = "<factorized prior>") -> "FactorizedPrior":
        """Rebuild a prior from ``state_bytes`` (channels and filters follow from the shapes)."""
        state = state_dict_from_bytes(data, source)
        mats = [state.get(f"matrices.{i}") for i in range(len(state))]
        mats = [m for m in mats if m is not None]
        if not mats or any(m.ndim != 3 for m in mats):
            raise BitstreamError(source, "not a factorized-prior state (no 3-d 'matrices.*' entries)")
        prior = cls(mats[0].shape[0], filters=[m.shape[1] for m in mats[:-1]])
        try:
            prior.load_state_dict(state)
        except RuntimeError as exc:
            raise BitstreamError(source, f"factorized-prior state does not fit: {exc}") from None
        return prior


def stacked_factorized_likelihood(priors: Sequence[FactorizedPrior], v: Tensor) -> Tensor:
    """Likelihood (floored at 1e-9) of v (P * C, 1, N) where ``priors[p]`` (C channels each, equal
    filters) models rows p * C .. (p + 1) * C: one pass through the networks, their parameters
    stacked along the channel axis (the numbers of each prior's own ``likelihood``)."""
    c = priors[0].channels if priors else 0
    if (not priors or v.ndim != 3 or v.shape[0] != len(priors) * c or v.shape[1] != 1
            or any(p.channels != c or p.filters != priors[0].filters for p in priors)):
        raise ValueError(f"expected v of shape ({len(priors)} x C, 1, N) for priors of C channels and equal "
                         f"filters, got {tuple(v.shape)}")
    if len(priors) == 1:
        params = priors[0].params()
    else:
        per = [p.params() for p in priors]
        params = tuple([torch.cat(ts) for ts in zip(*(q[k] for q in per))] for k in range(3))
    return FactorizedPrior._likelihood_cn(v, params)


# -- uniform -------------------------------------------------------------------------
def _uniform_is_raw(n: int) -> bool:
    """Raw bits when exact (power-of-two range) or when the range is too wide for a table."""
    return n & (n - 1) == 0 or n > arith.MAX_TABLE_SYMBOLS - 2


def compress_uniform(q: Tensor | np.ndarray, lo: int, hi: int) -> bytes:
    """Integers in [lo, hi], all equally likely. Power-of-two ranges: exactly log2(range) raw
    bits each; other ranges up to ~8k values: arithmetic coded (~log2(range) bits); wider
    ranges: ceil(log2(range)) raw bits each."""
    v = arith._as_int64(q, "symbols")
    if hi < lo:
        raise ValueError(f"empty range [{lo}, {hi}]")
    if v.size and (v.min() < lo or v.max() > hi):
        bad = v[(v < lo) | (v > hi)][0]
        raise ValueError(f"value {bad} outside the uniform range [{lo}, {hi}]")
    n = hi - lo + 1
    if _uniform_is_raw(n):
        return pack_bits((v - lo).astype(np.uint64), int(n - 1).bit_length())
    return arith.encode(v, np.zeros(v.size, np.int64), _uniform_table(lo, hi))


def decompress_uniform(data: bytes, shape: int | Sequence[int], lo: int, hi: int,
                       source: str | Path = "<uniform stream>") -> Tensor:
    shape = (shape,) if isinstance(shape, int) else tuple(shape)
    count = int(np.prod(shape, dtype=np.int64))
    n = hi - lo + 1
    if _uniform_is_raw(n):
        v = unpack_bits(data, np.full(count, int(n - 1).bit_length()), source).astype(np.int64) + lo
    else:
        v = arith.decode(data, np.zeros(count, np.int64), _uniform_table(lo, hi), source)
    if v.size and (v.min() < lo or v.max() > hi):
        raise BitstreamError(source, f"decoded value outside the uniform range [{lo}, {hi}]")
    return torch.from_numpy(v).reshape(shape)


def _uniform_table(lo: int, hi: int) -> arith.CdfTables:
    n = hi - lo + 1
    pmf = np.concatenate([[0.0], np.ones(n), [0.0]])[None, :]
    return arith.CdfTables.from_pmf(pmf, np.array([n + 2]), np.array([lo]))
