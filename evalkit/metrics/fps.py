"""Rendering speed: frames per second of a decoded model's render function.

Protocol (PROTOCOL.md section 5): render from the decoded model only, including the
per-timestep deformation; warm up first; time on the device (CUDA events bracketing the
loop, with synchronisation) so no disk I/O or device-to-host copy is included; fixed
resolution; record the GPU name. CPU timings are labelled as not comparable.
"""
from __future__ import annotations

import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch


@dataclass
class FPSResult:
    fps: float
    ms_per_frame: float
    frames: int  # timed frames (repeats * num_views)
    device_kind: str  # 'cuda' | 'cpu'
    device_name: str  # GPU name, or CPU model
    resolution: tuple[int, int]  # (width, height), as given by the caller
    label: str  # e.g. "GPU NVIDIA H100 80GB HBM3" or "CPU (not comparable to GPU FPS)"
    warmup: int
    repeats: int
    ms_per_frame_by_repeat: list[float] = field(default_factory=list)  # spread across repeats

    @property
    def ms_per_frame_spread(self) -> tuple[float, float]:
        """(min, max) of the per-repeat mean frame times."""
        return min(self.ms_per_frame_by_repeat), max(self.ms_per_frame_by_repeat)


def synced_clock(device: torch.device) -> float:
    """``time.perf_counter()`` once ``device``'s queued work has finished (a wall-clock timer for GPU work)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()


def cpu_name() -> str:
    """CPU model from /proc/cpuinfo (Linux), else platform's processor string."""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text(errors="replace").splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine() or "unknown CPU"


def _check_output(out: object, device: torch.device) -> None:
    if not isinstance(out, torch.Tensor):
        raise TypeError(f"measure_fps: render_fn must return a torch.Tensor, got {type(out).__name__}")
    if out.device.type != device.type:
        raise ValueError(
            f"measure_fps: render_fn returned a tensor on {out.device}, expected {device.type}; "
            "FPS must exclude device-to-host copies, so return the render on the device"
        )


def measure_fps(
    render_fn: Callable[[int], torch.Tensor],
    num_views: int,
    warmup: int,
    repeats: int,
    device: torch.device | str,
    resolution: tuple[int, int],
) -> FPSResult:
    """Time ``render_fn(i)`` over views ``0..num_views-1``, ``repeats`` times, after ``warmup`` calls.

    ``render_fn(i)`` must render test view ``i`` completely (deformation at its timestamp
    included) and return the image on ``device`` without copying it to the host.
    ``resolution`` (width, height) is recorded as given.
    """
    if num_views < 1 or repeats < 1:
        raise ValueError(f"measure_fps: need num_views >= 1 and repeats >= 1, got {num_views} and {repeats}")
    if warmup < 1:
        raise ValueError(f"measure_fps: need warmup >= 1 (checks the output and warms caches), got {warmup}")
    device = torch.device(device)
    on_cuda = device.type == "cuda"
    if on_cuda and not torch.cuda.is_available():
        raise RuntimeError("measure_fps: device is CUDA but CUDA is not available")
    if device.type not in ("cuda", "cpu"):
        raise ValueError(f"measure_fps: unsupported device {device}; use 'cuda' or 'cpu'")

    with torch.no_grad():
        for i in range(warmup):
            out = render_fn(i % num_views)
            if i == 0:
                _check_output(out, device)
        del out

        per_repeat_ms: list[float] = []
        if on_cuda:
            with torch.cuda.device(device):  # events record on this device's current stream
                torch.cuda.synchronize(device)
                events = [torch.cuda.Event(enable_timing=True) for _ in range(repeats + 1)]
                events[0].record()
                for r in range(repeats):
                    for i in range(num_views):
                        render_fn(i)
                    events[r + 1].record()
                torch.cuda.synchronize(device)
            per_repeat_ms = [events[r].elapsed_time(events[r + 1]) / num_views for r in range(repeats)]
        else:
            for _ in range(repeats):
                t0 = time.perf_counter()
                for i in range(num_views):
                    render_fn(i)
                per_repeat_ms.append((time.perf_counter() - t0) * 1000.0 / num_views)

    ms_per_frame = statistics.fmean(per_repeat_ms)
    if on_cuda:
        name = torch.cuda.get_device_name(device)
        label = f"GPU {name}"
    else:
        name = cpu_name()
        label = "CPU (not comparable to GPU FPS)"
    return FPSResult(
        fps=1000.0 / ms_per_frame if ms_per_frame > 0 else float("inf"),
        ms_per_frame=ms_per_frame,
        frames=repeats * num_views,
        device_kind=device.type,
        device_name=name,
        resolution=(int(resolution[0]), int(resolution[1])),
        label=label,
        warmup=warmup,
        repeats=repeats,
        ms_per_frame_by_repeat=per_repeat_ms,
    )
