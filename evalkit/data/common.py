"""Small helpers shared by the loaders: checked JSON reading, background parsing, random
initial point clouds."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from evalkit.data.scene import Camera, DatasetError, PointCloud

WHITE = np.ones(3, np.float32)
BLACK = np.zeros(3, np.float32)


def read_json(path: Path) -> Any:
    if not path.is_file():
        if path.is_symlink():
            raise DatasetError(path, "is a broken symlink or a symlink loop")
        raise DatasetError(path, "file is missing" if not path.exists() else "is not a file")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise DatasetError(path, f"malformed JSON ({exc})") from None
    except OSError as exc:
        raise DatasetError(path, f"unreadable ({exc.strerror or exc})") from None
    if not text.strip():
        raise DatasetError(path, "file is empty")
    try:
        return json.loads(text)
    except (json.JSONDecodeError, RecursionError) as exc:
        raise DatasetError(path, f"malformed JSON ({exc})") from None


def require(obj: Any, key: str, path: Path, kind: type | tuple[type, ...] | None = None) -> Any:
    """``obj[key]``, or a DatasetError naming the file and the missing/ill-typed key."""
    if not isinstance(obj, dict) or key not in obj:
        raise DatasetError(path, f"missing key '{key}'")
    val = obj[key]
    if kind is not None and not isinstance(val, kind):
        names = kind.__name__ if isinstance(kind, type) else "/".join(k.__name__ for k in kind)
        raise DatasetError(path, f"key '{key}' should be {names}, got {type(val).__name__}")
    return val


def as_matrix(value: Any, shape: tuple[int, ...] | None, path: Path, what: str) -> np.ndarray:
    """``value`` as a finite float64 array of ``shape`` (None: any shape)."""
    if isinstance(value, (str, bytes, dict)) or (isinstance(value, list) and any(
            isinstance(x, (bool, str, dict)) for x in np.ravel(np.asarray(value, dtype=object)))):
        raise DatasetError(path, f"{what} is not numeric")
    try:
        arr = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        raise DatasetError(path, f"{what} is not numeric") from None
    if shape is not None and arr.shape != shape:
        raise DatasetError(path, f"{what} has shape {arr.shape}, expected {shape}")
    if not np.isfinite(arr).all():
        raise DatasetError(path, f"{what} contains NaN or infinite values")
    return arr


def parse_background(background: Sequence[float] | np.ndarray | str | None,
                     default: np.ndarray) -> np.ndarray:
    """None -> default; 'white'/'black'; or three floats in [0, 1]."""
    if background is None:
        return default.astype(np.float32).copy()
    if isinstance(background, str):
        named = {"white": WHITE, "black": BLACK}
        if background.lower() not in named:
            raise ValueError(f"background must be 'white', 'black' or three floats, got {background!r}")
        return named[background.lower()].copy()
    bg = np.asarray(background, dtype=np.float32).reshape(-1)
    if bg.shape != (3,) or (bg < 0).any() or (bg > 1).any():
        raise ValueError(f"background must be three floats in [0, 1], got {background!r}")
    return bg


def random_points_in_box(n: int, low: float, high: float, seed: int) -> PointCloud:
    rng = np.random.default_rng(seed)
    xyz = rng.uniform(low, high, size=(n, 3)).astype(np.float32)
    return PointCloud(xyz=xyz, rgb=None, source="random")


def random_points_in_frusta(cameras: Sequence[Camera], near: float, far: float, n: int,
                            seed: int) -> PointCloud:
    """Points on random pixel rays of random cameras at depths uniform in [near, far]: a
    scene-agnostic init that is guaranteed to lie inside the training views."""
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(cameras), size=n)
    out = np.empty((n, 3), np.float64)
    for ci in np.unique(idx):
        cam = cameras[ci]
        sel = np.nonzero(idx == ci)[0]
        u = rng.uniform(0, cam.width, len(sel))
        v = rng.uniform(0, cam.height, len(sel))
        z = rng.uniform(near, far, len(sel))
        K = cam.K
        y = (v - K[1, 2]) / K[1, 1]
        x = (u - K[0, 2] - K[0, 1] * y) / K[0, 0]
        pc = np.stack([x * z, y * z, z], axis=1)
        c2w = cam.c2w
        out[sel] = pc @ c2w[:3, :3].T + c2w[:3, 3]
    return PointCloud(xyz=out.astype(np.float32), rgb=None, source="random")
