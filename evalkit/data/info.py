"""``evalkit datasets info PATH``: a summary of a dataset folder (nothing is decoded)."""
from __future__ import annotations

import io
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from evalkit.data.detect import detect_format, load_scene
from evalkit.data.scene import Scene

EXTRA_KEYS = ("ratio", "split_mode", "frame_count", "video_size", "cache_dir", "scene_center", "scene_scale")


def summarize(scene: Scene) -> dict[str, Any]:
    """Plain-data summary of a loaded scene (used by ``describe`` and handy in tests/JSON)."""
    splits = {}
    for name in ("train", "val", "test"):
        frames = scene.split(name)
        if frames:
            sizes = sorted({(f.camera.width, f.camera.height) for f in frames})
            splits[name] = {"frames": len(frames), "cameras": len({f.camera_id for f in frames}),
                            "resolutions": sizes}
    out: dict[str, Any] = {
        "name": scene.name, "format": scene.format, "path": str(scene.path), "splits": splits,
        "resolution": scene.resolution, "time_range": scene.time_range,
        "time_steps": scene.num_time_steps, "points": len(scene.points.xyz),
        "points_source": scene.points.source, "points_have_colour": scene.points.rgb is not None,
        "background": [round(float(x), 4) for x in scene.background], "near": scene.near, "far": scene.far,
    }
    for key in EXTRA_KEYS:
        if key in scene.extra:
            out[key] = scene.extra[key]
    return out


def describe(path: Path | str, **load_options: Any) -> Table:
    """A rich Table describing the dataset at ``path`` (format detected automatically)."""
    fmt = load_options.pop("format", None) or detect_format(path)
    if fmt == "neu3d":
        load_options.setdefault("prefetch", False)  # never decode videos just to describe them
    scene = load_scene(path, format=fmt, **load_options)
    s = summarize(scene)
    table = Table(title=f"{s['name']} ({s['format']})", show_header=False)
    table.add_column("field", style="bold")
    table.add_column("value")
    table.add_row("path", s["path"])
    for name, sp in s["splits"].items():
        res = ", ".join(f"{w}x{h}" for w, h in sp["resolutions"])
        table.add_row(f"{name}", f"{sp['frames']} frames, {sp['cameras']} cameras, {res}")
    table.add_row("resolution (test)", f"{s['resolution'][0]}x{s['resolution'][1]}")
    table.add_row("time range", f"{s['time_range'][0]:.4f} .. {s['time_range'][1]:.4f} "
                                f"({s['time_steps']} time steps)")
    colour = "with colours" if s["points_have_colour"] else "no colours"
    table.add_row("initial points", f"{s['points']} ({colour}) from {s['points_source']}")
    table.add_row("background", str(s["background"]))
    if s["near"] is not None:
        table.add_row("near / far", f"{s['near']:.4g} / {s['far']:.4g}")
    for key in EXTRA_KEYS:
        if key in s:
            table.add_row(key.replace("_", " "), str(s[key]))
    return table


def deep_check(path: Path | str, **load_options: Any) -> tuple[list[str], str]:
    """Decode every image (D-NeRF, HyperNeRF) or every video frame (Neu3D, with the decoder's
    error report) of the scene. Returns (problems, what was checked); nothing is cached."""
    from evalkit.data.scene import DatasetError
    from evalkit.data.video import DecodeReport, iter_frames

    fmt = load_options.pop("format", None) or detect_format(path)
    if fmt == "neu3d":
        load_options.setdefault("prefetch", False)
    scene = load_scene(path, format=fmt, **load_options)
    problems: list[str] = []
    if fmt == "neu3d":
        videos = scene.extra["videos"]
        for v in videos:
            report, n = DecodeReport(), 0
            try:
                for _ in iter_frames(v.info.path, v.backend, report):
                    n += 1
            except DatasetError as exc:
                problems.append(str(exc))
                continue
            if n != v.info.frames:
                problems.append(f"{v.info.path}: decodes to {n} frames, the container says {v.info.frames}")
            if not report.clean:
                problems.append(f"{v.info.path}: {report.summary()}")
            elif not report.checked:
                problems.append(f"{v.info.path}: the {v.backend} backend cannot report decoder errors")
        return problems, f"{len(videos)} videos"
    for f in scene.frames:
        try:
            f.load()
        except (DatasetError, ValueError) as exc:
            problems.append(str(exc))
    return problems, f"{len(scene.frames)} images"


def describe_text(path: Path | str, width: int = 100, **load_options: Any) -> str:
    """``describe`` rendered to plain text."""
    console = Console(width=width, file=io.StringIO(), color_system=None)
    console.print(describe(path, **load_options))
    return console.file.getvalue()
