"""``rasterize``: one call, two interchangeable backends.

Backend choice (``backend="auto"``): gsplat when the tensors are float32 on CUDA and gsplat's
CUDA extension works; the pure-torch reference otherwise (CPU, float64, or gsplat broken).
If gsplat is broken on a CUDA machine, ``auto`` logs one warning naming the reason and falls
back to torch (orders of magnitude slower) so that training/eval still run; set
``EVALKIT_REQUIRE_GSPLAT=1`` to make that an error instead, and timing code should check
``RenderOutput.backend`` (``evalkit.bench.render`` prints it). ``backend="gsplat"`` never
falls back: it raises ``GsplatUnavailable`` with the reason.
"""
from __future__ import annotations

import logging
import os
from typing import TYPE_CHECKING, Literal

import numpy as np
import torch
from torch import Tensor

from evalkit.render.gsplat_backend import (GsplatUnavailable, gsplat_status, rasterize_gsplat,
                                          rasterize_views_gsplat)
from evalkit.render.output import RenderOutput, ViewsOutput
from evalkit.render.sh import num_sh_bases
from evalkit.render.torch_reference import rasterize_torch

if TYPE_CHECKING:  # evalkit.data pulls in file-format deps that rendering does not need
    from evalkit.data.scene import Camera

__all__ = ["RenderOutput", "ViewsOutput", "rasterize", "rasterize_views", "available_backends",
           "select_backend", "camera_tensors", "GsplatUnavailable"]

Backend = Literal["auto", "gsplat", "torch"]
log = logging.getLogger(__name__)
_warned_fallback = False


def available_backends() -> list[str]:
    """Backends that can run here ("torch" always; "gsplat" when CUDA + its extension work)."""
    return ["gsplat", "torch"] if gsplat_status()[0] else ["torch"]


def select_backend(backend: Backend, device: torch.device, dtype: torch.dtype) -> str:
    """Resolve ``backend`` for tensors on ``device`` (see module docstring for the rules)."""
    global _warned_fallback
    if backend == "torch":
        return "torch"
    if backend == "gsplat":
        if device.type != "cuda":
            raise GsplatUnavailable(f"gsplat backend needs CUDA tensors, got device {device}")
        ok, reason = gsplat_status()
        if not ok:
            raise GsplatUnavailable(f"gsplat backend unavailable: {reason}")
        return "gsplat"
    if backend != "auto":
        raise ValueError(f"backend must be 'auto', 'gsplat' or 'torch', got {backend!r}")
    if device.type != "cuda" or dtype != torch.float32:
        return "torch"
    ok, reason = gsplat_status()
    if ok:
        return "gsplat"
    if os.environ.get("EVALKIT_REQUIRE_GSPLAT") == "1":
        raise GsplatUnavailable(f"EVALKIT_REQUIRE_GSPLAT=1 but gsplat is unavailable: {reason}")
    if not _warned_fallback:
        log.warning("gsplat unavailable on CUDA (%s); falling back to the slow torch rasteriser",
                    reason)
        _warned_fallback = True
    return "torch"


def camera_tensors(camera: "Camera", device: torch.device | str = "cpu",
                   dtype: torch.dtype = torch.float32) -> tuple[Tensor, Tensor]:
    """``(viewmat (4, 4), K (3, 3))`` tensors for a ``Camera`` (conventions unchanged)."""
    return (torch.as_tensor(np.asarray(camera.w2c), dtype=dtype, device=device),
            torch.as_tensor(np.asarray(camera.K), dtype=dtype, device=device))


def check_intrinsics(K) -> None:
    """K must be (3, 3) [[fx, 0, cx], [0, fy, cy], [0, 0, 1]] (gsplat's pinhole model, no skew)."""
    k = np.asarray(K.detach().cpu() if isinstance(K, Tensor) else K, dtype=np.float64)
    _check(k.shape == (3, 3), f"K must be (3, 3), got {k.shape}")
    _check(k[0, 1] == 0 and k[1, 0] == 0 and bool(np.all(k[2] == [0, 0, 1])),
           f"K must be [[fx, 0, cx], [0, fy, cy], [0, 0, 1]] (no skew), got {k.tolist()}")


def _check(cond: bool, problem: str) -> None:
    if not cond:
        raise ValueError(f"rasterize: {problem}")


def _shape(*parts) -> str:
    return "(" + ", ".join(str(p) for p in parts) + ("," if len(parts) == 1 else "") + ")"


def _checked(means, quats, scales, opacities, colors, viewmat, K, width, height, sh_degree, background,
             near, far, *, views: bool) -> tuple[Tensor, Tensor, Tensor | None]:
    """The checks of ``rasterize`` (``views=False``: one view) and ``rasterize_views`` (a leading
    view axis B on every input). Returns ``(viewmat, K, background)`` as tensors like ``means``."""
    for name, t in (("means", means), ("quats", quats), ("scales", scales),
                    ("opacities", opacities), ("colors", colors)):
        _check(isinstance(t, Tensor), f"{name} must be a torch.Tensor, got {type(t).__name__}")
        _check(t.is_floating_point(), f"{name} must be floating point, got {t.dtype}")
        _check(t.device == means.device, f"{name} is on {t.device} but means is on {means.device}")
        _check(t.dtype == means.dtype, f"{name} has dtype {t.dtype} but means has {means.dtype}")
    lead = ("B",) if views else ()
    ok = means.dim() == len(lead) + 2 and means.shape[-1] == 3
    _check(ok, f"means must be {_shape(*lead, 'N', 3)}, got {tuple(means.shape)}")
    lead = tuple(means.shape[:-2])
    n = means.shape[-2]
    _check(quats.shape == (*lead, n, 4), f"quats must be {_shape(*lead, n, 4)}, got {tuple(quats.shape)}")
    _check(scales.shape == (*lead, n, 3), f"scales must be {_shape(*lead, n, 3)}, got {tuple(scales.shape)}")
    _check(opacities.shape == (*lead, n), f"opacities must be {_shape(*lead, n)}, got {tuple(opacities.shape)}")
    head = colors.shape[:len(lead) + 1]
    if sh_degree is None:
        _check(colors.dim() == len(lead) + 2 and head == (*lead, n),
               f"colors must be {_shape(*lead, n, 'D')} without sh_degree, got {tuple(colors.shape)}")
    else:
        k = num_sh_bases(sh_degree)
        _check(colors.dim() == len(lead) + 3 and head == (*lead, n) and colors.shape[-2] >= k
               and colors.shape[-1] == 3,
               f"colors must be {_shape(*lead, n, f'K>={k}', 3)} SH coefficients for sh_degree={sh_degree}, "
               f"got {tuple(colors.shape)}")
    _check(int(width) == width and int(height) == height and width > 0 and height > 0,
           f"width/height must be positive integers, got {width}x{height}")
    _check(0 < near < far, f"need 0 < near < far, got near={near}, far={far}")
    viewmat = torch.as_tensor(viewmat, dtype=means.dtype, device=means.device)
    if not (isinstance(K, Tensor) and K.is_cuda):
        # Checked on the host only: reading a CUDA tensor's values would stall the GPU queue on
        # every render (callers that keep K on the GPU, like the 4DGS models, check it once).
        for k_view in (K if views and np.ndim(K) == 3 else [K]):
            check_intrinsics(k_view)
    K = torch.as_tensor(K, dtype=means.dtype, device=means.device)
    _check(viewmat.shape == (*lead, 4, 4), f"viewmat must be {_shape(*lead, 4, 4)}, got {tuple(viewmat.shape)}")
    _check(K.shape == (*lead, 3, 3), f"K must be {_shape(*lead, 3, 3)}, got {tuple(K.shape)}")
    d = colors.shape[-1]
    if background is not None:
        background = torch.as_tensor(background, dtype=means.dtype, device=means.device)
        _check(background.shape == (d,), f"background must be ({d},), got {tuple(background.shape)}")
    return viewmat, K, background


def rasterize(means: Tensor, quats: Tensor, scales: Tensor, opacities: Tensor, colors: Tensor,
              viewmat: Tensor | np.ndarray, K: Tensor | np.ndarray, width: int, height: int, *,
              sh_degree: int | None = None, background: Tensor | np.ndarray | None = None,
              near: float = 0.01, far: float = 1e10, backend: Backend = "auto",
              absgrad: bool = False, packed: bool = False,
              antialiased: bool = False) -> RenderOutput:
    """Render N 3D Gaussians into one (height, width) view.

    Args:
        means: (N, 3) world positions. quats: (N, 4) (w, x, y, z), any norm (normalised here).
        scales: (N, 3) actual scales (already exp'd). opacities: (N,) in [0, 1] (already sigmoid'ed).
        colors: (N, D) colours, or (N, K, 3) SH coefficients when ``sh_degree`` is set
            (colour = max(SH(dir) + 0.5, 0), dir = mean - camera centre, as 3DGS/gsplat).
        viewmat: (4, 4) world-to-camera, OpenCV axes. K: (3, 3) intrinsics, pixel centres at
            +0.5 (``evalkit.data.scene`` convention); skew must be 0 (gsplat ignores it).
        background: (D,) colour added as ``T_final * background``; None = black.
        absgrad/packed/antialiased: as in gsplat.rasterization (``antialiased`` is its
            ``rasterize_mode="antialiased"``).
    Returns:
        RenderOutput with image (H, W, D), alpha (H, W, 1), gsplat-compatible info.
    """
    viewmat, K, background = _checked(means, quats, scales, opacities, colors, viewmat, K, width, height,
                                      sh_degree, background, near, far, views=False)
    kwargs = dict(sh_degree=sh_degree, background=background, near=near, far=far,
                  absgrad=absgrad, packed=packed, antialiased=antialiased)
    chosen = select_backend(backend, means.device, means.dtype)
    fn = rasterize_gsplat if chosen == "gsplat" else rasterize_torch
    return fn(means, quats, scales, opacities, colors, viewmat, K, int(width), int(height), **kwargs)


def rasterize_views(means: Tensor, quats: Tensor, scales: Tensor, opacities: Tensor, colors: Tensor,
                    viewmats: Tensor, Ks: Tensor, width: int, height: int, *,
                    sh_degree: int | None = None, background: Tensor | None = None,
                    near: float = 0.01, far: float = 1e10, backend: Backend = "auto") -> ViewsOutput:
    """Render B views of one size, view b from its own Gaussians (a dynamic scene deformed to
    view b's time): ``means`` (B, N, 3), ``quats`` (B, N, 4), ``scales`` (B, N, 3),
    ``opacities`` (B, N), ``colors`` (B, N, D) or (B, N, K, 3) SH, ``viewmats`` (B, 4, 4) and
    ``Ks`` (B, 3, 3) on the Gaussians' device (CUDA ``Ks`` are not read back to be checked, as in
    ``rasterize``). Each view is what ``rasterize`` gives for it; gsplat renders all of them in one
    call. No ``absgrad`` / ``packed`` / antialiased modes here (the trainer needs none)."""
    viewmats, Ks, background = _checked(means, quats, scales, opacities, colors, viewmats, Ks, width, height,
                                        sh_degree, background, near, far, views=True)
    b = means.shape[0]
    chosen = select_backend(backend, means.device, means.dtype)
    if chosen == "gsplat":
        return rasterize_views_gsplat(means, quats, scales, opacities, colors, viewmats, Ks, int(width),
                                      int(height), sh_degree=sh_degree, background=background,
                                      near=near, far=far)
    outs = [rasterize_torch(means[i], quats[i], scales[i], opacities[i], colors[i], viewmats[i], Ks[i],
                            int(width), int(height), sh_degree=sh_degree, background=background,
                            near=near, far=far) for i in range(b)]
    return ViewsOutput(images=torch.stack([o.image for o in outs]), alphas=torch.stack([o.alpha for o in outs]),
                       infos=[o.info for o in outs], backend="torch")
