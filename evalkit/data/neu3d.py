"""Neu3D / DyNeRF loader.

On disk: ``camNN.mp4`` (one synchronised video per camera) and ``poses_bounds.npy`` of shape
(N_cams, 17), row i for the i-th video in sorted order: a 3x5 matrix (row-major) then
[near, far]. LLFF convention: columns 0..2 are the camera-to-world axes [down, right,
backwards], column 3 the camera centre, column 4 = [H, W, focal]. There is no principal
point: it is the exact image centre (``cx = W / 2`` with pixel centres at +0.5).

* H, W, focal are read from each row (not hard-coded). A video whose size differs from the
  row's H, W by a common factor (LLFF files sometimes store the full-size hwf) scales the
  focal by that factor; any other mismatch is an error.
* ``resolution_scale`` (None = automatic): 1.0 when the video's longer side is <= 1600 px,
  else 0.5 (the papers decode the 2704x2028 Neu3D videos to 1352x1014).
* Time = frame index / frame count, the count read from the videos (all must agree).
* ``cam00`` (first in sorted order) is the test camera, all others train.
* Initial points: ``points3D_downsample2.ply``, else random points in the training frusta.

Frames are decoded once (PyAV, else OpenCV: ``evalkit.data.video``) into a per-video uint8
``.npy`` (F, H, W, 3), ``<cache root>/neu3d/<scene>-<hash>/<camNN>-<W>x<H>-<key>.npy``,
memory-mapped for fast random access with bounded memory (3 * W * H * F bytes of disk per camera:
90 MB for a 600x336x150 video, about 1.2 GB for a 1352x1014x300 Neu3D one). The cache root is
``cache_dir`` if given, else ``$EVALKIT_CACHE``, else ``~/.cache/evalkit``. A cache file is keyed
by the video's resolved path, byte size, mtime, decode size and decoding backend, so a changed video is
decoded again (and the stale file removed).
"""
from __future__ import annotations

import hashlib
import os
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
from rich.console import Console
from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn,
                           TimeElapsedColumn, TimeRemainingColumn)

from evalkit.data.common import BLACK, parse_background, random_points_in_frusta
from evalkit.data.images import resize_uint8
from evalkit.data.ply import read_ply
from evalkit.data.scene import Camera, DatasetError, Frame, Scene
from evalkit.data.validate import intrinsics, near_far
from evalkit.data.video import DecodeReport, VideoInfo, backend_name, iter_frames, probe_video

AUTO_DOWNSCALE_ABOVE = 1600  # px, longer video side above which the default scale is 0.5


def is_neu3d(path: Path) -> bool:
    return (path / "poses_bounds.npy").is_file() and any(path.glob("cam*.mp4"))


def default_cache_root() -> Path:
    env = os.environ.get("EVALKIT_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "evalkit"


def _sha(text: str, n: int) -> str:
    return hashlib.sha1(text.encode("utf-8")).hexdigest()[:n]


@dataclass
class DecodedVideo:
    """One camera's frames, decoded on first use into a memory-mapped uint8 cache file."""

    info: VideoInfo
    out_size: tuple[int, int]  # (width, height) stored in the cache
    cache_file: Path
    backend: str  # the decoder the cache key names (decoding may happen long after loading)
    allow_corrupt: bool = False  # use a stream the decoder reported errors in (else DatasetError)
    problem: str | None = None  # the decoder's errors, when allowed
    _frames: np.ndarray | None = field(default=None, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def is_cached(self) -> bool:
        return self._frames is not None or self._open_existing() is not None

    @property
    def problem_file(self) -> Path:
        """Beside a cache file decoded from a damaged stream: what the decoder reported."""
        return self.cache_file.with_suffix(".errors.txt")

    def _check_problem(self, problem: str) -> None:
        if not self.allow_corrupt:
            raise DatasetError(self.info.path, f"the video decoder reported damage ({problem}); its frames are "
                                               "concealed guesses, not the capture. Refusing to use them "
                                               "(--allow-corrupt-video uses them and notes it in the record)")
        self.problem = problem

    def _open_existing(self) -> np.ndarray | None:
        if not self.cache_file.is_file():
            return None
        if self.problem_file.is_file():
            self._check_problem(self.problem_file.read_text(encoding="utf-8").strip())
        W, H = self.out_size
        try:
            arr = np.load(self.cache_file, mmap_mode="r")
        except (ValueError, OSError):
            return None
        if arr.shape != (self.info.frames, H, W, 3) or arr.dtype != np.uint8:
            return None
        return arr

    def ensure(self, progress: Progress | None = None, task=None) -> np.ndarray:
        with self._lock:
            if self._frames is None:
                self._frames = self._open_existing()
            if self._frames is None:
                self._decode(progress, task)
                self._frames = self._open_existing()
                if self._frames is None:
                    raise DatasetError(self.cache_file, "decoded frame cache could not be read back")
            return self._frames

    def frame(self, index: int) -> np.ndarray:
        arr = self._frames if self._frames is not None else self.ensure()
        return arr[index].astype(np.float32) / 255.0

    def _decode(self, progress: Progress | None, task) -> None:
        W, H = self.out_size
        n = self.info.frames
        self.cache_file.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.cache_file.with_name(f".{self.cache_file.stem}.{uuid.uuid4().hex[:8]}.tmp.npy")
        got = 0
        report = DecodeReport()
        try:
            out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=(n, H, W, 3))
            for img in iter_frames(self.info.path, self.backend, report):
                if got >= n:
                    raise DatasetError(self.info.path, f"decodes to more frames than the {n} "
                                                       "its container reports")
                if (img.shape[1], img.shape[0]) != (W, H):
                    img = resize_uint8(img, (W, H))
                out[got] = img
                got += 1
                if progress is not None:
                    progress.advance(task)
            if got != n:
                raise DatasetError(self.info.path, f"decodes to {got} frames, expected {n}")
            out.flush()
            del out
            if not report.clean:
                self._check_problem(report.summary())  # raises unless allowed
                self.problem_file.write_text(report.summary() + "\n", encoding="utf-8")
            else:
                self.problem_file.unlink(missing_ok=True)
            os.replace(tmp, self.cache_file)
        except OSError as exc:
            raise DatasetError(self.info.path, f"video decoding failed after {got} frames ({exc})") from None
        finally:
            if tmp.exists():
                tmp.unlink()
        # Drop cache files of earlier versions of this video (same camera and size, other key),
        # and temporary files a killed decode left (untouched for an hour: not being written).
        for old in self.cache_file.parent.glob(f"{self.info.path.stem}-{W}x{H}-*.npy"):
            if old != self.cache_file:
                old.unlink(missing_ok=True)
                old.with_suffix(".errors.txt").unlink(missing_ok=True)
        for tmp_old in self.cache_file.parent.glob(f".{self.info.path.stem}-{W}x{H}-*.tmp.npy"):
            try:
                if time.time() - tmp_old.stat().st_mtime > 3600:
                    tmp_old.unlink()
            except OSError:
                pass


def _progress() -> Progress:
    return Progress(TextColumn("[bold]decoding {task.description}"), BarColumn(),
                    MofNCompleteColumn(), TimeElapsedColumn(), TimeRemainingColumn(),
                    console=Console(stderr=True), transient=False)


def decode_all(videos: Sequence[DecodedVideo], label: str, show_progress: bool = True) -> None:
    """Decode every video that is not cached yet, with one rich progress bar."""
    todo = [v for v in videos if not v.is_cached]
    if not todo:
        for v in videos:
            v.ensure()
        return
    total = sum(v.info.frames for v in todo)
    if show_progress:
        with _progress() as prog:
            task = prog.add_task(f"{label} ({len(todo)} videos)", total=total)
            for v in todo:
                v.ensure(prog, task)
    else:
        for v in todo:
            v.ensure()
    for v in videos:
        v.ensure()


def prefetch_neu3d(scene: Scene, show_progress: bool = True) -> None:
    """Decode all videos of a Neu3D scene loaded with ``prefetch=False``."""
    decode_all(scene.extra["videos"], scene.name, show_progress)


def llff_to_w2c(mat35: np.ndarray) -> np.ndarray:
    """LLFF 3x5 [down, right, backwards, centre, hwf] -> OpenCV world-to-camera 4x4."""
    down, right, back, centre = mat35[:, 0], mat35[:, 1], mat35[:, 2], mat35[:, 3]
    c2w = np.eye(4)
    c2w[:3, 0], c2w[:3, 1], c2w[:3, 2], c2w[:3, 3] = right, down, -back, centre
    return np.linalg.inv(c2w)


def load_neu3d(path: Path | str, *, resolution_scale: float | None = None,
               background: Sequence[float] | np.ndarray | str | None = None,
               cache_dir: Path | str | None = None, prefetch: bool = True, progress: bool = True,
               init_points: int = 2000, seed: int = 0, allow_corrupt_video: bool = False) -> Scene:
    """``allow_corrupt_video``: use videos the decoder reported errors in (concealed frames);
    ``scene.extra["notes"]`` then says which. Otherwise such a video is a ``DatasetError``."""
    root = Path(path)
    if not root.is_dir():
        raise DatasetError(root, "dataset folder is missing")
    bg = parse_background(background, BLACK)
    pb_path = root / "poses_bounds.npy"
    if not pb_path.is_file():
        raise DatasetError(pb_path, "file is missing")
    try:
        pb = np.load(pb_path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise DatasetError(pb_path, f"not a readable .npy array ({exc})") from None
    if pb.ndim != 2 or pb.shape[1] != 17:
        raise DatasetError(pb_path, f"expected shape (N_cams, 17), got {pb.shape}")
    if not np.issubdtype(pb.dtype, np.number):
        raise DatasetError(pb_path, f"expected numbers (N_cams, 17), got dtype {pb.dtype}")
    pb = pb.astype(np.float64)
    if not np.isfinite(pb).all():
        raise DatasetError(pb_path, "contains NaN or infinite values")
    videos = sorted(root.glob("cam*.mp4"))
    if not videos:
        raise DatasetError(root, "no cam*.mp4 videos found")
    if len(videos) != pb.shape[0]:
        raise DatasetError(pb_path, f"has {pb.shape[0]} rows but the folder has {len(videos)} "
                                    f"cam*.mp4 videos")

    backend = backend_name(videos[0])
    infos = [probe_video(v, backend) for v in videos]
    counts = [i.frames for i in infos]
    common = max(set(counts), key=counts.count)
    for i in infos:
        if i.frames != common:
            raise DatasetError(i.path, f"has {i.frames} frames but the other videos have {common}")
    sizes = {(i.width, i.height) for i in infos}
    if len(sizes) != 1:
        ref = infos[0]
        odd = next(i for i in infos if (i.width, i.height) != (ref.width, ref.height))
        raise DatasetError(odd.path, f"video is {odd.width}x{odd.height} but {ref.path.name} is "
                                     f"{ref.width}x{ref.height}")
    vw, vh = infos[0].width, infos[0].height
    scale = resolution_scale if resolution_scale is not None else (
        1.0 if max(vw, vh) <= AUTO_DOWNSCALE_ABOVE else 0.5)
    if not 0 < scale <= 1.0:
        raise ValueError(f"resolution_scale must be in (0, 1], got {scale}")
    Wo, Ho = max(1, round(vw * scale)), max(1, round(vh * scale))

    base = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_root()
    scene_dir = base / "neu3d" / f"{root.name}-{_sha(str(root.resolve()), 8)}"

    frames: list[Frame] = []
    decoded: list[DecodedVideo] = []
    for row, info in enumerate(infos):
        mat = pb[row, :15].reshape(3, 5)
        H, W, focal = mat[:, 4]
        if H <= 0 or W <= 0 or focal <= 0:
            raise DatasetError(pb_path, f"row {row}: H, W, focal = {H}, {W}, {focal} must be positive")
        intrinsics(focal, focal, W / 2, H / 2, W, H, pb_path, f"row {row}")
        near_far(pb[row, 15], pb[row, 16], pb_path, f"row {row}")
        if abs(vw / W - vh / H) > 0.005 * max(vw / W, vh / H):
            raise DatasetError(info.path, f"video is {vw}x{vh} but poses_bounds.npy row {row} gives "
                                          f"W x H = {W:g}x{H:g} (not the same aspect ratio)")
        rot = mat[:, :3]
        if np.abs(rot.T @ rot - np.eye(3)).max() > 1e-4:
            raise DatasetError(pb_path, f"row {row}: the 3x3 rotation part is not orthonormal")
        w2c = llff_to_w2c(mat)
        if np.linalg.det(w2c[:3, :3]) < 0:
            raise DatasetError(pb_path, f"row {row}: LLFF axes [down, right, backwards] form a "
                                        "reflection, not a rotation")
        K = np.array([[focal * Wo / W, 0.0, Wo / 2.0],
                      [0.0, focal * Ho / H, Ho / 2.0],
                      [0.0, 0.0, 1.0]])
        st = info.path.stat()
        key = _sha(f"{info.path.resolve()}|{st.st_size}|{st.st_mtime_ns}|{Wo}x{Ho}|{backend}", 16)
        dv = DecodedVideo(info=info, out_size=(Wo, Ho),
                          cache_file=scene_dir / f"{info.path.stem}-{Wo}x{Ho}-{key}.npy", backend=backend,
                          allow_corrupt=allow_corrupt_video)
        decoded.append(dv)
        cam = Camera(K=K, w2c=w2c, width=Wo, height=Ho)
        split = "test" if row == 0 else "train"
        for t in range(common):
            frames.append(Frame(camera=cam, time=t / common, split=split, camera_id=info.path.stem,
                                image_name=f"{info.path.stem}_{t:04d}",
                                _loader=lambda dv=dv, t=t: dv.frame(t)))

    notes: list[str] = []
    if prefetch:
        decode_all(decoded, root.name, show_progress=progress)
        notes = [f"{v.info.path}: used although the decoder reported damage ({v.problem}); "
                 "--allow-corrupt-video" for v in decoded if v.problem]

    ply = root / "points3D_downsample2.ply"
    nears, fars = pb[:, 15], pb[:, 16]
    near = float(nears.min()) if (nears > 0).all() else None
    far = float(fars.max()) if (fars > 0).all() else None
    if ply.is_file():
        points = read_ply(ply)
    else:
        train_cams = list({f.camera_id: f.camera for f in frames if f.split == "train"}.values())
        points = random_points_in_frusta(train_cams or [frames[0].camera], near or 0.1,
                                         far or 10.0, init_points, seed)
    return Scene(name=root.name, format="neu3d", path=root, frames=frames, background=bg,
                 points=points, near=near, far=far, num_time_steps=common,
                 extra={"frame_count": common, "video_size": (vw, vh), "cache_dir": str(scene_dir),
                        "videos": decoded, "notes": notes})
