"""gsplat (CUDA) backend: a thin call of ``gsplat.rasterization`` (1.5.x API).

gsplat's pure-python parts import on any machine, but its kernels live in a CUDA extension
that is JIT-compiled (nvcc, a few minutes) on first use and cached in torch's extension
folder. ``gsplat_status`` finds out, once per process, whether that works here.
"""
from __future__ import annotations

import functools

import torch
from torch import Tensor

from evalkit.render.output import RenderOutput, ViewsOutput
from evalkit.render.sh import camera_centres


# True: SH colours from ``_sh_colors`` (no per-render device sync); False: gsplat's own step
# (benchmarks compare the two; the images and gradients are the same, a GPU test checks).
OWN_SH_STEP = True


class GsplatUnavailable(RuntimeError):
    """gsplat was asked for but cannot run here (the message says why)."""


@functools.lru_cache(maxsize=1)
def gsplat_status() -> tuple[bool, str]:
    """``(usable, reason)``. Usable means CUDA is present, gsplat 1.5.x imports and its
    CUDA extension loads (building it the first time, which may take minutes)."""
    if not torch.cuda.is_available():
        return False, "no CUDA device (gsplat's kernels are CUDA-only)"
    try:
        import gsplat
    except Exception as exc:  # ImportError, or a broken install raising anything else
        return False, f"cannot import gsplat: {type(exc).__name__}: {exc}"
    version = getattr(gsplat, "__version__", "?")
    if not version.startswith("1.5."):
        return False, f"gsplat {version} installed, evalkit needs 1.5.x"
    try:
        from gsplat.cuda._backend import _C  # triggers the JIT build on first use
    except Exception as exc:
        return False, f"gsplat's CUDA extension failed to build/load: {type(exc).__name__}: {exc}"
    if _C is None:
        return False, "gsplat's CUDA extension is unavailable (no CUDA toolkit/nvcc found to build it)"
    return True, f"gsplat {version}"


def _rasterization(means: Tensor):
    """gsplat's ``rasterization``, once it is known to run here on ``means``' dtype."""
    ok, reason = gsplat_status()
    if not ok:
        raise GsplatUnavailable(f"gsplat backend unavailable: {reason}")
    if means.dtype != torch.float32:
        raise ValueError(f"gsplat backend needs float32 tensors, got {means.dtype}; "
                         "use backend='torch' for other precisions")
    from gsplat import rasterization

    return rasterization


def _sh_colors(means: Tensor, coeffs: Tensor, viewmats: Tensor, sh_degree: int) -> Tensor:
    """gsplat's own colour step for SH coefficients (``rasterization(sh_degree=...)``), without
    its ``torch.inverse`` of the view matrices: that launches a batched LU and reads its error
    flag back, a device sync on every render, in a training step bound by host-side work. The
    camera centre is ``sh.camera_centres`` (-R^T t, as the PyTorch reference renderer's). gsplat evaluates only the Gaussians inside the view; this evaluates all of them: the
    rasteriser reads only the visible ones' colours, so images and gradients are the same. (A
    Gaussian exactly at the camera centre, culled by gsplat, would give a zero direction here and a
    NaN direction gradient; a float match that exact is not guarded against.)
    ``means`` (..., N, 3), ``coeffs`` (..., N, K, 3), ``viewmats`` (..., C, 4, 4) -> (..., C, N, 3)."""
    from gsplat import spherical_harmonics

    dirs = means[..., None, :, :] - camera_centres(viewmats)[..., None, :]  # (..., C, N, 3)
    shs = coeffs[..., None, :, :, :].expand(dirs.shape[:-1] + coeffs.shape[-2:])
    return torch.clamp_min(spherical_harmonics(sh_degree, dirs, shs) + 0.5, 0.0)  # as gsplat (Inria's +0.5)


def rasterize_gsplat(means: Tensor, quats: Tensor, scales: Tensor, opacities: Tensor,
                     colors: Tensor, viewmat: Tensor, K: Tensor, width: int, height: int, *,
                     sh_degree: int | None = None, background: Tensor | None = None,
                     near: float = 0.01, far: float = 1e10, absgrad: bool = False,
                     packed: bool = False, antialiased: bool = False) -> RenderOutput:
    """The gsplat backend of ``evalkit.render.rasterize`` (inputs already validated)."""
    rasterization = _rasterization(means)

    # gsplat 1.5.3 rejects backgrounds in packed mode (rasterize_to_pixels asserts a
    # background of shape means2d.shape[:-2] + (D,) = (D,), but rasterization passes (C, D)).
    # Its kernel adds T_final * background, and alpha = 1 - T_final, so add it here instead.
    bg_after = background is not None and packed
    if sh_degree is not None and OWN_SH_STEP:
        colors, sh_degree = _sh_colors(means, colors, viewmat[None], sh_degree), None
    render, alpha, meta = rasterization(
        means, quats, scales, opacities, colors, viewmat[None], K[None], width, height,
        near_plane=near, far_plane=far, sh_degree=sh_degree, packed=packed, absgrad=absgrad,
        backgrounds=None if background is None or bg_after else background[None],
        rasterize_mode="antialiased" if antialiased else "classic")
    if bg_after:
        render = render + (1.0 - alpha) * background
    if meta["means2d"].requires_grad:
        meta["means2d"].retain_grad()
    return RenderOutput(image=render[0], alpha=alpha[0], info=meta, backend="gsplat")


def rasterize_views_gsplat(means: Tensor, quats: Tensor, scales: Tensor, opacities: Tensor,
                           colors: Tensor, viewmats: Tensor, Ks: Tensor, width: int, height: int, *,
                           sh_degree: int | None = None, background: Tensor | None = None,
                           near: float = 0.01, far: float = 1e10) -> ViewsOutput:
    """B views, each of its own Gaussians (leading axis B), in one gsplat call (its batch
    dimensions): one projection / sort / rasterisation launch sequence instead of B."""
    rasterization = _rasterization(means)

    b = means.shape[0]
    if sh_degree is not None and OWN_SH_STEP:
        colors, sh_degree = _sh_colors(means, colors, viewmats[:, None], sh_degree), None
    render, alpha, meta = rasterization(
        means, quats, scales, opacities, colors, viewmats[:, None], Ks[:, None], width, height,
        near_plane=near, far_plane=far, sh_degree=sh_degree, packed=False,
        backgrounds=None if background is None else background.expand(b, 1, background.shape[-1]),
        rasterize_mode="classic")
    if meta["means2d"].requires_grad:
        meta["means2d"].retain_grad()
    return ViewsOutput(images=render[:, 0], alphas=alpha[:, 0], infos=[meta], backend="gsplat")
