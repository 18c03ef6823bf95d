"""Random Gaussian scenes and look-at cameras, for benchmarks and backend comparisons."""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from evalkit.render.sh import num_sh_bases, rgb_to_sh0


def look_at_w2c(eye: np.ndarray, target: np.ndarray = np.zeros(3),
                up: np.ndarray = np.array([0.0, 1.0, 0.0])) -> np.ndarray:
    """4x4 world-to-camera matrix, OpenCV axes (x right, y down, z towards ``target``)."""
    eye, target, up = (np.asarray(v, dtype=np.float64) for v in (eye, target, up))
    f = target - eye
    f /= np.linalg.norm(f)
    r = np.cross(f, up)
    if np.linalg.norm(r) < 1e-8:
        raise ValueError(f"look_at_w2c: up {up} is parallel to the viewing direction {f}")
    r /= np.linalg.norm(r)
    d = np.cross(f, r)  # camera y (down) = z x x
    w2c = np.eye(4)
    w2c[:3, :3] = np.stack([r, d, f])
    w2c[:3, 3] = -w2c[:3, :3] @ eye
    return w2c


def orbit_cameras(n: int, res: int, distance: float = 3.5, focal_factor: float = 1.0,
                  seed: int = 0) -> list[tuple[np.ndarray, np.ndarray]]:
    """``n`` (w2c, K) pairs on a sphere around the origin, square ``res`` images."""
    rng = np.random.default_rng(seed)
    cams = []
    for i in range(n):
        az = 2 * math.pi * i / max(n, 1) + rng.uniform(-0.2, 0.2)
        el = rng.uniform(-0.5, 0.5)
        eye = distance * np.array([math.cos(el) * math.sin(az), math.sin(el), -math.cos(el) * math.cos(az)])
        f = focal_factor * res
        # Slightly off-centre principal point so that convention errors show up.
        K = np.array([[f, 0.0, res / 2 + 1.3], [0.0, 0.97 * f, res / 2 - 0.7], [0.0, 0.0, 1.0]])
        cams.append((look_at_w2c(eye), K))
    return cams


@dataclass
class GaussianSet:
    means: Tensor  # (N, 3)
    quats: Tensor  # (N, 4)
    scales: Tensor  # (N, 3) actual scales
    opacities: Tensor  # (N,) in (0, 1)
    colors: Tensor  # (N, 3) RGB, or (N, K, 3) SH coefficients
    sh_degree: int | None

    def tensors(self) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
        return self.means, self.quats, self.scales, self.opacities, self.colors

    def requires_grad_(self) -> "GaussianSet":
        for t in self.tensors():
            t.requires_grad_(True)
        return self


def random_gaussians(n: int, *, seed: int = 0, sh_degree: int | None = None,
                     device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32,
                     extent: float = 1.0) -> GaussianSet:
    """``n`` Gaussians in the cube [-extent, extent]^3.

    Scales shrink as n^(-1/3) (about half the mean spacing), so the screen coverage stays
    similar from 1k to 1M Gaussians, as in trained scenes that have more, smaller splats.
    """
    g = torch.Generator().manual_seed(seed)
    spacing = 2 * extent / max(n, 1) ** (1 / 3)
    means = (torch.rand(n, 3, generator=g) * 2 - 1) * extent
    quats = torch.randn(n, 4, generator=g)
    scales = 0.5 * spacing * torch.exp(torch.empty(n, 3).uniform_(-0.7, 0.7, generator=g))
    opacities = torch.empty(n).uniform_(0.05, 0.95, generator=g)
    rgb = torch.rand(n, 3, generator=g)
    if sh_degree is None:
        colors = rgb
    else:
        colors = 0.1 * torch.randn(n, num_sh_bases(sh_degree), 3, generator=g)
        colors[:, 0] = rgb_to_sh0(rgb)
    to = dict(device=device, dtype=dtype)
    return GaussianSet(means.to(**to), quats.to(**to), scales.to(**to), opacities.to(**to),
                       colors.to(**to), sh_degree)
