"""Anchor refinement with temporal significance (paper Sec. 3.5, Eq. 11).

Statistics per primitive over the frames rendered since the last refinement:
grad_k = sum_t Psi(k, t) ||grad_{k,t}|| / sum_t Psi(k, t), Psi(k, t) = sum over pixels of the
primitive's alpha-blending weight alpha T in that render (paper, after [Huang 2024]). ||grad_{k,t}||
is the 2D position gradient in the units of the 3DGS rasteriser (pixels x W/2, H/2; as the 4dgs
trainer's densification statistics). ``temporal_significance = false`` uses the plain mean over
the frames where the primitive is visible (the code's behaviour, variant ``wo-ts``).

Psi comes from the training render itself (choice, instead of a second render with detached
geometry and unit colours): a fourth colour channel of ones over a zero background is rendered
and PSI_EPS x its pixel sum is added to the loss, so that channel's colour gradient is exactly
PSI_EPS x Psi while every other gradient moves by a relative ~1e-4 at most.

Growing: a primitive with grad_k >= tau_g becomes an anchor at its canonical position, inheriting
its parent's f_v, f_g and Sigma_v, with C_v = C_k (paper: "inherit latent features, keep own
Gaussian attributes"); one new anchor per voxel of ``grow_voxel`` that holds no anchor yet
(choice, Scaffold-GS's rule: the paper and code add every such primitive, which multiplied the
anchors tenfold within a few refinements on the synthetic scene). Pruning: anchors whose K primitives' opacities, summed per frame and
averaged over the frames the anchor was visible in, stay under tau_o (paper: accumulated
opacity; choice: Scaffold-GS's accumulation, visible in > 0.8 x interval frames). "Visible" for
pruning is "in the view frustum" (a primitive's mean in front of the near plane and inside the
image; Scaffold-GS's anchor visibility), not the rasteriser's radii > 0: the rasteriser culls
primitives under opacity 1/255, so an anchor counted only when drawn always summed >= 1/255 >
tau_o and was never pruned. Statistics reset after each refinement.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

PSI_EPS = 2.0 ** -32


@torch.no_grad()
def in_frustum(means: Tensor, viewmat: Tensor, K: Tensor, width: int, height: int, near: float) -> Tensor:
    """(M,) bool: the points ``means`` (M, 3) lie in front of the near plane and project inside
    the ``width`` x ``height`` image of the camera (``viewmat`` world-to-camera, OpenCV axes; ``K``
    pinhole intrinsics, pixel centres at +0.5 as the rasteriser's)."""
    pc = means @ viewmat[:3, :3].T + viewmat[:3, 3]
    z = pc[:, 2]
    zs = z.clamp_min(1e-12)
    u = K[0, 0] * pc[:, 0] / zs + K[0, 2]
    v = K[1, 1] * pc[:, 1] / zs + K[1, 2]
    return (z > near) & (u >= 0) & (u < width) & (v >= 0) & (v < height)


@dataclass
class RefineStats:
    num_anchors: int
    k: int
    device: torch.device

    def __post_init__(self) -> None:
        self.reset(self.num_anchors)

    def reset(self, num_anchors: int) -> None:
        m = num_anchors * self.k
        z = lambda n: torch.zeros(n, device=self.device)
        self.num_anchors = num_anchors
        self.psi_grad, self.psi = z(m), z(m)     # Eq. 11 numerator / denominator
        self.grad, self.seen = z(m), z(m)        # plain mean ("wo-ts")
        self.opacity, self.anchor_seen = z(num_anchors), z(num_anchors)
        self.frames = 0

    def to(self, device: torch.device | str) -> "RefineStats":
        """These statistics with every tensor on ``device`` (in place; for snapshots)."""
        self.device = torch.device(device)
        for name in ("psi_grad", "psi", "grad", "seen", "opacity", "anchor_seen"):
            setattr(self, name, getattr(self, name).to(self.device))
        return self

    @torch.no_grad()
    def add(self, grad2d: Tensor, radii: Tensor, psi: Tensor, opacities: Tensor, width: int, height: int,
            in_view: Tensor) -> None:
        """One rendered frame: ``grad2d`` (M, 2) pixel-space position gradient, ``radii`` (M, 2),
        ``psi`` (M,) blending weights, ``opacities`` (M,) of the frame's primitives, ``in_view``
        (M,) whether each primitive's mean is in the view frustum (``in_frustum``)."""
        g = torch.hypot(grad2d[:, 0] * (width / 2.0), grad2d[:, 1] * (height / 2.0))
        visible = (radii > 0).all(dim=-1)
        self.psi_grad += psi * g
        self.psi += psi
        self.grad += g * visible
        self.seen += visible
        vis_anchor = in_view.view(-1, self.k).any(dim=1)
        self.opacity += opacities.view(-1, self.k).sum(dim=1) * vis_anchor
        self.anchor_seen += vis_anchor
        self.frames += 1

    def significance(self, temporal: bool) -> Tensor:
        if temporal:
            return torch.where(self.psi > 0, self.psi_grad / self.psi.clamp_min(1e-30), torch.zeros_like(self.psi))
        return torch.where(self.seen > 0, self.grad / self.seen.clamp_min(1), torch.zeros_like(self.grad))

    def prune_mask(self, tau_o: float, min_seen: float) -> Tensor:
        mean = self.opacity / self.anchor_seen.clamp_min(1)
        return (self.anchor_seen > min_seen) & (mean < tau_o)

