"""Anchors, the prediction network F_theta (Eq. 1) and the deformed primitives of a frame (Eq. 5).

Anchor v: X_v (3), f_v (N_v), f_g (K x N_g), Sigma_v (6: [0:3] log scale of the offsets, [3:6] log
base scale of the primitives; code), C_v (3). No anchor rotation (paper).
F_theta, per primitive on f_v + f_g[k] (paper: a residual network; code: four residual MLPs,
width 32, LeakyReLU, one residual block, two for colour, linear skip):
X_k = X_v + e^{Sigma_v[0:3]} Delta X_k, scale_k = e^{Sigma_v[3:6]} sigmoid(Delta Sigma_k[:3]),
rot_k = normalise(Delta Sigma_k[3:7] + (1, 0, 0, 0)) (choice: starts near the identity),
C_k = C_v + Delta C_k, O_k an opacity logit.
Eq. 5 with one activation each (choice): X_k,t = X_k + Delta X_v,t; scale_k e^{Delta s_v,t};
normalise(rot_k + Delta q_v,t); sigmoid(O_k + Delta O_k,t); C_k + Delta C_v,t + Delta C_k,t.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from evalkit.methods.adc_gs.config import ADCConfig
from evalkit.methods.adc_gs.deformation import AnchorDeformation, Deformation
from evalkit.methods.adc_gs.mem import MEM
from evalkit.methods.adc_gs.nets import ResidualMLP

FEATURES = ("fv", "fg", "sigma", "color")  # the anchor attributes MEM codes (X_v goes to the geometry coder)


@dataclass
class Primitives:
    means: Tensor      # (N, K, 3)
    quats: Tensor      # (N, K, 4) unit
    scales: Tensor     # (N, K, 3)
    opacity_logits: Tensor  # (N, K)
    colors: Tensor     # (N, K, 3)


class PredictionNet(nn.Module):
    """F_theta (Eq. 1)."""

    def __init__(self, cfg: ADCConfig) -> None:
        super().__init__()
        d = cfg.fv_dim + cfg.fg_dim
        w = cfg.theta_width
        self.offsets = ResidualMLP(d, 3, w, 1)
        self.cov = ResidualMLP(d, 7, w, 1)
        self.opacity = ResidualMLP(d, 1, w, 1)
        self.color = ResidualMLP(d, 3, w, 2)

    def forward(self, xyz: Tensor, feats: dict[str, Tensor]) -> Primitives:
        fv, fg, sigma, color = (feats[k] for k in FEATURES)
        n, k, _ = fg.shape
        x = torch.cat([fv[:, None, :].expand(n, k, -1), fg], dim=-1)
        cov = self.cov(x)
        # + (1, 0, 0, 0) without a host-to-device copy (capturable in a CUDA graph)
        quat = F.normalize(torch.cat([cov[..., 3:4] + 1.0, cov[..., 4:]], dim=-1), dim=-1)
        return Primitives(
            means=xyz[:, None, :] + torch.exp(sigma[:, None, :3]) * self.offsets(x),
            quats=quat,
            scales=torch.exp(sigma[:, None, 3:]) * torch.sigmoid(cov[..., :3]),
            opacity_logits=self.opacity(x)[..., 0],
            colors=color[:, None, :] + self.color(x))


class ADCModel(nn.Module):
    """Anchors + F_theta + the deformation networks. ``features()`` are the raw anchor attributes;
    training replaces them by their noisy / quantised versions before ``canonical``."""

    def __init__(self, cfg: ADCConfig, xyz: Tensor, color: Tensor, sigma: Tensor, time_rows: int,
                 with_mem: bool = False) -> None:
        super().__init__()
        self.cfg = cfg
        n = xyz.shape[0]
        self.xyz = nn.Parameter(xyz.float().clone())
        self.fv = nn.Parameter(torch.zeros(n, cfg.fv_dim, device=xyz.device))
        fg = torch.zeros(n, cfg.k, cfg.fg_dim, device=xyz.device)
        self.fg = nn.Parameter(fg.normal_(0.0, cfg.fg_init_std) if cfg.fg_init_std > 0 else fg)
        self.sigma = nn.Parameter(sigma.float().clone())
        self.color = nn.Parameter(color.float().clone())
        self.theta = PredictionNet(cfg).to(xyz.device)
        self.deform = Deformation(cfg, time_rows).to(xyz.device)
        # the entropy model is trained with the anchors; decoded models have no use for it
        self.mem = MEM(cfg).to(xyz.device) if with_mem and cfg.rate_distortion else None

    ANCHOR_PARAMS = ("xyz", "fv", "fg", "sigma", "color")

    @property
    def num_anchors(self) -> int:
        return self.xyz.shape[0]

    def features(self) -> dict[str, Tensor]:
        return {"fv": self.fv, "fg": self.fg, "sigma": self.sigma, "color": self.color}

    def canonical(self, feats: dict[str, Tensor] | None = None) -> Primitives:
        return self.theta(self.xyz, feats if feats is not None else self.features())

    def at_time(self, prim: Primitives, fv: Tensor, t: float, deform: bool = True) -> Primitives:
        """Eq. 5: the primitives of frame t from the canonical ones (``deform=False``: canonical)."""
        if not deform or self.cfg.deformation == "none":
            return prim
        return deformed(prim, self.deform(self.xyz, fv, t))


def deformed(prim: Primitives, d: AnchorDeformation) -> Primitives:
    """Eq. 5: canonical primitives moved by an anchor deformation."""
    colors = prim.colors + d.dcolor[:, None, :]
    logits = prim.opacity_logits
    if d.dopacity is not None:
        logits = logits + d.dopacity
        colors = colors + d.dcolor_k
    means = prim.means + d.dxyz[:, None, :]
    if d.dxyz_k is not None:  # fine_xyz (diagnostic)
        means = means + d.dxyz_k
    return Primitives(means=means,
                      quats=F.normalize(prim.quats + d.dquat[:, None, :], dim=-1),
                      scales=prim.scales * torch.exp(d.dlog_scale)[:, None, :],
                      opacity_logits=logits, colors=colors)


def flat(prim: Primitives) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """(means, quats, scales, opacities in [0, 1], colours), each flattened over anchors x K."""
    return (prim.means.reshape(-1, 3), prim.quats.reshape(-1, 4), prim.scales.reshape(-1, 3),
            torch.sigmoid(prim.opacity_logits).reshape(-1), prim.colors.reshape(-1, 3))
