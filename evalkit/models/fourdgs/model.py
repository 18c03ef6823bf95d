"""A trained (or decoded) 4DGS scene: canonical Gaussians + deformation field."""
from __future__ import annotations

import warnings

import numpy as np
import torch
import torch.nn as nn
from scipy.spatial import cKDTree

from evalkit.data.scene import Camera, PointCloud
from evalkit.models.fourdgs.deformation import DeformationConfig, DeformationField
from evalkit.render import RenderOutput, rasterize
from evalkit.render.api import ViewsOutput, check_intrinsics, rasterize_views
from evalkit.render.frame_graph import FrameGraph

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
    # copies (torch.tensor, not as_tensor): on the CPU a float32 array would be shared, and training
    # would move the scene's own points (the runner keeps one Scene for all jobs of a scene)
    t = lambda a: torch.tensor(a, dtype=torch.float32, device=device)
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
                 background: torch.Tensor, near_plane: float) -> None:
        super().__init__()
        self.gaussians = gaussians
        self.deformation = deformation
        self.sh_degree = sh_degree
        self.near_plane = near_plane  # FourDGSConfig.near_plane: in training and in every render
        self.register_buffer("background", background.float().reshape(3))
        self._graphed: FrameGraph | None = None
        self._cameras: dict[int, tuple[Camera, torch.Tensor, torch.Tensor]] = {}

    def training_flags(self) -> dict:
        """Training state outside ``state_dict`` (host-side flags) that a checkpoint keeps. None here."""
        return {}

    def restore_training_flags(self, flags: dict) -> None:
        """Set what ``training_flags`` returned (a resumed checkpoint)."""

    def freeze_for_rendering(self) -> None:
        """For a decoded (never again trained) model on CUDA: capture the deformation as a CUDA
        graph and keep camera matrices on the device. Renders are unchanged (tested)."""
        self.requires_grad_(False)
        if self.device.type == "cuda":
            try:
                self._graphed = FrameGraph(self.activated, self.device)
            except RuntimeError as exc:  # rendering stays correct, only slower
                warnings.warn(f"CUDA-graph capture of the deformation failed ({exc}); rendering eagerly")
                self._graphed = None

    def _camera_tensors(self, camera: Camera) -> tuple[torch.Tensor, torch.Tensor]:
        hit = self._cameras.get(id(camera))
        if hit is None or hit[0] is not camera:
            check_intrinsics(camera.K)  # once per camera, on the host
            dev = self.device
            hit = (camera, torch.as_tensor(camera.w2c, dtype=torch.float32, device=dev),
                   torch.as_tensor(camera.K, dtype=torch.float32, device=dev))
            if len(self._cameras) > 4096:
                self._cameras.clear()
            self._cameras[id(camera)] = hit
        return hit[1], hit[2]

    @property
    def device(self) -> torch.device:
        return self.gaussians["means"].device

    def num_primitives(self) -> int:
        return int(self.gaussians["means"].shape[0])

    def canonical_sh(self) -> torch.Tensor:
        """(N, K, 3) SH coefficients. A compressed variant overrides this (e.g. vector-quantised SH)."""
        return torch.cat([self.gaussians["sh0"], self.gaussians["shN"]], dim=1)

    def deformed(self, t: float, deform: bool = True):
        g = self.gaussians
        sh = self.canonical_sh()
        if not deform:
            return g["means"], g["quats"], g["scales"], g["opacities"], sh
        d = self.deformation(g["means"], g["scales"], g["quats"], g["opacities"], sh, t)
        return d.means, d.quats, d.log_scales, d.opacity_logits, d.sh

    def activated(self, t, deform: bool = True):
        """(means, quats, scales, opacities, sh) ready for the rasteriser at time t."""
        means, quats, log_scales, opa_logits, sh = self.deformed(t, deform)
        return means, quats, torch.exp(log_scales), torch.sigmoid(opa_logits), sh

    def rasterize(self, camera: Camera, t: float, *, deform: bool = True, sh_degree: int | None = None,
                  **kwargs) -> RenderOutput:
        if self._graphed is not None and deform and not torch.is_grad_enabled():
            means, quats, scales, opacities, sh = self._graphed(t)
        else:
            means, quats, scales, opacities, sh = self.activated(t, deform)
        viewmat, K = self._camera_tensors(camera)
        return rasterize(means, quats, scales, opacities, sh, viewmat, K, camera.width, camera.height,
                         sh_degree=self.sh_degree if sh_degree is None else sh_degree,
                         background=self.background, **{"near": self.near_plane, **kwargs})

    def deformed_views(self, times: torch.Tensor, deform: bool = True):
        """``deformed`` at B times at once: (B, N, ...) tensors. One deformation-field call on
        B x N points (per-point times) instead of B calls."""
        g = self.gaussians
        sh = self.canonical_sh()
        b = times.shape[0]
        attrs = (g["means"], g["quats"], g["scales"], g["opacities"], sh)
        if not deform:
            return tuple(a.expand(b, *a.shape).contiguous() for a in attrs)
        n = attrs[0].shape[0]
        rep = [a.repeat(b, *([1] * (a.dim() - 1))) for a in attrs]
        t = times.to(rep[0].dtype)[:, None].expand(b, n).reshape(-1)
        d = self.deformation(rep[0], rep[2], rep[1], rep[3], rep[4], t)
        out = (d.means, d.quats, d.log_scales, d.opacity_logits, d.sh)
        return tuple(x.reshape(b, n, *x.shape[1:]) for x in out)

    def rasterize_views(self, cameras: list[Camera], times: torch.Tensor, *, deform: bool = True,
                        sh_degree: int | None = None) -> ViewsOutput:
        """Views of one size at their own times (``times`` (B,) on the model's device), rendered
        together: the same images as ``rasterize`` view by view, in fewer kernel launches."""
        sizes = {(c.width, c.height) for c in cameras}
        if len(sizes) != 1:
            raise ValueError(f"rasterize_views needs views of one size, got {sorted(sizes)}")
        means, quats, log_scales, opa_logits, sh = self.deformed_views(times, deform)
        mats = [self._camera_tensors(c) for c in cameras]
        viewmats, Ks = torch.stack([m[0] for m in mats]), torch.stack([m[1] for m in mats])
        return rasterize_views(means, quats, torch.exp(log_scales), torch.sigmoid(opa_logits), sh, viewmats, Ks,
                               cameras[0].width, cameras[0].height,
                               sh_degree=self.sh_degree if sh_degree is None else sh_degree,
                               background=self.background, near=self.near_plane)

    @torch.no_grad()
    def render(self, camera: Camera, t: float) -> torch.Tensor:
        return self.rasterize(camera, t).image.clamp(0.0, 1.0)
