"""4DGS hyperparameters. Defaults are the reference's D-NeRF configuration; per-dataset and
per-scene values come from ``methods/4dgs.toml`` (PROTOCOL.md §2)."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any

from evalkit.models.fourdgs.deformation import DeformationConfig
from evalkit.models.fourdgs.hexplane import HexPlaneConfig


NEAR_PLANE_BEFORE_SETTING = 0.01


@dataclass
class FourDGSConfig:
    sh_degree: int = 3
    coarse_iterations: int = 3000
    iterations: int = 20000
    batch_size: int = 1
    # HexPlane + deformation MLP
    feature_dim: int = 32
    resolution: list[int] = field(default_factory=lambda: [64, 64, 64, 25])
    multires: list[int] = field(default_factory=lambda: [1, 2])
    full_time_range: bool = False
    net_depth: int = 0
    net_width: int = 64
    deform: list[str] = field(default_factory=lambda: ["xyz", "scale", "rot"])
    # regularisers
    plane_tv_weight: float = 1e-4
    time_smoothness_weight: float = 1e-2
    l1_time_planes: float = 1e-4
    lambda_dssim: float = 0.0
    # learning rates
    position_lr_init: float = 1.6e-4
    position_lr_final: float = 1.6e-6
    position_lr_max_steps: int = 20000
    deformation_lr_init: float = 1.6e-4
    deformation_lr_final: float = 1.6e-6
    grid_lr_init: float = 1.6e-3
    grid_lr_final: float = 1.6e-5
    feature_lr: float = 0.0025
    opacity_lr: float = 0.05
    scaling_lr: float = 0.005
    rotation_lr: float = 0.001
    # densification
    percent_dense: float = 0.01
    densify_grad_threshold: float = 2e-4
    densify_from_iter: int = 500
    densify_until_iter: int = 15000
    densification_interval: int = 100
    opacity_reset_interval: int = 3000
    prune_opacity: float = 0.005
    densify_below: int = 360000  # the reference densifies only while fewer Gaussians exist
    # Pruning as the reference: clone/split at every refinement, prune only every
    # ``pruning_interval`` steps (from ``pruning_from_iter``, before ``densify_until_iter``) and only
    # while more than ``prune_above`` Gaussians exist. ``prune_at_refine`` prunes at every
    # refinement instead (gsplat's DefaultStrategy behaviour).
    pruning_from_iter: int = 500
    pruning_interval: int = 8000
    prune_above: int = 200000
    prune_at_refine: bool = False
    # Rendering: Gaussians whose centre is nearer to the camera than this (view-space depth) are
    # not drawn. 0.2 as the 3DGS / 4DGaussians rasteriser (its in-frustum test); gsplat's own
    # default is 0.01. It matters where cameras sit in a reconstructed surface (the wall of a
    # capture dome): that surface's Gaussians beside a camera would otherwise cover its view.
    near_plane: float = 0.2

    @classmethod
    def from_dict(cls, d: dict[str, Any], *, source: str = "config") -> "FourDGSConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"{source}: unknown 4DGS option(s) {unknown}")
        return cls(**{k: v for k, v in d.items() if k in known})

    @classmethod
    def from_stored(cls, d: dict[str, Any], *, source: str = "bitstream") -> "FourDGSConfig":
        """The configuration a bitstream stores. Files written before the near plane was a setting
        were trained and evaluated with gsplat's 0.01, and are rendered so."""
        return cls.from_dict({"near_plane": NEAR_PLANE_BEFORE_SETTING, **d}, source=source)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def deformation_config(self) -> DeformationConfig:
        return DeformationConfig(
            hexplane=HexPlaneConfig(feature_dim=self.feature_dim, resolution=list(self.resolution),
                                    multires=list(self.multires), full_time_range=self.full_time_range),
            depth=self.net_depth, width=self.net_width, deform=list(self.deform))

    def scaled_schedule(self, iterations: int | None) -> "FourDGSConfig":
        """The same configuration with ``iterations`` total (coarse + fine) iterations; all step
        counts of the schedules shrink by the same factor. None keeps the protocol schedule."""
        if iterations is None:
            return self
        total = self.coarse_iterations + self.iterations
        f = iterations / total
        s = lambda n: max(1, int(round(n * f)))
        d = self.to_dict()
        d.update(coarse_iterations=s(self.coarse_iterations) if self.coarse_iterations else 0,
                 iterations=iterations - (s(self.coarse_iterations) if self.coarse_iterations else 0),
                 position_lr_max_steps=s(self.position_lr_max_steps), densify_from_iter=s(self.densify_from_iter),
                 densify_until_iter=s(self.densify_until_iter),
                 pruning_from_iter=s(self.pruning_from_iter), pruning_interval=s(self.pruning_interval),
                 # Refining every step on a short schedule would explode the Gaussian count:
                 # keep the protocol interval unless fewer than 5 refinements would remain.
                 densification_interval=min(self.densification_interval,
                                            max(10, s(self.densify_until_iter) // 5)),
                 # An opacity reset needs a few refinements after it to recover.
                 opacity_reset_interval=max(s(self.opacity_reset_interval),
                                            3 * min(self.densification_interval, max(10, s(self.densify_until_iter) // 5))))
        return FourDGSConfig(**d)
