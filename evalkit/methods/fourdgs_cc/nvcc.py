"""NVCC: neural-voxel contextual coding of the quantised HexPlane (paper Sec. 3.4, Eq. 1).

Quantisation ("the quantisation of [2]", Balle et al. 2018: integers, uniform noise in
training): a plane value p becomes the symbol y = round((p - o) / step) with ``step`` =
``hexplane_qstep`` (a power of two) and o = 1 for time planes, 0 for space planes (4DGS starts
time planes at 1, so their symbols start at 0). Rendering during training uses the rounded planes
(straight-through), so the decoder reproduces what was trained; the rate term uses additive
uniform noise (or straight-through, ``quantization = "ste"``) on the coded symbols, with the
rounded values as contexts (mixed quantisation).

Features f_t^s: plane level s (HexPlane multires scale, coarse to fine) and, for the three time
planes (xt, yt, zt), row t (one time step: the plane's height axis is time). A row is a sequence
of W tokens (the positions along its spatial axis), each with C channels. Contexts:

* spatial prior: level s-1's decoded row t (time planes) or plane (space planes), upsampled
  (linear / bilinear, align_corners=True as ``grid_sample`` reads the planes) to level s's width;
* temporal prior: the hidden state h_t, updated by cross-attention (Eq. 1) between the previous
  hidden state h_{t-1} (queries) and the decoded previous row f_{t-1} (keys, values):
  h_t = softmax(q k^T / sqrt(d)) v, q = W_q h_{t-1}, k = W_k f_{t-1}, v = W_v f_{t-1};
  h_0 = f_0. Tokens are positions; the paper gives the attention no positional information,
  which it needs to align positions (motion shifts a time plane's rows along their spatial
  axis), so each query attends to the keys within ``nvcc_window`` positions, with a learned
  relative-position bias added to the logits (choice). The bias starts at 4 for the same
  position, so attention starts as mostly the identity alignment; d = C and W_v starts as the
  identity: training starts near the plain previous-row prior.
* A token-wise MLP maps the priors to the mean (a residual on the temporal prior, else on the
  spatial prior) and the log-scale of a discretised Gaussian per symbol; a learned embedding per
  (plane, level) is added to its hidden layer, so one network serves all planes and levels
  (choice: the networks are stored in the file, so they are kept small). At the first rate
  evaluation the log-scale biases start at the spread of the residuals they model and the
  factorized priors are centred on their data (data-dependent initialisation, choice).

The paper's special cases: the first feature (level 0, row 0) is coded with Balle et al.'s
univariate density ("uniform entropy coding ... as in [1]"; read as [1]'s factorized prior, see
``first_feature``; ``"uniform"`` codes it with equiprobable symbols instead); the rest of level 0
has only the temporal prior; row 0 of finer levels only the spatial prior; the space-only planes
only the spatial prior, and at level 0 (no prior exists) the factorized prior as the first
feature. Ablations: without the spatial prior ("w/o SP"), every feature the spatial prior served
alone is coded like the first feature (one factorized prior per level); without the hidden-state
update ("w/o HF") the temporal prior is the previous decoded row itself.

Coding order: space planes level by level; time planes in wavefronts s + t = k (every feature of a
wavefront depends only on earlier ones), one arithmetic-coded stream per wavefront. Distribution
parameters are computed on CPU in float64 by the same code at encode and decode time.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from evalkit.codec.container import BitstreamError
from evalkit.codec.entropy import (FactorizedPrior, GaussianConditional, compress_uniform, compute_params_on_cpu, cpu64,
                                   decompress_uniform, stacked_factorized_likelihood)
from evalkit.codec.quantize import relaxed_round, round_ste
from evalkit.codec.serialize import read_uvarint, unzigzag, write_uvarint, zigzag
from evalkit.models.fourdgs.hexplane import HexPlaneConfig, SPACE_PLANES, TIME_PLANES
from evalkit.methods.fourdgs_cc.recurrence import recurrence
from evalkit.methods.fourdgs_cc.vqcc import center_factorized_prior

def plane_offset(i: int) -> float:
    return 1.0 if i in TIME_PLANES else 0.0


def plane_symbols(plane: torch.Tensor, i: int, step: float) -> torch.Tensor:
    """Continuous symbols (C, H, W) of plane i ((1, C, H, W) parameter)."""
    return (plane[0] - plane_offset(i)) / step


def quantize_plane(plane: torch.Tensor, i: int, step: float) -> torch.Tensor:
    """Integer symbols (C, H, W) int64, computed in float64."""
    return torch.round((plane.detach()[0].double() - plane_offset(i)) / step).to(torch.int64)


def dequantize_plane(symbols: torch.Tensor, i: int, step: float) -> torch.Tensor:
    """(C, H, W) ints -> (1, C, H, W) float32 plane (exact: step is a power of two)."""
    return (symbols.double() * step + plane_offset(i)).float()[None]


def ste_plane(plane: torch.Tensor, i: int, step: float) -> torch.Tensor:
    """The plane on its quantisation grid with a straight-through gradient (for rendering)."""
    o = plane_offset(i)
    return o + step * round_ste((plane - o) / step)


class _GridPlanes(torch.autograd.Function):
    """``ste_plane`` of many planes in one autograd node: forward o + step * round((p - o) / step)
    with five multi-tensor ops, backward the identity (straight-through). The same numbers bit for
    bit (x + (round(x) - x) is exactly round(x) in floating point), without ~7 ops and ~4 backward
    nodes per plane on every render (a fine step is bound by host work)."""

    @staticmethod
    def forward(ctx, step: float, offsets: list[float], *planes: torch.Tensor) -> tuple[torch.Tensor, ...]:
        x = torch._foreach_sub(list(planes), offsets)
        torch._foreach_div_(x, step)
        torch._foreach_round_(x)
        torch._foreach_mul_(x, step)
        torch._foreach_add_(x, offsets)
        return tuple(x)

    @staticmethod
    def backward(ctx, *grads: torch.Tensor):
        return (None, None, *grads)


def grid_planes(planes: list[torch.Tensor], indices: list[int], step: float) -> list[torch.Tensor]:
    """``ste_plane(planes[k], indices[k], step)`` for every k, in one autograd node."""
    return list(_GridPlanes.apply(step, [plane_offset(i) for i in indices], *planes))


def _up1d(x: torch.Tensor, width: int) -> torch.Tensor:
    """(..., W', C) -> (..., width, C), linear, align_corners=True."""
    lead = x.shape[:-2]
    y = x.reshape(-1, x.shape[-2], x.shape[-1]).transpose(1, 2)
    y = F.interpolate(y, size=width, mode="linear", align_corners=True)
    return y.transpose(1, 2).reshape(*lead, width, x.shape[-1])


def lerp_matrix(w_in: int, w_out: int, dtype: torch.dtype, device) -> torch.Tensor:
    """(w_out, w_in) matrix M with ``M @ x`` = ``_up1d(x, w_out)`` for x (..., w_in, C): ``_up1d``
    of the identity, so the weights are F.interpolate's own. Training uses it because a GEMM and
    its transpose are far faster on a GPU than PyTorch's 1-D upsample kernel and its backward
    (results/MEASUREMENTS.md, stop 35)."""
    return _up1d(torch.eye(w_in, dtype=torch.float64), w_out).to(device=device, dtype=dtype)


def _up2d(x: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
    """(H', W', C) -> (H, W, C), bilinear, align_corners=True."""
    y = F.interpolate(x.permute(2, 0, 1)[None], size=hw, mode="bilinear", align_corners=True)
    return y[0].permute(1, 2, 0)


def _uniform_bits(x: torch.Tensor) -> torch.Tensor:
    """Bits of the symbols x coded as equiprobable over their range (a device tensor: no sync)."""
    q = torch.round(x.detach())
    return torch.log2(q.max() - q.min() + 1.0) * float(x.numel())


def _window_gather(x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """``x[..., idx, :]`` for x (..., W, C) and idx (N, K): (..., N, K, C). One ``index_select``:
    its backward is one scatter-add, where advanced indexing's sorts the indices every step."""
    return x.index_select(-2, idx.reshape(-1)).reshape(*x.shape[:-2], *idx.shape, x.shape[-1])


class WindowCrossAttention(nn.Module):
    """Eq. (1) over the W positions of a row, each query seeing keys within +-window positions."""

    def __init__(self, dim: int, window: int) -> None:
        super().__init__()
        self.dim, self.reach = int(dim), int(window)
        self.q = nn.Linear(dim, dim, bias=False)
        self.k = nn.Linear(dim, dim, bias=False)
        self.v = nn.Linear(dim, dim, bias=False)
        nn.init.normal_(self.q.weight, std=0.1 / dim ** 0.5)
        nn.init.normal_(self.k.weight, std=0.1 / dim ** 0.5)
        with torch.no_grad():
            self.v.weight.copy_(torch.eye(dim))
        bias = torch.zeros(2 * window + 1)
        bias[window] = 4.0  # starts as mostly the identity alignment (93% of the weight for window 2)
        self.rel_bias = nn.Parameter(bias)

    def window(self, width: int, device) -> tuple[torch.Tensor, torch.Tensor]:
        """(key index (W, 2w+1), validity (1, W, 2w+1)) for rows of ``width`` positions."""
        offs = torch.arange(-self.reach, self.reach + 1, device=device)
        pos = torch.arange(width, device=device)[:, None] + offs[None, :]
        return pos.clamp(0, width - 1), (pos[None] >= 0) & (pos[None] < width)

    def forward(self, h: torch.Tensor, f: torch.Tensor,
                window: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        """h, f: (B, W, C) -> new hidden state (B, W, C); ``window`` from ``self.window``."""
        idx, valid = window if window is not None else self.window(f.shape[1], f.device)
        kw, vw = self.windowed_kv(f, idx)
        return self.step(h, kw, vw, valid)

    def windowed_kv(self, f: torch.Tensor, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys and values of rows ``f`` (..., W, C) gathered per query window: (..., W, 2w+1, C).
        They depend on the decoded rows only, so training computes them for all rows at once."""
        return self.k(f)[..., idx, :], self.v(f)[..., idx, :]

    def step(self, h: torch.Tensor, kw: torch.Tensor, vw: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """One update of Eq. (1) from windowed keys/values of the previous row (coding path; the
        training path, ``recurrence_inputs`` + ``recurrence``, computes the same numbers)."""
        logits = (self.q(h)[:, :, None, :] * kw).sum(-1) * kw.shape[-1] ** -0.5 + self.logit_bias(valid)
        return (logits.softmax(-1)[..., None] * vw).sum(2)

    def packed_window(self, widths: tuple[int, ...], device) -> tuple[torch.Tensor, torch.Tensor]:
        """(key token index (N, 2w+1), validity (N, 2w+1)) for rows of ``widths`` positions laid
        side by side as N = sum(widths) tokens: each query's window of its own row, positions
        outside the row clamped to its ends and marked invalid (as ``window``'s)."""
        offs = torch.arange(-self.reach, self.reach + 1)
        idx, valid, start = [], [], 0
        for w in widths:
            pos = torch.arange(w)[:, None] + offs[None, :]
            idx.append(start + pos.clamp(0, w - 1))
            valid.append((pos >= 0) & (pos < w))
            start += w
        return torch.cat(idx).to(device), torch.cat(valid).to(device)

    def logit_bias(self, valid: torch.Tensor) -> torch.Tensor:
        """Relative-position bias plus the window mask (-1e4 outside the row)."""
        return self.rel_bias - 1e4 * (~valid).to(self.rel_bias.dtype)

    def recurrence_inputs(self, f: torch.Tensor, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """For rows ``f`` (..., W, C): keys mapped so that q(h) . k / sqrt(d) = h . kq (kq = k W_q /
        sqrt(d)) and values, both gathered per query window, (..., W, 2w+1, C). The keys are mapped
        before the gather (a product 2w+1 times smaller than mapping the windows)."""
        kq = (self.k(f) @ self.q.weight) * self.dim ** -0.5
        return _window_gather(kq, idx), _window_gather(self.v(f), idx)


class ParamHead(nn.Module):
    """Token-wise MLP: priors -> (mean offset in value units, log-scale in symbol units)."""

    def __init__(self, in_dim: int, channels: int, hidden: int, n_planes: int) -> None:
        super().__init__()
        self.l1 = nn.Linear(in_dim, hidden)
        self.embed = nn.Parameter(torch.zeros(n_planes, hidden))
        self.l2 = nn.Linear(hidden, 2 * channels)
        nn.init.zeros_(self.l2.weight)
        nn.init.zeros_(self.l2.bias)

    def forward(self, x: torch.Tensor, plane_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x (P, ..., in_dim), plane_ids (P,) -> two (P, ..., C)."""
        e = self.embed.index_select(0, plane_ids).reshape(len(plane_ids), *([1] * (x.dim() - 2)), -1)
        out = self.l2(F.leaky_relu(self.l1(x) + e))
        delta, log_scale = out.chunk(2, dim=-1)
        return delta, log_scale.clamp(-12.0, 12.0)


class NVCC(nn.Module):
    def __init__(self, hexplane: HexPlaneConfig, step: float, hidden: int = 32, window: int = 2,
                 spatial_prior: bool = True, hidden_update: bool = True, first_feature: str = "factorized") -> None:
        super().__init__()
        if len(set(hexplane.resolution[:3])) != 1:
            raise ValueError(f"NVCC needs equal x, y, z plane resolutions (time planes of a level are coded "
                             f"together), got resolution {hexplane.resolution}")
        self.hp = hexplane
        self.C, self.S = int(hexplane.feature_dim), len(hexplane.multires)
        self.step = float(step)
        self.spatial_prior, self.hidden_update = bool(spatial_prior), bool(hidden_update)
        self.first_feature = first_feature
        C, S = self.C, self.S
        self.n_first = 1 if spatial_prior else S  # levels coded without any prior
        factorized = first_feature == "factorized"
        self.first_time = nn.ModuleList([FactorizedPrior(C) for _ in range(self.n_first)] if factorized else [])
        self.first_space = nn.ModuleList([FactorizedPrior(C) for _ in range(3 * self.n_first)] if factorized else [])
        self.attn = WindowCrossAttention(C, window) if hidden_update else None
        self.head_t = ParamHead(C, C, hidden, 6 * S)
        if spatial_prior and S > 1:
            self.head_s = ParamHead(C, C, hidden, 6 * S)
            self.head_st = ParamHead(2 * C, C, hidden, 6 * S)
            self.head_space = ParamHead(C, C, hidden, 6 * S)
        self.conditional = GaussianConditional()
        # index tensors built once per device: a host-to-device copy every step would stall the
        # GPU queue (and cannot be captured in a CUDA graph)
        self._constants: dict[tuple, object] = {}
        self.initialised = False  # ``initialise`` ran (training only; coding never changes weights)

    # -- layout helpers --------------------------------------------------------------------
    def has_spatial(self, s: int) -> bool:
        return self.spatial_prior and s > 0

    def _constant(self, key: tuple, make: Callable[[], object]):
        hit = self._constants.get(key)
        if hit is None:
            hit = self._constants[key] = make()
        return hit

    def _ids(self, s: int, planes: list[int], device) -> torch.Tensor:
        return self._constant(("ids", s, tuple(planes), str(device)),
                              lambda: torch.tensor([s * 6 + i for i in planes], device=device))

    def _first_index(self, s: int) -> int:
        return 0 if self.spatial_prior else s

    def shapes(self) -> list[list[tuple[int, int, int]]]:
        """(C, H, W) of every plane, per level."""
        return [[tuple(sh[1:]) for sh in level] for level in self.hp.plane_shapes()]

    # -- training-time rate ------------------------------------------------------------------
    def _first_bits(self, priors: list[FactorizedPrior], units: list[torch.Tensor]) -> torch.Tensor:
        """Bits of units (C, N_u) coded without context: ``units[u]`` with the factorized prior
        ``priors[u]``, all in one pass through the stacked networks (padded to the longest unit,
        the padding's bits masked out), or without priors as equiprobable symbols over each unit's
        range. No host synchronisation (the rate runs inside a CUDA graph)."""
        if not priors:
            return sum(_uniform_bits(u) for u in units)
        lengths = tuple(u.shape[-1] for u in units)
        n = max(lengths)
        v = torch.cat([F.pad(u, (0, n - u.shape[-1])) if u.shape[-1] < n else u for u in units])
        logs = torch.log2(stacked_factorized_likelihood(priors, v[:, None]))  # floored: no second floor
        if min(lengths) == n:
            return -logs.sum()
        def make_mask() -> torch.Tensor:  # 1 on each unit's own values, 0 on its padding
            cols = torch.arange(n, device=v.device)
            return torch.cat([(cols < k).to(v.dtype).expand(self.C, n) for k in lengths])[:, None]

        mask = self._constant(("padding", lengths, self.C, v.dtype, str(v.device)), make_mask)
        return -(logs * mask).sum()

    def _symbols(self, planes: list[list[torch.Tensor]], mode: str
                 ) -> tuple[list[tuple[torch.Tensor, torch.Tensor]], list[tuple[torch.Tensor, torch.Tensor]], int]:
        """Rounded symbols (straight-through; the contexts) and relaxed symbols (``mode``; what is
        coded) of all planes, each from one op over all planes laid out flat (per level the space
        planes, then the time planes). Per level: (space (3, C, H, W), time (3, C, T, W)) views,
        planes in ``SPACE_PLANES`` / ``TIME_PLANES`` order; and the number of values."""
        order = [(s, i) for s in range(self.S) for i in (*SPACE_PLANES, *TIME_PLANES)]
        ps = [planes[s][i] for s, i in order]
        flat = torch.cat([p.reshape(-1) for p in ps])
        key = ("offsets", tuple(p.numel() for p in ps), flat.dtype, str(flat.device))
        offsets = self._constant(key, lambda: torch.cat([
            torch.full((p.numel(),), plane_offset(i), dtype=flat.dtype, device=flat.device)
            for p, (_, i) in zip(ps, order)]))
        y = (flat - offsets) / self.step
        if mode == "noise":  # drawn in the planes' own order: on CPU the numbers of a draw per plane
            sizes = [p.numel() for level in planes for p in level]
            draws = y.new_empty(y.numel()).uniform_(-0.5, 0.5).split(sizes)
            yt = y + torch.cat([draws[6 * s + i] for s, i in order])
        else:
            yt = relaxed_round(y, mode)

        shapes = [(3, *ps[k].shape[1:]) for k in range(0, len(ps), 3)]  # per level: space, time block

        def blocks(x: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
            # one split (its backward is one cat) rather than slices (a zero-filled copy each)
            parts = [v.view(sh) for v, sh in zip(x.split([math.prod(sh) for sh in shapes]), shapes)]
            return [(parts[2 * s], parts[2 * s + 1]) for s in range(self.S)]

        return blocks(round_ste(y)), blocks(yt), flat.numel()

    @torch.no_grad()
    def initialise(self, planes: list[list[torch.Tensor]]) -> None:
        """Data-dependent start (before training): factorized priors centred on their data; every
        head's log-scale bias set to the spread of what it predicts around its base (choice)."""
        C = self.C
        y = [[plane_symbols(p, i, self.step).detach() for i, p in enumerate(level)] for level in planes]
        yh = [[torch.round(t) for t in level] for level in y]
        spread = lambda r: float(torch.log(r.float().std(unbiased=False).clamp_min(0.5)))  # noqa: E731
        V = [torch.stack([yh[s][i].permute(1, 2, 0) for i in TIME_PLANES]) for s in range(self.S)]
        if V[0].shape[1] > 1:
            self.head_t.l2.bias[C:] = spread(V[0][:, 1:] - V[0][:, :-1])
        if self.spatial_prior and self.S > 1:
            sp = _up1d(V[0].double(), V[1].shape[2])
            self.head_s.l2.bias[C:] = spread(V[1][:, 0] - sp[:, 0])
            if V[1].shape[1] > 1:
                self.head_st.l2.bias[C:] = spread(V[1][:, 1:] - V[1][:, :-1])
            res = [yh[1][i].permute(1, 2, 0) - _up2d(yh[0][i].permute(1, 2, 0).double(), yh[1][i].shape[1:])
                   for i in SPACE_PLANES]
            self.head_space.l2.bias[C:] = spread(torch.cat([r.reshape(-1) for r in res]))
        self.initialised = True
        if self.first_feature != "factorized":
            return
        for s in range(self.n_first):
            rows = torch.cat([y[s][i][:, 0, :].t() for i in TIME_PLANES], 0)  # (3W, C)
            center_factorized_prior(self.first_time[s], rows.median(0).values)
            for k, i in enumerate(SPACE_PLANES):
                vals = y[s][i].reshape(C, -1).t()
                center_factorized_prior(self.first_space[k * self.n_first + s], vals.median(0).values)

    def _temporal_priors(self, V: list[torch.Tensor]) -> list[torch.Tensor]:
        """Temporal priors for rows 1..T-1 of every level: V[s] (3, T, W_s, C) value units ->
        (3, T-1, W_s, C). All levels run through the recurrence together, their positions packed
        side by side (no padding to one width: every token the recurrence carries is a real one)."""
        if not self.hidden_update:
            return [v[:, :-1] for v in V]
        T, C = V[0].shape[1], V[0].shape[-1]
        widths = tuple(v.shape[2] for v in V for _ in range(v.shape[0]))  # one entry per (level, plane) row
        idx, valid = self._constant(("window", widths, str(V[0].device)),
                                    lambda: self.attn.packed_window(widths, V[0].device))
        # Teacher forcing: every previous row is known, so keys and values for all rows come from
        # one batched projection, laid out row-major (time first) as the recurrence reads them;
        # only the query side of the recurrence runs step by step.
        rows = torch.cat([v.transpose(0, 1).reshape(T, -1, C) for v in V], 1)  # (T, N, C), one copy
        kq, vw = self.attn.recurrence_inputs(rows[:-1], idx)  # (T-1, N, 2w+1, C)
        H = recurrence(rows[0], kq, self.attn.logit_bias(valid), vw)  # (T-1, N, C)
        out, b = [], 0
        for v in V:
            n = v.shape[0] * v.shape[2]
            out.append(H[:, b:b + n].reshape(T - 1, v.shape[0], v.shape[2], C).transpose(0, 1))
            b += n
        return out

    def bits(self, planes: list[list[torch.Tensor]], mode: str = "noise") -> tuple[torch.Tensor, int]:
        """Estimated bits of all quantised planes ``planes[s][i]`` ((1, C, H, W), continuous).
        ``mode``: relaxation of the coded symbols (noise / ste / round); contexts are rounded.

        Batched for speed (the rate runs every training step): the symbols of all planes in one
        op each (``_symbols``), the three space planes of a level through one head call, the units
        coded without context of a level through one pass of their stacked factorized priors, and
        every Gaussian-coded unit in one likelihood call. The terms are those of the coding order
        (``_schedule``), unit by unit."""
        step, C = self.step, self.C
        yh, yt, n = self._symbols(planes, mode)
        dev = yh[0][0].device
        coded: list[tuple[torch.Tensor, ...]] = []  # Gaussian units: symbols, base, mean offset, log-scale
        first: dict[int, tuple[list[FactorizedPrior], list[torch.Tensor]]] = {}  # per level: priors, units (C, N)

        def uncontexted(s: int, prior: FactorizedPrior | None, unit: torch.Tensor) -> None:
            priors, units = first.setdefault(s, ([], []))
            priors.extend([prior] if prior is not None else [])
            units.append(unit)

        for s in range(self.S):  # space planes
            target = yt[s][0]  # (3, C, H, W)
            if self.has_spatial(s):
                prior = F.interpolate(yh[s - 1][0] * step, size=target.shape[-2:], mode="bilinear",
                                      align_corners=True).permute(0, 2, 3, 1)  # (3, H, W, C), as _up2d
                delta, log_scale = self.head_space(prior, self._ids(s, SPACE_PLANES, dev))
                coded.append((target.permute(0, 2, 3, 1), prior, delta, log_scale))
            else:
                for k in range(3):
                    bank = self.first_space
                    uncontexted(s, bank[k * self.n_first + self._first_index(s)] if len(bank) else None,
                                target[k].reshape(C, -1))

        V = [yh[s][1].permute(0, 2, 3, 1) * step for s in range(self.S)]  # (3, T, W_s, C) value units
        Y = [yt[s][1].permute(0, 2, 3, 1) for s in range(self.S)]
        T = V[0].shape[1]
        temporal = self._temporal_priors(V) if T > 1 else None
        for s in range(self.S):  # time planes
            ids = self._ids(s, TIME_PLANES, dev)
            if self.has_spatial(s):
                w_in, w_out = V[s - 1].shape[2], V[s].shape[2]
                up = self._constant(("lerp", w_in, w_out, V[s].dtype, str(dev)),
                                    lambda: lerp_matrix(w_in, w_out, V[s].dtype, dev))
                sp = torch.matmul(up, V[s - 1])  # (3, T, W_s, C), as _up1d
                delta, log_scale = self.head_s(sp[:, 0], ids)
                coded.append((Y[s][:, 0], sp[:, 0], delta, log_scale))
            else:  # row 0 of the three planes: one unit (C, 3W)
                bank = self.first_time
                uncontexted(s, bank[self._first_index(s)] if len(bank) else None,
                            yt[s][1][:, :, 0].transpose(0, 1).reshape(C, -1))
            if T > 1:
                tp = temporal[s]
                if self.has_spatial(s):
                    delta, log_scale = self.head_st(torch.cat([tp, sp[:, 1:]], -1), ids)
                else:
                    delta, log_scale = self.head_t(tp, ids)
                coded.append((Y[s][:, 1:], tp, delta, log_scale))

        parts = [self._first_bits(priors, units) for priors, units in first.values()]
        if coded:
            x, base, delta, log_scale = (torch.cat([unit[k].reshape(-1) for unit in coded]) for k in range(4))
            parts.append(self.conditional.bits(x, (base + delta) / step, torch.exp(log_scale)))
        return sum(parts[1:], parts[0]), n

    # -- coding ----------------------------------------------------------------------------
    def compress(self, symbols: list[list[torch.Tensor]]) -> bytes:
        """symbols[s][i]: (C, H, W) int64 -> one byte string of sub-streams."""
        out: list[bytes] = []

        def code(kind: str, sym_shape, params, known: torch.Tensor) -> torch.Tensor:
            out.append(self._encode_unit(kind, params, known))
            return known

        self._schedule(lambda key: symbols[key[0]][key[1]], code)
        return b"".join(write_uvarint(len(b)) + b for b in out)

    def decompress(self, data: bytes, source: str | Path = "<nvcc>") -> list[list[torch.Tensor]]:
        pos = [0]

        def next_stream() -> bytes:
            n, p = read_uvarint(data, pos[0], source)
            if p + n > len(data):
                raise BitstreamError(source, "truncated NVCC stream")
            pos[0] = p + n
            return bytes(data[p:p + n])

        def code(kind: str, sym_shape, params, known) -> torch.Tensor:
            return self._decode_unit(kind, sym_shape, params, next_stream(), source)

        decoded = self._schedule(None, code)
        if pos[0] != len(data):
            raise BitstreamError(source, f"{len(data) - pos[0]} trailing bytes after the NVCC streams")
        return decoded

    def _encode_unit(self, kind: str, params, q: torch.Tensor) -> bytes:
        if kind == "gaussian":
            mean, scale = params
            return self.conditional.compress(q, mean, scale)
        if kind == "factorized":
            return params.compress(q)
        lo, hi = int(q.min()), int(q.max())  # uniform
        return write_uvarint(zigzag(lo)) + write_uvarint(hi - lo) + compress_uniform(q, lo, hi)

    def _decode_unit(self, kind: str, shape, params, data: bytes, source) -> torch.Tensor:
        if kind == "gaussian":
            mean, scale = params
            return self.conditional.decompress(data, mean, scale, source)
        if kind == "factorized":
            return params.decompress(data, shape[0], source)
        z, p = read_uvarint(data, 0, source)
        span, p = read_uvarint(data, p, source)
        lo = unzigzag(z)
        return decompress_uniform(data[p:], shape, lo, lo + span, source)

    @torch.no_grad()
    def _schedule(self, known: Callable | None, code: Callable) -> list[list[torch.Tensor]]:
        """Walk the coding order. ``code(kind, shape, params, known_symbols) -> symbols`` codes one
        unit (encoder: ``known`` gives the symbols; decoder: ``known`` is None). Returns the symbols."""
        m = cpu64(self)
        step, C, S = self.step, self.C, self.S
        shapes = self.shapes()
        sym: list[list[torch.Tensor | None]] = [[None] * 6 for _ in range(S)]
        get = (lambda s, i: known((s, i))) if known is not None else (lambda s, i: None)
        params = lambda fn, *xs: compute_params_on_cpu(fn, *xs)  # noqa: E731

        def first_prior(bank, idx):
            return bank[idx] if len(bank) else None

        # space planes, level by level
        for s in range(S):
            if self.has_spatial(s):
                priors = [_up2d(sym[s - 1][i].permute(1, 2, 0).double() * step, shapes[s][i][1:]) for i in SPACE_PLANES]
                mp = []
                for i, pr in zip(SPACE_PLANES, priors):
                    delta, log_scale = params(lambda x, ids: m.head_space(x, ids), pr[None], self._ids(s, [i], "cpu"))
                    mp.append(((pr + delta[0]) / step, torch.exp(log_scale[0])))
                mean = torch.cat([a.reshape(-1) for a, _ in mp])
                scale = torch.cat([b.reshape(-1) for _, b in mp])
                k_known = (torch.cat([get(s, i).permute(1, 2, 0).reshape(-1) for i in SPACE_PLANES])
                           if known is not None else None)
                flat = code("gaussian", mean.shape, (mean, scale), k_known)
                b = 0
                for i in SPACE_PLANES:
                    c, h, w = shapes[s][i]
                    sym[s][i] = flat[b:b + h * w * c].reshape(h, w, c).permute(2, 0, 1).contiguous()
                    b += h * w * c
            else:
                for k, i in enumerate(SPACE_PLANES):
                    c, h, w = shapes[s][i]
                    prior = first_prior(m.first_space, k * self.n_first + self._first_index(s))
                    q = get(s, i).permute(1, 2, 0).reshape(-1, C) if known is not None else None
                    out = code("factorized" if prior is not None else "uniform", (h * w, C), prior, q)
                    sym[s][i] = out.reshape(h, w, C).permute(2, 0, 1).contiguous()

        # time planes: rows in wavefronts s + t = k
        T = shapes[0][TIME_PLANES[0]][1]
        rows: list[torch.Tensor] = []  # per level (3, T, W_s, C) symbols
        for s in range(S):
            w = shapes[s][TIME_PLANES[0]][2]
            rows.append(torch.zeros(3, T, w, C, dtype=torch.int64))
        knowns = ([torch.stack([get(s, i).permute(1, 2, 0) for i in TIME_PLANES]) for s in range(S)]
                  if known is not None else None)
        for s in range(S):
            if not self.has_spatial(s):
                prior = first_prior(m.first_time, self._first_index(s))
                q = knowns[s][:, 0].reshape(-1, C) if knowns is not None else None
                out = code("factorized" if prior is not None else "uniform", (3 * rows[s].shape[2], C), prior, q)
                rows[s][:, 0] = out.reshape(3, -1, C)
        hidden: list[torch.Tensor | None] = [None] * S
        for k in range(1, T + S - 1):
            members = [(s, k - s) for s in range(S)
                       if 0 <= k - s < T and (k - s > 0 or self.has_spatial(s))]
            means, scales = [], []
            for s, t in members:
                ids = self._ids(s, TIME_PLANES, "cpu")
                V = lambda lv, tt: rows[lv][:, tt].double() * step  # noqa: E731
                if t > 0:
                    if self.hidden_update:
                        h_prev = hidden[s] if hidden[s] is not None else V(s, 0)
                        hidden[s] = params(lambda a, b: m.attn(a, b), h_prev, V(s, t - 1))
                        tp = hidden[s]
                    else:
                        tp = V(s, t - 1)
                if self.has_spatial(s):
                    sp = _up1d(V(s - 1, t), rows[s].shape[2])
                if t == 0:
                    delta, log_scale = params(lambda x, i_: m.head_s(x, i_), sp, ids)
                    base = sp
                elif self.has_spatial(s):
                    delta, log_scale = params(lambda x, i_: m.head_st(x, i_), torch.cat([tp, sp], -1), ids)
                    base = tp
                else:
                    delta, log_scale = params(lambda x, i_: m.head_t(x, i_), tp, ids)
                    base = tp
                means.append(((base + delta) / step).reshape(-1))
                scales.append(torch.exp(log_scale).reshape(-1))
            mean, scale = torch.cat(means), torch.cat(scales)
            q = (torch.cat([knowns[s][:, t].reshape(-1) for s, t in members]) if knowns is not None else None)
            flat = code("gaussian", mean.shape, (mean, scale), q)
            b = 0
            for s, t in members:
                n = rows[s][:, t].numel()
                rows[s][:, t] = flat[b:b + n].reshape(rows[s][:, t].shape)
                b += n
        for s in range(S):
            for j, i in enumerate(TIME_PLANES):
                sym[s][i] = rows[s][j].permute(2, 0, 1).contiguous()
        return sym  # type: ignore[return-value]
