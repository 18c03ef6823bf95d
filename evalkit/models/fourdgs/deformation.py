"""The 4DGS deformation field: HexPlane features -> small MLP -> per-attribute deltas.

``feature_out`` is Linear(grid_dim, W) followed by (D - 1) x [ReLU, Linear(W, W)] (so D = 0
and D = 1 both give a single Linear, as in the reference). Each deformed attribute has a head
ReLU-Linear(W, W)-ReLU-Linear(W, out). Deltas are added to the raw (pre-activation)
parameters: position, log-scale, un-normalised quaternion, opacity logit, SH coefficients.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn as nn

from evalkit.models.fourdgs.deformation_mlp import mlp_forward
from evalkit.models.fourdgs.hexplane import HexPlane, HexPlaneConfig

HEAD_DIMS = {"xyz": 3, "scale": 3, "rot": 4, "opacity": 1, "sh": 48}


@dataclass
class DeformationConfig:
    hexplane: HexPlaneConfig = field(default_factory=HexPlaneConfig)
    depth: int = 0  # D
    width: int = 64  # W
    deform: list[str] = field(default_factory=lambda: ["xyz", "scale", "rot"])


@dataclass
class Deformed:
    means: torch.Tensor
    log_scales: torch.Tensor
    quats: torch.Tensor
    opacity_logits: torch.Tensor
    sh: torch.Tensor


class DeformationField(nn.Module):
    # True: the MLP runs as one autograd node (``deformation_mlp``: same products, less host
    # work per step); False: through the modules (the reference for tests and benchmarks).
    fused: bool = True

    def __init__(self, cfg: DeformationConfig, aabb: torch.Tensor) -> None:
        super().__init__()
        unknown = set(cfg.deform) - set(HEAD_DIMS)
        if unknown:
            raise ValueError(f"unknown deformed attribute(s) {sorted(unknown)}; choose from {sorted(HEAD_DIMS)}")
        self.cfg = cfg
        self.grid = HexPlane(cfg.hexplane, aabb)
        W = cfg.width
        layers: list[nn.Module] = [nn.Linear(cfg.hexplane.out_dim, W)]
        for _ in range(cfg.depth - 1):
            layers += [nn.ReLU(), nn.Linear(W, W)]
        self.feature_out = nn.Sequential(*layers)
        self.heads = nn.ModuleDict({
            name: nn.Sequential(nn.ReLU(), nn.Linear(W, W), nn.ReLU(), nn.Linear(W, HEAD_DIMS[name]))
            for name in cfg.deform})
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)  # as the reference; biases keep torch's default init

    def mlp_parameters(self) -> list[nn.Parameter]:
        return list(self.feature_out.parameters()) + list(self.heads.parameters())

    def grid_parameters(self) -> list[nn.Parameter]:
        return list(self.grid.parameters())

    def forward(self, means: torch.Tensor, log_scales: torch.Tensor, quats: torch.Tensor,
                opacity_logits: torch.Tensor, sh: torch.Tensor, t: float) -> Deformed:
        feat = self.grid(means, t)
        bases = {"xyz": means, "scale": log_scales, "rot": quats}  # (N, out): the head's output is added
        if self.fused and self.heads:  # xyz / scale / rot come back with their base added
            out = self._fused_heads(feat, bases)
        else:
            h = self.feature_out(feat)
            out = {name: bases[name] + head(h) if name in bases else head(h) for name, head in self.heads.items()}
        n = means.shape[0]
        return Deformed(
            means=out.get("xyz", means), log_scales=out.get("scale", log_scales), quats=out.get("rot", quats),
            opacity_logits=opacity_logits + out["opacity"][:, 0] if "opacity" in out else opacity_logits,
            sh=sh + out["sh"].view(n, 16, 3)[:, : sh.shape[1]] if "sh" in out else sh,
        )

    def _fused_heads(self, feat: torch.Tensor, bases: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        trunk = [(m.weight, m.bias) for m in self.feature_out if isinstance(m, nn.Linear)]
        heads = [(bases.get(name), (head[1].weight, head[1].bias), (head[3].weight, head[3].bias))
                 for name, head in self.heads.items()]
        return dict(zip(self.heads.keys(), mlp_forward(feat, trunk, heads)))
