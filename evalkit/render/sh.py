"""Real spherical harmonics, in the basis order, signs and constants of 3DGS / gsplat.

gsplat 1.5.3 (``cuda/csrc/SphericalHarmonicsCUDA.cu``, Sloan's "Efficient Spherical
Harmonic Evaluation") evaluates, for a unit direction ``(x, y, z)``::

    degree 0:  C0
    degree 1:  -C1*y, C1*z, -C1*x
    degree 2..4: the Sloan polynomials written out below

and ``rasterization()`` turns the SH sum into a colour with ``clamp_min(sum + 0.5, 0)``.
The direction is ``mean - camera_centre``, normalised. Everything here is plain torch,
so it is differentiable with respect to the coefficients and the direction.
"""
from __future__ import annotations

import torch
from torch import Tensor

SH_C0 = 0.28209479177387814  # 1 / (2 sqrt(pi))
SH_C1 = 0.4886025119029199  # sqrt(3 / (4 pi))
MAX_SH_DEGREE = 4


def num_sh_bases(degree: int) -> int:
    """Number of SH coefficients per colour channel for ``degree`` (0..4)."""
    if not 0 <= degree <= MAX_SH_DEGREE:
        raise ValueError(f"SH degree must be in 0..{MAX_SH_DEGREE}, got {degree}")
    return (degree + 1) ** 2


def sh_bases(degree: int, dirs: Tensor) -> Tensor:
    """SH basis values ``(..., (degree+1)**2)`` at unit directions ``dirs`` (..., 3)."""
    n = num_sh_bases(degree)
    out = [torch.full_like(dirs[..., 0], SH_C0)]
    if degree >= 1:
        x, y, z = dirs.unbind(-1)
        out += [-SH_C1 * y, SH_C1 * z, -SH_C1 * x]
    if degree >= 2:
        z2 = z * z
        fc1 = x * x - y * y
        fs1 = 2.0 * x * y
        tmp_b = -1.092548430592079 * z
        sh6 = 0.9461746957575601 * z2 - 0.3153915652525201
        out += [0.5462742152960395 * fs1, tmp_b * y, sh6, tmp_b * x, 0.5462742152960395 * fc1]
    if degree >= 3:
        fc2 = x * fc1 - y * fs1
        fs2 = x * fs1 + y * fc1
        tmp_c = -2.285228997322329 * z2 + 0.4570457994644658
        tmp_b = 1.445305721320277 * z
        sh12 = z * (1.865881662950577 * z2 - 1.119528997770346)
        out += [-0.5900435899266435 * fs2, tmp_b * fs1, tmp_c * y, sh12, tmp_c * x,
                tmp_b * fc1, -0.5900435899266435 * fc2]
    if degree >= 4:
        fc3 = x * fc2 - y * fs2
        fs3 = x * fs2 + y * fc2
        tmp_d = z * (-4.683325804901025 * z2 + 2.007139630671868)
        tmp_c = 3.31161143515146 * z2 - 0.47308734787878
        tmp_b = -1.770130769779931 * z
        sh20 = 1.984313483298443 * z * sh12 - 1.006230589874905 * sh6
        out += [0.6258357354491763 * fs3, tmp_b * fs2, tmp_c * fs1, tmp_d * y, sh20, tmp_d * x,
                tmp_c * fc1, tmp_b * fc2, 0.6258357354491763 * fc3]
    assert len(out) == n
    return torch.stack(out, dim=-1)


def eval_sh(degree: int, dirs: Tensor, coeffs: Tensor) -> Tensor:
    """Raw SH sum (no +0.5): ``coeffs`` (..., K, 3) with K >= (degree+1)**2, ``dirs`` (..., 3).

    ``dirs`` need not be normalised (normalised here, like gsplat). Coefficients past
    ``(degree+1)**2`` are ignored, so a degree-3 model can be rendered at degree 1.
    """
    n = num_sh_bases(degree)
    if coeffs.shape[-1] != 3 or coeffs.shape[-2] < n:
        raise ValueError(f"SH coefficients must have shape (..., K>={n}, 3) for degree {degree}, "
                         f"got {tuple(coeffs.shape)}")
    unit = torch.nn.functional.normalize(dirs, dim=-1)
    bases = sh_bases(degree, unit)  # (..., n)
    return (bases.unsqueeze(-1) * coeffs[..., :n, :]).sum(dim=-2)


def camera_centres(viewmats: Tensor) -> Tensor:
    """World position of the camera of each rigid world-to-camera matrix, ``-R^T t``: where the
    SH view directions start. ``viewmats`` (..., 4, 4) -> (..., 3). No matrix inverse (on CUDA
    ``torch.inverse`` reads an error flag back from the device, a sync)."""
    return -(viewmats[..., :3, :3].transpose(-1, -2) @ viewmats[..., :3, 3:])[..., 0]


def sh_to_color(degree: int, dirs: Tensor, coeffs: Tensor) -> Tensor:
    """The colour 3DGS / gsplat render from SH: ``max(sh_sum + 0.5, 0)``."""
    return torch.clamp_min(eval_sh(degree, dirs, coeffs) + 0.5, 0.0)


def rgb_to_sh0(rgb: Tensor) -> Tensor:
    """DC coefficient whose degree-0 colour is ``rgb`` (inverse of ``c * C0 + 0.5``)."""
    return (rgb - 0.5) / SH_C0


def sh0_to_rgb(sh0: Tensor) -> Tensor:
    return sh0 * SH_C0 + 0.5

