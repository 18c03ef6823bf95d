"""The HexPlane shapes of 4DGS's real configurations, read from ``methods/4dgs.toml`` so the kernel
tests at real sizes follow the spec."""
from __future__ import annotations

from evalkit.specs import load_method_spec

Shape = tuple[int, tuple[int, ...], tuple[int, ...]]  # feature_dim, resolution [x, y, z, t], multires


def hexplane_shapes() -> dict[str, Shape]:
    """D-NeRF (lego's time resolution) and HyperNeRF's default configuration."""
    spec = load_method_spec("4dgs")
    shapes = {}
    for dataset, scene in (("dnerf", "lego"), ("hypernerf", "")):
        cfg = spec.config(dataset, scene)
        shapes[dataset] = (cfg["feature_dim"], tuple(cfg["resolution"]), tuple(cfg["multires"]))
    return shapes
