"""HexPlane feature lookup (``hexplane.HexPlane.forward``) as fused Triton kernels.

The PyTorch path costs 2 to 6 ``grid_sample`` calls per scale plus stacks, products and cats, and
more in autograd backward. Here the forward is one launch for all scales (programs over point
blocks x scales); the backward is one launch (programs over point blocks x scales) that
recomputes the six samples, forms the product of the other five planes explicitly (features may
be 0, so no division) and scatters plane gradients with ``tl.atomic_add``, then one small launch
that puts those gradients back in the planes' (C, H, W) layout (and, with several scales, a sum of
the scales' coordinate gradients). Its speed against the PyTorch path: results/MEASUREMENTS.md
(``python -m evalkit.bench.fourdgs_step``).

Planes are packed into one flat buffer, channels-last ((H, W, C) per plane, so a corner's C
channels are contiguous) with a small int32 table of (position offset, H, W) per plane. Sampling
is ``grid_sample(mode="bilinear", padding_mode="border", align_corners=True)``, including its
coordinate gradient: zero where the coordinate was clipped (on or beyond the border).
``available()`` is False when Triton is missing; ``HexPlane`` then uses the PyTorch path.
"""
from __future__ import annotations

import warnings

import torch
from torch.autograd.function import once_differentiable

from evalkit.models.fourdgs.kernel_device import kernel_device

try:  # Triton ships with CUDA builds of PyTorch on Linux; absent elsewhere
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - depends on the platform
    triton = None

failed: str | None = None  # set to the error if the kernels ever failed: PyTorch path from then on


def available() -> bool:
    return triton is not None


def disable(exc: BaseException) -> None:
    """Record a kernel failure and warn once; ``HexPlane`` uses the PyTorch path from then on."""
    global failed
    if failed is None:
        failed = f"{type(exc).__name__}: {exc}"
        warnings.warn(f"Triton HexPlane kernels failed ({failed}); using the PyTorch path", RuntimeWarning)


if triton is not None:
    @triton.jit
    def _points(coords, N, BN: tl.constexpr, CP: tl.constexpr):
        """This program's point block: indices (int64), mask, channel indices, coordinates."""
        n = tl.program_id(0) * BN + tl.arange(0, BN)
        pm = n < N
        n = n.to(tl.int64)
        x = tl.load(coords + n * 4, mask=pm, other=0.0)
        y = tl.load(coords + n * 4 + 1, mask=pm, other=0.0)
        z = tl.load(coords + n * 4 + 2, mask=pm, other=0.0)
        t = tl.load(coords + n * 4 + 3, mask=pm, other=0.0)
        return n, pm, tl.arange(0, CP)[None, :], x, y, z, t

    @triton.jit
    def _corners(meta, k, u, v, pm, C: tl.constexpr):
        """Plane k at (u along W, v along H): element offset of the top-left corner, row stride,
        masks of the right / lower neighbours, bilinear weights, coordinate-gradient factors."""
        pos = tl.load(meta + 3 * k)
        H = tl.load(meta + 3 * k + 1)
        W = tl.load(meta + 3 * k + 2)
        wm1 = (W - 1).to(tl.float32)
        hm1 = (H - 1).to(tl.float32)
        ix = (u + 1.0) * 0.5 * wm1  # align_corners=True unnormalisation, as PyTorch's CUDA kernel
        iy = (v + 1.0) * 0.5 * hm1
        # clip_coordinates_set_grad: no gradient on or beyond the border
        gu = tl.where((ix > 0.0) & (ix < wm1), wm1 * 0.5, 0.0)
        gv = tl.where((iy > 0.0) & (iy < hm1), hm1 * 0.5, 0.0)
        ix = tl.minimum(tl.maximum(ix, 0.0), wm1)
        iy = tl.minimum(tl.maximum(iy, 0.0), hm1)
        x0f = tl.floor(ix)
        y0f = tl.floor(iy)
        x0 = x0f.to(tl.int32)
        y0 = y0f.to(tl.int32)
        e = (pos + y0 * W + x0) * C
        # a neighbour past the last row / column only occurs with weight 0 after clipping
        mx = pm & (x0 + 1 < W)
        my = pm & (y0 + 1 < H)
        return e, W * C, mx, my, x0f + 1.0 - ix, ix - x0f, y0f + 1.0 - iy, iy - y0f, gu, gv

    @triton.jit
    def _sample(buf, meta, k, u, v, pm, c, C: tl.constexpr):
        """Bilinear sample of plane k, (BN, CP)."""
        e, row, mx, my, wx0, wx1, wy0, wy1, gu, gv = _corners(meta, k, u, v, pm, C)
        p = buf + e[:, None] + c
        mc = c < C
        f = tl.load(p, mask=pm[:, None] & mc, other=0.0) * (wx0 * wy0)[:, None]
        f += tl.load(p + C, mask=mx[:, None] & mc, other=0.0) * (wx1 * wy0)[:, None]
        f += tl.load(p + row, mask=my[:, None] & mc, other=0.0) * (wx0 * wy1)[:, None]
        f += tl.load(p + row + C, mask=(mx & my)[:, None] & mc, other=0.0) * (wx1 * wy1)[:, None]
        return f

    @triton.jit
    def _sample_backward(buf, gbuf, meta, k, u, v, pm, c, g, C: tl.constexpr):
        """Scatter g (BN, CP), the gradient reaching plane k's sample, into gbuf; return the
        gradients of u and v, (BN,) each."""
        e, row, mx, my, wx0, wx1, wy0, wy1, gu, gv = _corners(meta, k, u, v, pm, C)
        mc = c < C
        m00, m01 = pm[:, None] & mc, mx[:, None] & mc
        m10, m11 = my[:, None] & mc, (mx & my)[:, None] & mc
        p = e[:, None] + c
        v00 = tl.load(buf + p, mask=m00, other=0.0)
        v01 = tl.load(buf + p + C, mask=m01, other=0.0)
        v10 = tl.load(buf + p + row, mask=m10, other=0.0)
        v11 = tl.load(buf + p + row + C, mask=m11, other=0.0)
        tl.atomic_add(gbuf + p, g * (wx0 * wy0)[:, None], mask=m00, sem="relaxed")
        tl.atomic_add(gbuf + p + C, g * (wx1 * wy0)[:, None], mask=m01, sem="relaxed")
        tl.atomic_add(gbuf + p + row, g * (wx0 * wy1)[:, None], mask=m10, sem="relaxed")
        tl.atomic_add(gbuf + p + row + C, g * (wx1 * wy1)[:, None], mask=m11, sem="relaxed")
        du = tl.sum(g * ((v01 - v00) * wy0[:, None] + (v11 - v10) * wy1[:, None]), axis=1) * gu
        dv = tl.sum(g * ((v10 - v00) * wx0[:, None] + (v11 - v01) * wx1[:, None]), axis=1) * gv
        return du, dv

    # N (and S) unspecialised: Triton would otherwise compile a second variant the first time the
    # Gaussian count is (or is not) a multiple of 16, tens of seconds in the middle of training
    @triton.jit(do_not_specialize=["N", "S"])
    def _forward_kernel(coords, buf, meta, out, N, S, C: tl.constexpr, CP: tl.constexpr, BN: tl.constexpr):
        n, pm, c, x, y, z, t = _points(coords, N, BN, CP)
        s = tl.program_id(1)
        k = 6 * s  # planes xy xz xt yz yt zt of scale s
        # (xy * xz * yz) * (xt * yt * zt): the PyTorch path's order (space group, time group)
        f = _sample(buf, meta, k, x, y, pm, c, C) * _sample(buf, meta, k + 1, x, z, pm, c, C)
        f = f * _sample(buf, meta, k + 3, y, z, pm, c, C)
        ft = _sample(buf, meta, k + 2, x, t, pm, c, C) * _sample(buf, meta, k + 4, y, t, pm, c, C)
        ft = ft * _sample(buf, meta, k + 5, z, t, pm, c, C)
        tl.store(out + n[:, None] * (S * C) + s * C + c, f * ft, mask=pm[:, None] & (c < C))

    # One program per (point block, scale), as the forward: a scale's features depend on its own
    # six planes only. (Unrolling the scales in one program compiles far slower, longer than the
    # coarse stage it hides behind: results/MEASUREMENTS.md.)
    @triton.jit(do_not_specialize=["N", "S"])
    def _backward_kernel(coords, buf, meta, gout, gbuf, gpart, N, S, C: tl.constexpr, CP: tl.constexpr,
                         BN: tl.constexpr):
        n, pm, c, x, y, z, t = _points(coords, N, BN, CP)
        s = tl.program_id(1)
        k = 6 * s
        g = tl.load(gout + n[:, None] * (S * C) + s * C + c, mask=pm[:, None] & (c < C), other=0.0)
        f0 = _sample(buf, meta, k, x, y, pm, c, C)
        f1 = _sample(buf, meta, k + 1, x, z, pm, c, C)
        f2 = _sample(buf, meta, k + 2, x, t, pm, c, C)
        f3 = _sample(buf, meta, k + 3, y, z, pm, c, C)
        f4 = _sample(buf, meta, k + 4, y, t, pm, c, C)
        f5 = _sample(buf, meta, k + 5, z, t, pm, c, C)
        sp = g * f0 * f1 * f3  # gradient times the space product / time product
        tp = g * f2 * f4 * f5
        gx, gy = _sample_backward(buf, gbuf, meta, k, x, y, pm, c, tp * f1 * f3, C)
        du, gz = _sample_backward(buf, gbuf, meta, k + 1, x, z, pm, c, tp * f0 * f3, C)
        gx += du
        du, dv = _sample_backward(buf, gbuf, meta, k + 3, y, z, pm, c, tp * f0 * f1, C)
        gy += du
        gz += dv
        du, gt = _sample_backward(buf, gbuf, meta, k + 2, x, t, pm, c, sp * f4 * f5, C)
        gx += du
        du, dv = _sample_backward(buf, gbuf, meta, k + 4, y, t, pm, c, sp * f2 * f5, C)
        gy += du
        gt += dv
        du, dv = _sample_backward(buf, gbuf, meta, k + 5, z, t, pm, c, sp * f2 * f4, C)
        gz += du
        gt += dv
        # this scale's coordinate gradient, (S, N, 4): summed over the scales afterwards
        out = gpart + (s.to(tl.int64) * N + n) * 4
        tl.store(out, gx, mask=pm)
        tl.store(out + 1, gy, mask=pm)
        tl.store(out + 2, gz, mask=pm)
        tl.store(out + 3, gt, mask=pm)

    @triton.jit
    def _unpack_kernel(gbuf, meta, out, C: tl.constexpr, BLOCK: tl.constexpr):
        """Channels-last packed gradients -> the planes' own (C, H, W) layout, plane by plane."""
        k = tl.program_id(1)
        pos = tl.load(meta + 3 * k)
        hw = tl.load(meta + 3 * k + 1) * tl.load(meta + 3 * k + 2)
        i = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        m = i < hw * C
        ch = i // hw
        v = tl.load(gbuf + (pos + i - ch * hw) * C + ch, mask=m)
        tl.store(out + pos * C + i, v, mask=m)


_META: dict[tuple, torch.Tensor] = {}  # (device, plane shapes) -> int32 (P, 3) table, built once


def _meta(planes: tuple[torch.Tensor, ...]) -> torch.Tensor:
    key = (planes[0].device, tuple(p.shape for p in planes))
    meta = _META.get(key)
    if meta is None:  # a host-to-device copy: once per shape set, never per step (nor in a CUDA graph)
        rows, pos = [], 0
        for p in planes:
            rows.append((pos, p.shape[2], p.shape[3]))
            pos += p.shape[2] * p.shape[3]
        if pos * planes[0].shape[1] >= 2 ** 31:
            raise ValueError("HexPlane too large for int32 indexing")
        meta = _META[key] = torch.tensor(rows, dtype=torch.int32, device=planes[0].device)
    return meta


def _blocks(C: int) -> tuple[int, int]:
    """Channels padded to a power of two, points per program: 1024-element tiles with 4 warps (8
    elements a thread), the fastest tiling measured (results/MEASUREMENTS.md)."""
    CP = triton.next_power_of_2(C)
    return CP, max(1, 1024 // CP)


def _packed(planes: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, torch.Tensor]:
    """The kernels' plane buffer, (sum of H*W, C): the transposed concatenation of the planes
    viewed as (C, H*W); and its (P, 3) table."""
    C = planes[0].shape[1]
    return torch.cat([p.reshape(C, -1) for p in planes], 1).float().t().contiguous(), _meta(planes)


class HexPlaneSample(torch.autograd.Function):
    """coords (N, 4), planes (6 per scale, scale-major, each [1, C, H, W]) -> features (N, S*C).
    With ``fallback``, a failing backward kernel warns once and PyTorch computes the gradients."""

    @staticmethod
    def forward(ctx, coords: torch.Tensor, fallback: bool, *planes: torch.Tensor) -> torch.Tensor:
        S, C = len(planes) // 6, planes[0].shape[1]
        if len(planes) != 6 * S or S == 0 or any(p.dim() != 4 or p.shape[:2] != (1, C) for p in planes):
            raise ValueError("expected 6 planes [1, C, H, W] per scale")
        coords = coords.contiguous().float()
        buf, meta = _packed(planes)
        N = coords.shape[0]
        out = torch.empty(N, S * C, device=coords.device, dtype=torch.float32)
        CP, BN = _blocks(C)
        with kernel_device(coords):
            _forward_kernel[(triton.cdiv(N, BN), S)](coords, buf, meta, out, N, S, C=C, CP=CP, BN=BN)
        ctx.save_for_backward(coords, buf, meta, *planes)
        ctx.fallback = fallback
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, gout: torch.Tensor):
        coords, buf, meta, *planes = ctx.saved_tensors
        try:
            gcoords, *gplanes = _backward(coords, buf, meta, planes, gout.contiguous().float())
        except Exception as exc:  # noqa: BLE001 - compile/launch failure: the same gradients from PyTorch
            if not ctx.fallback:
                raise
            disable(exc)
            with torch.enable_grad():
                xs = [x.detach().requires_grad_(True) for x in (coords, *planes)]
                gcoords, *gplanes = torch.autograd.grad(_torch_features(xs[0], xs[1:]), xs, gout)
        return gcoords, None, *gplanes


def _backward(coords: torch.Tensor, buf: torch.Tensor, meta: torch.Tensor, planes: list[torch.Tensor],
              gout: torch.Tensor) -> list[torch.Tensor]:
    N, S, C = coords.shape[0], len(planes) // 6, planes[0].shape[1]
    CP, BN = _blocks(C)
    gbuf = torch.zeros_like(buf)
    gpart = torch.empty(S, N, 4, device=coords.device, dtype=torch.float32)
    with kernel_device(coords):
        _backward_kernel[(triton.cdiv(N, BN), S)](coords, buf, meta, gout, gbuf, gpart, N, S, C=C, CP=CP, BN=BN)
    gcoords = gpart.sum(0) if S > 1 else gpart[0]
    flat = torch.empty_like(buf).view(-1)  # the planes' gradients back to back, each (C, H, W)
    BLOCK = 1024
    grid = (triton.cdiv(max(p.numel() for p in planes), BLOCK), len(planes))  # grid axis 1 is limited to 65535
    with kernel_device(coords):
        _unpack_kernel[grid](gbuf, meta, flat, C=C, BLOCK=BLOCK)
    return [gcoords] + [g.view(p.shape) for g, p in zip(flat.split([p.numel() for p in planes]), planes)]


def run_backward_kernels(coords: torch.Tensor, scales: list[list[torch.Tensor]]) -> None:
    """Launch the backward's kernels once (a zero gradient) without the forward: compiles them
    on their own, in parallel with the forward's compile in another process (``kernel_warmup``)."""
    planes = tuple(p.detach() for planes in scales for p in planes)
    buf, meta = _packed(planes)
    gout = torch.zeros(coords.shape[0], len(scales) * planes[0].shape[1], device=coords.device, dtype=torch.float32)
    _backward(coords.detach().contiguous().float(), buf, meta, list(planes), gout)


def _torch_features(coords: torch.Tensor, planes: list[torch.Tensor]) -> torch.Tensor:
    """The PyTorch path (``HexPlane._product`` per scale), for the backward's fallback."""
    from evalkit.models.fourdgs.hexplane import HexPlane, PLANE_PAIRS, SPACE_PLANES, TIME_PLANES
    pairs = torch.tensor(PLANE_PAIRS, device=coords.device)
    return torch.cat([HexPlane._product(planes[i:i + 6], coords, pairs[SPACE_PLANES], pairs[TIME_PLANES])
                      for i in range(0, len(planes), 6)], 1)


def sample(coords: torch.Tensor, scales: list[list[torch.Tensor]], fallback: bool = False) -> torch.Tensor:
    """HexPlane features (N, S*C) of coords (N, 4) from the planes of each scale (6 each).
    ``fallback``: a failing backward kernel warns and PyTorch computes the gradients, else it raises."""
    return HexPlaneSample.apply(coords, fallback, *[p for planes in scales for p in planes])
