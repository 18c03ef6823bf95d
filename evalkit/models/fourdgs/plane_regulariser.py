"""The HexPlane regularisers of a training step in one fused Triton kernel on CUDA.

``HexPlane.regulariser`` is ~45 small kernels forward and ~70 backward every fine step, and a
4DGS step is bound by launch overhead, not arithmetic. Its terms are sums of squares and absolute
values, so the gradient is known in closed form: ``PlaneRegulariser`` computes the value and the
gradient with respect to every plane in one kernel (plus a copy packing the planes) and hands
them to autograd through a function whose backward scales the stored gradient. Off CUDA, or
without Triton, it returns ``HexPlane.regulariser`` itself. Tests compare the value and
every plane gradient with autograd of the eager expression (Triton's CPU interpreter, and CUDA).

Per plane (C, H, W), with second differences along the height axis
d2[c, h, w] = p[h + 2] - 2 p[h + 1] + p[h] (h = 0 .. H - 3):
smoothness = mean(d2^2), so d smoothness / d p[h] = 2 / M (d2[h] - 2 d2[h - 1] + d2[h - 2]) with
M = C (H - 2) W and out-of-range d2 terms left out; l1 = mean |1 - p|, gradient sign(p - 1) / numel.
"""
from __future__ import annotations

import warnings

import torch
from torch.autograd.function import once_differentiable

from evalkit.models.fourdgs.hexplane import SPACE_PLANES, HexPlane
from evalkit.models.fourdgs.kernel_device import kernel_device

try:  # Triton ships with CUDA builds of PyTorch on Linux; absent elsewhere
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - depends on the platform
    triton = None


if triton is not None:
    @triton.jit
    def _regulariser_kernel(buf, grad, meta, coef, out, BLOCK: tl.constexpr):
        """Program (block, plane k): the gradient of its elements and their share of the value."""
        k = tl.program_id(1)
        pos = tl.load(meta + 4 * k).to(tl.int64)
        H = tl.load(meta + 4 * k + 1)
        W = tl.load(meta + 4 * k + 2)
        numel = tl.load(meta + 4 * k + 3)
        sm = tl.load(coef + 2 * k)  # smoothness weight / M
        l1 = tl.load(coef + 2 * k + 1)  # l1 weight / numel
        i = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        m = i < numel
        h = (i % (H * W)) // W
        p = buf + pos + i
        p0 = tl.load(p, mask=m, other=0.0)
        up1 = tl.load(p + W, mask=m & (h + 1 < H), other=0.0)
        up2 = tl.load(p + 2 * W, mask=m & (h + 2 < H), other=0.0)
        dn1 = tl.load(p - W, mask=m & (h >= 1), other=0.0)
        dn2 = tl.load(p - 2 * W, mask=m & (h >= 2), other=0.0)
        d2_h = tl.where(h <= H - 3, up2 - 2.0 * up1 + p0, 0.0)  # the second difference starting at h
        d2_h1 = tl.where((h >= 1) & (h <= H - 2), up1 - 2.0 * p0 + dn1, 0.0)  # ... at h - 1
        d2_h2 = tl.where((h >= 2) & (h <= H - 1), p0 - 2.0 * dn1 + dn2, 0.0)  # ... at h - 2
        sign = tl.where(p0 > 1.0, 1.0, tl.where(p0 < 1.0, -1.0, 0.0))
        g = 2.0 * sm * (d2_h - 2.0 * d2_h1 + d2_h2) + l1 * sign
        tl.store(grad + pos + i, g, mask=m)
        val = tl.where(m, sm * d2_h * d2_h + l1 * tl.abs(1.0 - p0), 0.0)
        tl.atomic_add(out, tl.sum(val, axis=0), sem="relaxed")


class _Attach(torch.autograd.Function):
    """value -> value, whose gradient with respect to ``planes`` is ``grads`` (precomputed)."""

    @staticmethod
    def forward(ctx, value: torch.Tensor, grads: tuple[torch.Tensor, ...], *planes: torch.Tensor):
        ctx.grads = grads
        return value.clone()

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out: torch.Tensor):
        grads, ctx.grads = ctx.grads, None  # the buffer need not outlive this step's backward
        return (None, None, *torch._foreach_mul(list(grads), grad_out))


class PlaneRegulariser:
    """``reg()`` = ``grid.regulariser(plane_tv, time_smoothness, l1_time)``, with the same value
    and plane gradients, from the fused kernel on CUDA (``backend``: "auto", "triton", "torch")."""

    backend = "auto"  # the default for new instances (a benchmark switches it to compare)
    BLOCK = 1024

    def __init__(self, grid: HexPlane, plane_tv: float, time_smoothness: float, l1_time: float,
                 backend: str | None = None) -> None:
        self.grid = grid
        self.weights = (plane_tv, time_smoothness, l1_time)
        self.backend = backend or PlaneRegulariser.backend
        if self.backend not in ("auto", "triton", "torch"):
            raise ValueError(f"PlaneRegulariser backend must be 'auto', 'triton' or 'torch', not {self.backend!r}")
        self.failed: str | None = None
        self._tables: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}

    def _eager(self, planes: list[torch.Tensor]) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
        with torch.enable_grad():
            value = self.grid.regulariser(*self.weights)
            grads = torch.autograd.grad(value, planes)
        return value.detach(), tuple(grads)

    def _tables_for(self, planes: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """(int32 [P, 4] offset / H / W / numel, float32 [P, 2] coefficients), built once per
        shape set (a host-to-device copy, not one per step)."""
        key = (planes[0].device, tuple(p.shape for p in planes))
        hit = self._tables.get(key)
        if hit is None:
            plane_tv, time_smoothness, l1_time = self.weights
            rows, coefs, pos = [], [], 0
            for k, p in enumerate(planes):
                C, H, W = p.shape[-3:]
                if H < 3:
                    raise ValueError(f"plane {k} has {H} rows; the smoothness needs 3")
                space = k % 6 in SPACE_PLANES
                rows.append((pos, H, W, p.numel()))
                coefs.append(((plane_tv if space else time_smoothness) / (C * (H - 2) * W),
                              0.0 if space else l1_time / p.numel()))
                pos += p.numel()
            if pos >= 2 ** 31:
                raise ValueError("HexPlane too large for int32 indexing")
            dev = planes[0].device
            hit = self._tables[key] = (torch.tensor(rows, dtype=torch.int32, device=dev),
                                       torch.tensor(coefs, dtype=torch.float32, device=dev))
        return hit

    def _fused(self, planes: list[torch.Tensor]) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
        meta, coef = self._tables_for(planes)
        buf = torch.cat([p.detach().reshape(-1) for p in planes])
        grad = torch.empty_like(buf)
        out = torch.zeros(1, device=buf.device, dtype=torch.float32)
        width = max(p.numel() for p in planes)
        with kernel_device(buf):
            _regulariser_kernel[(triton.cdiv(width, self.BLOCK), len(planes))](buf, grad, meta, coef, out,
                                                                              BLOCK=self.BLOCK)
        grads = tuple(g.view(p.shape) for g, p in zip(grad.split([p.numel() for p in planes]), planes))
        return out[0], grads

    def _use_fused(self, planes: list[torch.Tensor]) -> bool:
        if self.backend != "auto":
            return self.backend == "triton"
        # fewer than 3 rows: no second difference (eager gives NaN, as HexPlane.regulariser)
        return (triton is not None and self.failed is None and len(planes) % 6 == 0
                and all(p.is_cuda and p.dtype == torch.float32 and p.shape[-2] >= 3 for p in planes))

    def _try_fused(self, planes: list[torch.Tensor]) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]] | None:
        """The fused kernel's (value, gradients), or None where it does not apply or has failed."""
        if not self._use_fused(planes):
            return None
        try:
            return self._fused(planes)
        except Exception as exc:  # noqa: BLE001 - compile / launch failure: same numbers eagerly
            if self.backend == "triton":
                raise
            self.failed = f"{type(exc).__name__}: {exc}"
            warnings.warn(f"fused HexPlane regulariser failed ({self.failed}); differentiating it eagerly",
                          RuntimeWarning)
            return None

    def values(self, planes: list[torch.Tensor] | None = None) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
        """(value, gradients with respect to ``planes`` = ``grid.planes()``), both detached."""
        planes = self.grid.planes() if planes is None else planes
        return self._try_fused(planes) or self._eager(planes)

    def __call__(self) -> torch.Tensor:
        planes = self.grid.planes()
        fused = self._try_fused(planes)
        if fused is None:  # the eager expression, differentiated by the loss's own backward
            return self.grid.regulariser(*self.weights)
        return _Attach.apply(*fused, *planes)
