"""Point clouds in PLY files (x, y, z and optional red, green, blue), via plyfile."""
from __future__ import annotations

from pathlib import Path

import numpy as np
from plyfile import PlyData, PlyElement

from evalkit.data.scene import DatasetError, PointCloud


def read_ply(path: Path | str) -> PointCloud:
    """Read the ``vertex`` element of a PLY file. Colours (uchar 0-255 or float 0-1) are optional."""
    path = Path(path)
    if not path.is_file():
        raise DatasetError(path, "point cloud file is missing")
    try:
        ply = PlyData.read(str(path))
    except Exception as exc:  # plyfile raises several unrelated types for corrupt files
        raise DatasetError(path, f"not a readable PLY file ({exc})") from None
    if "vertex" not in ply:
        raise DatasetError(path, "PLY file has no 'vertex' element")
    v = ply["vertex"].data
    names = v.dtype.names or ()
    missing = [k for k in ("x", "y", "z") if k not in names]
    if missing:
        raise DatasetError(path, f"PLY vertices lack the properties {missing}")
    xyz = np.stack([v["x"], v["y"], v["z"]], axis=1).astype(np.float32)
    if not np.isfinite(xyz).all():
        raise DatasetError(path, "PLY vertices contain NaN or infinite coordinates")
    rgb = None
    if all(k in names for k in ("red", "green", "blue")):
        raw = np.stack([v["red"], v["green"], v["blue"]], axis=1)
        scale = 255.0 if np.issubdtype(raw.dtype, np.integer) else 1.0
        rgb = (raw.astype(np.float32) / scale).clip(0.0, 1.0)
    return PointCloud(xyz=xyz, rgb=rgb, source=str(path))


def write_ply(path: Path | str, xyz: np.ndarray, rgb: np.ndarray | None = None) -> None:
    """Write binary little-endian PLY in the layout 3DGS/4DGaussians read: x, y, z, nx, ny, nz
    (float32, zero normals) and red, green, blue (uchar) when colours are given (floats in [0, 1])."""
    xyz = np.asarray(xyz, dtype=np.float32).reshape(-1, 3)
    fields = [("x", "f4"), ("y", "f4"), ("z", "f4"), ("nx", "f4"), ("ny", "f4"), ("nz", "f4")]
    if rgb is not None:
        fields += [("red", "u1"), ("green", "u1"), ("blue", "u1")]
    arr = np.zeros(len(xyz), dtype=fields)
    arr["x"], arr["y"], arr["z"] = xyz.T
    if rgb is not None:
        c = np.round(np.clip(np.asarray(rgb, np.float64).reshape(-1, 3), 0, 1) * 255).astype(np.uint8)
        arr["red"], arr["green"], arr["blue"] = c.T
    PlyData([PlyElement.describe(arr, "vertex")], text=False, byte_order="<").write(str(path))
