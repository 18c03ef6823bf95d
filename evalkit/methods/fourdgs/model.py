"""A trained (or decoded) 4DGS scene: canonical Gaussians + deformation field."""
from __future__ import annotations

import numpy as np
import torch
import torch.nn as nn
from scipy.spatial import cKDTree

from evalkit.data.scene import Camera, PointCloud
from evalkit.methods.fourdgs.deformation import DeformationConfig, DeformationField
from evalkit.render import RenderOutput, rasterize

C0 = 0.28209479177387814  # SH band-0 constant


def rgb_to_sh0(rgb: torch.Tensor) -> torch.Tensor:
    return (rgb - 0.5) / C0


def init_gaussians(points: PointCloud, sh_degree: int, device: torch.device) -> nn.ParameterDict:
    """3DGS initialisation: scales from the mean distance to the 3 nearest neighbours,
    identity rotations, opacity 0.1, colour from the points (grey if they have none)."""
    xyz = np.asarray(points.xyz, dtype=np.float32)
    n = xyz.shape[0]
    if n == 0:
        raise ValueError("cannot initialise Gaussians from an empty point cloud")
    k = min(4, n)
    if n > 1:
        d, _ = cKDTree(xyz).query(xyz, k=k)
        mean_sq = np.mean(np.square(d[:, 1:]), axis=1)
    else:
        mean_sq = np.ones(1)
    log_scales = np.log(np.sqrt(np.clip(mean_sq, 1e-7, None)))[:, None].repeat(3, 1)
    rgb = np.asarray(points.rgb, dtype=np.float32) if points.rgb is not None else np.full((n, 3), 0.5, np.float32)
    quats = np.zeros((n, 4), np.float32)
    quats[:, 0] = 1.0
    K = (sh_degree + 1) ** 2
    t = lambda a: torch.as_tensor(a, dtype=torch.float32, device=device)
    return nn.ParameterDict({
        "means": nn.Parameter(t(xyz)),
        "scales": nn.Parameter(t(log_scales)),
        "quats": nn.Parameter(t(quats)),
        "opacities": nn.Parameter(torch.logit(torch.full((n,), 0.1, device=device))),
        "sh0": nn.Parameter(rgb_to_sh0(t(rgb))[:, None, :]),
        "shN": nn.Parameter(torch.zeros((n, K - 1, 3), device=device)),
    })


class FourDGSModel(nn.Module):
    """Renders the scene at time t. ``deform=False`` renders the canonical (coarse-stage) set."""

    def __init__(self, gaussians: nn.ParameterDict, deformation: DeformationField, sh_degree: int,
                 background: torch.Tensor) -> None:
        super().__init__()
        self.gaussians = gaussians
        self.deformation = deformation
        self.sh_degree = sh_degree
        self.register_buffer("background", background.float().reshape(3))

    @property
    def device(self) -> torch.device:
        return self.gaussians["means"].device

    def num_primitives(self) -> int:
        return int(self.gaussians["means"].shape[0])

    def deformed(self, t: float, deform: bool = True):
        g = self.gaussians
        sh = torch.cat([g["sh0"], g["shN"]], dim=1)
        if not deform:
            return g["means"], g["quats"], g["scales"], g["opacities"], sh
        d = self.deformation(g["means"], g["scales"], g["quats"], g["opacities"], sh, t)
        return d.means, d.quats, d.log_scales, d.opacity_logits, d.sh

    def rasterize(self, camera: Camera, t: float, *, deform: bool = True, sh_degree: int | None = None,
                  **kwargs) -> RenderOutput:
        means, quats, log_scales, opa_logits, sh = self.deformed(t, deform)
        dev = means.device
        return rasterize(
            means, quats, torch.exp(log_scales), torch.sigmoid(opa_logits), sh,
            torch.as_tensor(camera.w2c, dtype=torch.float32, device=dev),
            torch.as_tensor(camera.K, dtype=torch.float32, device=dev),
            camera.width, camera.height,
            sh_degree=self.sh_degree if sh_degree is None else sh_degree,
            background=self.background, **kwargs)

    @torch.no_grad()
    def render(self, camera: Camera, t: float) -> torch.Tensor:
        return self.rasterize(camera, t).image.clamp(0.0, 1.0)
