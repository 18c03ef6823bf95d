"""Video probing and decoding for the Neu3D loader, through PyAV or OpenCV.

PyAV (a dependency) is used when it imports; OpenCV (``cv2``) is the fallback, for environments
that have OpenCV but not PyAV (the lent GPU machines do). ``EVALKIT_VIDEO_BACKEND=av|opencv``
forces one. The two convert YUV to RGB with slightly different rounding, so the backend is part of
the decoded-frame cache key (``backend_name``).

Damaged streams: a decoder conceals errors (it copies neighbouring blocks) and goes on, so a
video corrupted mid-file still yields every frame. With PyAV, ``iter_frames`` fills a
``DecodeReport`` with the decoder's error messages (FFmpeg log level error or worse) and the
frames it marked corrupt; the Neu3D loader refuses such a video unless asked to allow it.
Damage the decoder itself does not notice (it happens) cannot be reported. OpenCV reports
nothing, so with that backend a damaged stream is not detected.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np

from evalkit.data.scene import DatasetError

BACKENDS = ("av", "opencv")


@dataclass
class VideoInfo:
    path: Path
    width: int
    height: int
    frames: int


@dataclass
class DecodeReport:
    """What the decoder said while decoding one stream."""

    errors: list[str] = field(default_factory=list)  # decoder messages, level error or worse
    corrupt_frames: int = 0  # frames the decoder flagged as corrupt (concealed)
    checked: bool = True  # False: the backend cannot report errors (OpenCV)

    @property
    def clean(self) -> bool:
        return not self.errors and not self.corrupt_frames

    def summary(self) -> str:
        first = "; ".join(dict.fromkeys(self.errors))
        return (f"{len(self.errors)} decoder error(s), {self.corrupt_frames} frame(s) flagged corrupt"
                + (f" (first: {first[:200]})" if first else ""))


def _importable(name: str) -> bool:
    try:
        __import__("av" if name == "av" else "cv2")
        return True
    except ImportError:
        return False


def backend_name(path: Path | None = None) -> str:
    """The backend in use: ``EVALKIT_VIDEO_BACKEND`` if set, else PyAV, else OpenCV."""
    forced = os.environ.get("EVALKIT_VIDEO_BACKEND", "").strip().lower()
    where = path if path is not None else Path(".")
    if forced:
        if forced not in BACKENDS:
            raise DatasetError(where, f"EVALKIT_VIDEO_BACKEND={forced!r}: must be one of {', '.join(BACKENDS)}")
        if not _importable(forced):
            raise DatasetError(where, f"EVALKIT_VIDEO_BACKEND={forced} but that package is not installed")
        return forced
    for name in BACKENDS:
        if _importable(name):
            return name
    raise DatasetError(where, "decoding videos needs PyAV (pip install av) or OpenCV "
                              "(pip install opencv-python-headless); neither is installed")


def probe_video(path: Path, backend: str | None = None) -> VideoInfo:
    """Size and frame count (``backend``: None = ``backend_name``). PyAV: from the container
    (packets counted if it gives none); OpenCV: frames counted by grabbing them all (its
    frame-count property is an estimate)."""
    if (backend or backend_name(path)) == "av":
        return _probe_av(path)
    return _probe_cv2(path)


def iter_frames(path: Path, backend: str | None = None,
                report: DecodeReport | None = None) -> Iterator[np.ndarray]:
    """Decoded frames as (H, W, 3) uint8 RGB, in order (``backend``: None = ``backend_name``).
    Errors are ``DatasetError`` naming ``path``; concealed errors go into ``report``."""
    report = report if report is not None else DecodeReport()
    if (backend or backend_name(path)) == "av":
        yield from _frames_av(path, report)
    else:
        report.checked = False
        yield from _frames_cv2(path)


# -- PyAV ------------------------------------------------------------------------------------
def _probe_av(path: Path) -> VideoInfo:
    import av
    try:
        with av.open(str(path)) as c:
            if not c.streams.video:
                raise DatasetError(path, "file has no video stream")
            s = c.streams.video[0]
            n = int(s.frames or 0)
            if n <= 0:
                n = sum(1 for p in c.demux(s) if p.size)
            return VideoInfo(path, int(s.codec_context.width), int(s.codec_context.height), n)
    except DatasetError:
        raise
    except (av.error.FFmpegError, OSError, ValueError) as exc:
        raise DatasetError(path, f"not a readable video ({exc})") from None


def _frames_av(path: Path, report: DecodeReport) -> Iterator[np.ndarray]:
    import av
    import av.logging

    got = 0
    level = av.logging.get_level()
    av.logging.set_level(av.logging.WARNING)  # FFmpeg's messages reach Python only with a level set
    try:
        with av.logging.Capture(local=False) as logs, av.open(str(path)) as c:
            s = c.streams.video[0]
            s.thread_type = "AUTO"
            for fr in c.decode(s):
                report.corrupt_frames += bool(fr.is_corrupt)
                report.errors = [m.strip() for lv, _, m in logs if lv <= av.logging.ERROR]
                yield fr.to_ndarray(format="rgb24")
                got += 1
            report.errors = [m.strip() for lv, _, m in logs if lv <= av.logging.ERROR]
    except (av.error.FFmpegError, OSError) as exc:
        raise DatasetError(path, f"video decoding failed after {got} frames ({exc})") from None
    finally:
        av.logging.set_level(level)


# -- OpenCV ----------------------------------------------------------------------------------
def _open_cv2(path: Path):
    import cv2
    cap = cv2.VideoCapture(str(path))
    if not cap.isOpened():
        cap.release()
        raise DatasetError(path, "not a readable video (OpenCV could not open it)")
    return cap


def _probe_cv2(path: Path) -> VideoInfo:
    import cv2
    if not path.is_file():
        raise DatasetError(path, "not a readable video (no such file)")
    cap = _open_cv2(path)
    try:
        w, h = int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)), int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT))
        n = 0
        while cap.grab():
            n += 1
    finally:
        cap.release()
    if n == 0 or w <= 0 or h <= 0:
        raise DatasetError(path, "not a readable video (OpenCV decodes no frames)")
    return VideoInfo(path, w, h, n)


def _frames_cv2(path: Path) -> Iterator[np.ndarray]:
    import cv2
    cap = _open_cv2(path)
    try:
        while True:
            ok, bgr = cap.read()
            if not ok:
                break
            yield cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
    finally:
        cap.release()
