"""HexPlane 4D neural voxels as 4DGS uses them (Wu et al. 2024, after Cao & Johnson 2023).

Six planes per scale over the coordinate pairs (x,y) (x,z) (x,t) (y,z) (y,t) (z,t), in
that order (itertools.combinations of (x, y, z, t)). Plane ``(a, b)`` is a parameter of shape
``[1, C, res[b], res[a]]`` so that ``grid_sample`` reads coordinate ``a`` along the width.
Features are multiplied across the six planes of one scale and concatenated across scales.
Multi-resolution scales multiply only the spatial resolutions. Space planes start U(0.1, 0.5),
time planes start at 1 (so an untrained field is the identity deformation's input).

Positions are normalised to [-1, 1] by the AABB of the initial point cloud. Time enters the
grid as the raw t in [0, 1] (the reference implementation's convention, which uses the upper
half of the time axis); ``full_time_range=True`` maps t to [-1, 1] instead.

On CUDA (float32) the lookup runs as fused Triton kernels (``hexplane_triton``, same numbers); the
PyTorch path below is the CPU path and the reference. ``HexPlane.backend`` forces either one.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F

from evalkit.models.fourdgs import hexplane_triton

PLANE_PAIRS: list[tuple[int, int]] = list(itertools.combinations(range(4), 2))
SPACE_PLANES = [i for i, p in enumerate(PLANE_PAIRS) if 3 not in p]  # xy, xz, yz -> 0, 1, 3
TIME_PLANES = [i for i, p in enumerate(PLANE_PAIRS) if 3 in p]  # xt, yt, zt -> 2, 4, 5


@dataclass
class HexPlaneConfig:
    feature_dim: int = 32
    resolution: list[int] = field(default_factory=lambda: [64, 64, 64, 25])  # x, y, z, t
    multires: list[int] = field(default_factory=lambda: [1, 2])
    full_time_range: bool = False

    def plane_shapes(self) -> list[list[tuple[int, int, int, int]]]:
        shapes = []
        for m in self.multires:
            res = [r * m for r in self.resolution[:3]] + [self.resolution[3]]
            shapes.append([(1, self.feature_dim, res[b], res[a]) for a, b in PLANE_PAIRS])
        return shapes

    @property
    def out_dim(self) -> int:
        return self.feature_dim * len(self.multires)


def _stack_if_same_shape(planes: list[torch.Tensor]) -> torch.Tensor | None:
    """Planes concatenated on dim 0 when they share a shape (one kernel instead of three), else None."""
    return torch.cat(planes, 0) if len({tuple(p.shape) for p in planes}) == 1 else None


class HexPlane(nn.Module):
    # "auto": the fused Triton kernels for float32 CUDA tensors (PyTorch if they fail to compile),
    # else PyTorch; "torch" / "triton" force one (benchmarks; "triton" raises instead of falling back).
    backend: str = "auto"

    def __init__(self, cfg: HexPlaneConfig, aabb: torch.Tensor) -> None:
        super().__init__()
        self.cfg = cfg
        # aabb: (2, 3) = [min, max] of the initial point cloud.
        self.register_buffer("aabb", aabb.detach().float().clone().reshape(2, 3))
        # Coordinate pairs as device index tensors: indexing with Python lists would copy an
        # index tensor from the host on every call (a hidden sync, and illegal in CUDA graphs).
        pairs = torch.tensor(PLANE_PAIRS)
        self.register_buffer("_space_pairs", pairs[SPACE_PLANES], persistent=False)  # (3, 2)
        self.register_buffer("_time_pairs", pairs[TIME_PLANES], persistent=False)
        self.grids = nn.ModuleList()
        for shapes in cfg.plane_shapes():
            planes = nn.ParameterList()
            for i, shape in enumerate(shapes):
                p = torch.empty(shape)
                if i in TIME_PLANES:
                    nn.init.ones_(p)
                else:
                    nn.init.uniform_(p, 0.1, 0.5)
                planes.append(nn.Parameter(p))
            self.grids.append(planes)

    def planes(self) -> list[torch.Tensor]:
        return [p for scale in self.grids for p in scale]

    def sampled_planes(self) -> list[list[torch.Tensor]]:
        """The planes ``forward`` samples, per scale. A compressed variant overrides this to
        sample quantised planes (noise / straight-through in training, decoded values after)."""
        return [list(scale) for scale in self.grids]

    def normalise(self, xyz: torch.Tensor) -> torch.Tensor:
        lo, hi = self.aabb[0], self.aabb[1]
        return (xyz - lo) * (2.0 / (hi - lo).clamp_min(1e-8)) - 1.0

    def coords(self, xyz: torch.Tensor, t: torch.Tensor | float) -> torch.Tensor:
        """(N, 4) grid coordinates: positions normalised by the AABB, then the time coordinate."""
        n = xyz.shape[0]
        p = self.normalise(xyz)
        if not torch.is_tensor(t):
            t = torch.full((n,), float(t), device=xyz.device, dtype=xyz.dtype)
        t = t.to(xyz.dtype).reshape(-1).expand(n)  # a 0-d tensor (CUDA-graph input) or (N,)
        if self.cfg.full_time_range:
            t = t * 2.0 - 1.0
        return torch.cat([p, t[:, None]], dim=1)

    def forward(self, xyz: torch.Tensor, t: torch.Tensor | float) -> torch.Tensor:
        """Features (N, out_dim) for points (N, 3) at time t (scalar or (N,))."""
        coords = self.coords(xyz, t)
        scales = self.sampled_planes()
        if self._fused(coords, scales):
            try:
                return hexplane_triton.sample(coords, scales, fallback=self.backend == "auto")
            except Exception as exc:  # noqa: BLE001 - compile/launch failure: same numbers from PyTorch
                if self.backend == "triton":
                    raise
                hexplane_triton.disable(exc)
        return torch.cat([self._product(planes, coords, self._space_pairs, self._time_pairs)
                          for planes in scales], dim=1)

    def _fused(self, coords: torch.Tensor, scales: list[list[torch.Tensor]]) -> bool:
        if self.backend not in ("auto", "torch", "triton"):
            raise ValueError(f"HexPlane.backend must be 'auto', 'torch' or 'triton', not {self.backend!r}")
        if self.backend != "auto":
            return self.backend == "triton"
        f32 = [coords] + [p for planes in scales for p in planes]
        if not all(x.is_cuda and x.dtype == torch.float32 for x in f32):
            return False
        return hexplane_triton.available() and hexplane_triton.failed is None

    @staticmethod
    def _product(planes: list[torch.Tensor], coords: torch.Tensor, space_pairs: torch.Tensor,
                 time_pairs: torch.Tensor) -> torch.Tensor:
        """Product over the six planes of one scale of the bilinearly sampled features, (N, C).
        ``space_pairs`` / ``time_pairs``: the (3, 2) coordinate pairs of the two groups."""
        out = None
        # Planes of one kind usually share a shape within a scale, so they go through one
        # grid_sample call as a batch of three (2 calls per scale instead of 6).
        for group, idx in ((SPACE_PLANES, space_pairs), (TIME_PLANES, time_pairs)):
            xy = coords[:, idx].permute(1, 0, 2)  # (3, N, 2)
            grid = _stack_if_same_shape([planes[i] for i in group])  # (3, C, H, W) or None
            if grid is not None:
                f = F.grid_sample(grid, xy[:, None], mode="bilinear", padding_mode="border", align_corners=True)
                f = f[:, :, 0].prod(0)  # (C, N)
            else:
                f = None
                for k, i in enumerate(group):
                    g = F.grid_sample(planes[i], xy[k][None, None], mode="bilinear", padding_mode="border",
                                      align_corners=True)[0, :, 0]
                    f = g if f is None else f * g
            out = f if out is None else out * f
        return out.t()

    # -- regularisers of 4DGS / K-Planes -------------------------------------------------
    @staticmethod
    def _smoothness(planes: torch.Tensor) -> torch.Tensor:
        """Sum over planes (stacked on dim 0) of the mean squared second difference along the
        height axis (dim 2), as the reference's ``compute_plane_smoothness`` per plane."""
        d2 = planes[:, :, 2:, :] - 2.0 * planes[:, :, 1:-1, :] + planes[:, :, :-2, :]
        return d2.square().mean() * planes.shape[0]

    def _groups(self, group: list[int]) -> list[torch.Tensor]:
        """The planes of ``group`` at each scale, stacked when they share a shape (fewer kernels)."""
        out = []
        for s in self.grids:
            planes = [s[i] for i in group]
            stacked = _stack_if_same_shape(planes)
            out += [stacked] if stacked is not None else planes
        return out

    def regulariser(self, plane_tv: float, time_smoothness: float, l1_time: float) -> torch.Tensor:
        """plane_tv * space-plane smoothness + time_smoothness * time-plane smoothness along t
        + l1_time * mean |1 - time plane|, each summed over planes and scales (4DGS / K-Planes)."""
        space = sum(self._smoothness(p) for p in self._groups(SPACE_PLANES))
        time_groups = self._groups(TIME_PLANES)
        time = sum(self._smoothness(p) for p in time_groups)
        l1 = sum((1.0 - p).abs().mean() * p.shape[0] for p in time_groups)
        return plane_tv * space + time_smoothness * time + l1_time * l1
