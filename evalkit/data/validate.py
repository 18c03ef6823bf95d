"""Value checks the loaders share: every number a loader reads passes one of these, so a NaN
time, a 179-degree field of view or a negative near bound is a ``DatasetError`` naming the file
and the field at load time (and in ``evalkit datasets info``), never a crash in training or a
silently different result.

Plausibility limits (judgements, not calibrated): a horizontal or vertical field of view of
``MIN_FOV_DEG`` .. ``MAX_FOV_DEG`` degrees (pinhole; 170 degrees is already an extreme wide
angle, 0.5 degrees a long telephoto); a principal point within the image extended by its size
on each side.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from evalkit.data.scene import DatasetError

MIN_FOV_DEG = 0.5
MAX_FOV_DEG = 170.0


def number(value: Any, path: Path, field: str, *, low: float | None = None, high: float | None = None,
           low_open: bool = False, integer: bool = False) -> float:
    """A finite JSON number (not a bool) in [low, high] (``low_open``: (low, high])."""
    kinds = (int,) if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kinds):
        want = "an integer" if integer else "a number"
        raise DatasetError(path, f"{field} should be {want}, got {type(value).__name__} {value!r:.40}")
    v = float(value)
    if not math.isfinite(v):
        raise DatasetError(path, f"{field} is {v} (must be finite)")
    if low is not None and (v <= low if low_open else v < low):
        raise DatasetError(path, f"{field} = {v:g} must be {'>' if low_open else '>='} {low:g}")
    if high is not None and v > high:
        raise DatasetError(path, f"{field} = {v:g} must be <= {high:g}")
    return int(value) if integer else v


def finite_array(arr: np.ndarray, path: Path, field: str) -> np.ndarray:
    if not np.isfinite(arr).all():
        bad = np.argwhere(~np.isfinite(arr))[0].tolist()
        raise DatasetError(path, f"{field} contains NaN or infinite values (first at index {bad})")
    return arr


def fov_angle(angle: float, path: Path, field: str) -> float:
    """A field of view in radians, finite and within the plausible range."""
    a = number(angle, path, field)
    plausible_fov(math.degrees(a), path, f"{field} = {a:g} rad")
    return a


def plausible_fov(deg: float, path: Path, what: str) -> None:
    """Refuse a field of view (degrees) outside ``MIN_FOV_DEG`` .. ``MAX_FOV_DEG``; ``what`` names its source."""
    if not MIN_FOV_DEG <= deg <= MAX_FOV_DEG:
        raise DatasetError(path, f"{what} gives a {deg:.3g}-degree field of view, not a plausible one "
                                 f"({MIN_FOV_DEG:g} to {MAX_FOV_DEG:g} degrees)")


def intrinsics(fx: float, fy: float, cx: float, cy: float, width: float, height: float,
               path: Path, where: str) -> None:
    """Focal lengths (pixels) giving a plausible field of view for a ``width`` x ``height`` image
    and a principal point near the image."""
    for name, v in (("fx", fx), ("fy", fy), ("cx", cx), ("cy", cy), ("width", width), ("height", height)):
        if not math.isfinite(v):
            raise DatasetError(path, f"{where}: {name} is {v} (must be finite)")
    if width <= 0 or height <= 0:
        raise DatasetError(path, f"{where}: image size {width:g}x{height:g} must be positive")
    for name, f, size in (("fx", fx, width), ("fy", fy, height)):
        if f <= 0:
            raise DatasetError(path, f"{where}: focal length {name} = {f:g} must be positive")
        plausible_fov(math.degrees(2 * math.atan(size / (2 * f))), path,
                      f"{where}: focal length {name} = {f:g} px over {size:g} px")
    if not (-width <= cx <= 2 * width and -height <= cy <= 2 * height):
        raise DatasetError(path, f"{where}: principal point ({cx:g}, {cy:g}) is far outside the "
                                 f"{width:g}x{height:g} image")


def near_far(near: Any, far: Any, path: Path, where: str = "") -> tuple[float | None, float | None]:
    """Optional near / far bounds: when given, finite, positive and near < far."""
    pre = f"{where}: " if where else ""
    n = None if near is None else number(near, path, f"{pre}near", low=0.0, low_open=True)
    f = None if far is None else number(far, path, f"{pre}far", low=0.0, low_open=True)
    if n is not None and f is not None and not n < f:
        raise DatasetError(path, f"{pre}near = {n:g} must be less than far = {f:g}")
    return n, f


def rigid(c2w_or_R: np.ndarray, path: Path, field: str, tol: float = 1e-3) -> None:
    """The 3x3 part of a pose is a rotation (orthonormal, det +1)."""
    R = np.asarray(c2w_or_R, np.float64)[:3, :3]
    finite_array(R, path, field)
    if np.abs(R.T @ R - np.eye(3)).max() > tol or abs(np.linalg.det(R) - 1.0) > tol:
        raise DatasetError(path, f"{field} is not a rotation + translation")
