"""What every rasterisation backend returns."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from torch import Tensor


@dataclass
class RenderOutput:
    """One rendered view.

    ``info`` follows gsplat 1.5.3's ``meta`` dict closely enough for
    ``gsplat.strategy.DefaultStrategy`` (it reads ``means2d``, ``radii``, ``width``,
    ``height``, ``n_cameras`` and ``gaussian_ids``):

    * unpacked: ``means2d`` (1, N, 2) pixel coordinates (non-leaf, ``retain_grad`` already
      called when it requires grad), ``radii`` (1, N, 2) int32 with 0 for culled Gaussians,
      ``depths`` (1, N), ``conics`` (1, N, 3), ``opacities`` (1, N), ``gaussian_ids`` None;
    * packed: the same per visible Gaussian, shapes (nnz, ...), and ``gaussian_ids`` (nnz,) int64.
    """

    image: Tensor  # (H, W, 3) composited on the background
    alpha: Tensor  # (H, W, 1), 1 - final transmittance
    info: dict[str, Any]
    backend: str  # "gsplat" | "torch"


@dataclass
class ViewsOutput:
    """Several views of one scene rendered at once (``rasterize_views``).

    ``infos``: gsplat-style info dicts covering all views between them. gsplat renders the batch
    in one call and gives one dict whose tensors have a leading view axis (``means2d``
    (B, 1, N, 2), ``radii`` (B, 1, N, 2)); the torch reference renders view by view and gives
    one dict per view. Consumers flatten the leading axes (the densification statistics do)."""

    images: Tensor  # (B, H, W, 3)
    alphas: Tensor  # (B, H, W, 1)
    infos: list[dict[str, Any]]
    backend: str
