"""The one scene model every loader produces and everything downstream consumes.

Camera convention (documented once, used everywhere):

* ``w2c`` is a 4x4 world-to-camera matrix with **OpenCV camera axes**
  (x right, y down, z forward). A world point ``X`` maps to camera coordinates
  ``Xc = w2c[:3, :3] @ X + w2c[:3, 3]``; it is in front of the camera when
  ``Xc[2] > 0``.
* ``K`` is a 3x3 pinhole intrinsic matrix in **continuous pixel coordinates
  whose origin is the top-left corner of the image**: the centre of pixel
  ``(col, row)`` is at ``(col + 0.5, row + 0.5)``. This is the COLMAP /
  Nerfies / gsplat convention. A camera whose principal point is the exact
  image centre has ``cx = W / 2``, ``cy = H / 2``.
  Projection: ``u = K[0,0] * x / z + K[0,1] * y / z + K[0,2]``,
  ``v = K[1,1] * y / z + K[1,2]``.
* Images are float32 arrays of shape ``(H, W, 3)`` in [0, 1], already
  composited onto the scene background when the source has alpha.
* Time is normalised to [0, 1].
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Literal

import numpy as np

Split = Literal["train", "test", "val"]


@dataclass(frozen=True)
class Camera:
    K: np.ndarray  # (3, 3) float64, convention above
    w2c: np.ndarray  # (4, 4) float64, OpenCV axes
    width: int
    height: int

    def __post_init__(self) -> None:
        if np.asarray(self.K).shape != (3, 3) or np.asarray(self.w2c).shape != (4, 4):
            raise ValueError("Camera needs K of shape (3, 3) and w2c of shape (4, 4)")

    @property
    def c2w(self) -> np.ndarray:
        return np.linalg.inv(self.w2c)

    @property
    def center(self) -> np.ndarray:
        return self.c2w[:3, 3]

    def project(self, points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Project world points (N, 3) to pixel coordinates (N, 2) and depths (N,)."""
        pts = np.asarray(points, dtype=np.float64).reshape(-1, 3)
        cam = pts @ self.w2c[:3, :3].T + self.w2c[:3, 3]
        z = cam[:, 2]
        uvw = cam @ self.K.T
        with np.errstate(divide="ignore", invalid="ignore"):
            uv = uvw[:, :2] / uvw[:, 2:3]
        return uv, z

    def scaled(self, factor: float) -> "Camera":
        """The same camera for an image resized by ``factor`` (e.g. 0.5 = half size)."""
        K = self.K.copy()
        K[:2, :] *= factor
        return Camera(K=K, w2c=self.w2c.copy(), width=int(round(self.width * factor)),
                      height=int(round(self.height * factor)))


@dataclass
class Frame:
    """One image of the scene. Pixels are read lazily through ``load``."""

    camera: Camera
    time: float
    split: str
    camera_id: str
    image_name: str
    _loader: Callable[[], np.ndarray] = field(repr=False, compare=False)

    def load(self) -> np.ndarray:
        """Return the image as float32 (H, W, 3) in [0, 1], composited on the background."""
        img = self._loader()
        if img.shape != (self.camera.height, self.camera.width, 3):
            raise ValueError(
                f"{self.image_name}: image has shape {img.shape}, camera expects "
                f"({self.camera.height}, {self.camera.width}, 3)")
        return img


@dataclass
class PointCloud:
    xyz: np.ndarray  # (N, 3) float32
    rgb: np.ndarray | None = None  # (N, 3) float32 in [0, 1]
    source: str = "random"  # file it was read from, or "random"


@dataclass
class Scene:
    name: str
    format: str  # "dnerf" | "hypernerf" | "neu3d"
    path: Path
    frames: list[Frame]
    background: np.ndarray  # (3,) float32 in [0, 1]
    points: PointCloud
    near: float | None = None
    far: float | None = None
    # Number of distinct time steps in the capture (used by methods to size time grids).
    num_time_steps: int = 0
    extra: dict = field(default_factory=dict)

    def split(self, name: str) -> list[Frame]:
        return [f for f in self.frames if f.split == name]

    @property
    def train(self) -> list[Frame]:
        return self.split("train")

    def evaluated_on(self, split: str) -> "Scene":
        """The scene with ``split``'s frames as its test views (its own test frames left out), so
        that tuning runs score on held-out views that are not the test set (e.g. D-NeRF's val)."""
        if split == "test":
            return self
        frames = self.split(split)
        if not frames:
            present = sorted({f.split for f in self.frames})
            raise DatasetError(self.path, f"no '{split}' frames to evaluate on (splits present: {', '.join(present)})")
        rest = [f for f in self.frames if f.split not in ("test", split)]
        return replace(self, frames=rest + [replace(f, split="test") for f in frames])

    @property
    def test(self) -> list[Frame]:
        return self.split("test")

    @property
    def resolution(self) -> tuple[int, int]:
        """(width, height) of the test split (or of any frame if there is no test split)."""
        frames = self.test or self.frames
        return frames[0].camera.width, frames[0].camera.height

    @property
    def time_range(self) -> tuple[float, float]:
        ts = [f.time for f in self.frames]
        return (min(ts), max(ts)) if ts else (0.0, 0.0)

    def camera_extent(self) -> float:
        """Radius of the training cameras around their mean centre, times 1.1 (3DGS 'cameras_extent')."""
        centers = np.stack([f.camera.center for f in self.train]) if self.train else np.zeros((1, 3))
        mean = centers.mean(0)
        return float(np.linalg.norm(centers - mean, axis=1).max() * 1.1) or 1.0


class DatasetError(Exception):
    """A dataset folder or file is missing or malformed. The message names the file."""

    def __init__(self, path: Path | str, problem: str) -> None:
        self.path = Path(path)
        self.problem = problem
        super().__init__(f"{path}: {problem}")
