"""D-NeRF (Blender synthetic) loader.

On disk: ``transforms_{train,val,test}.json`` with ``camera_angle_x`` and ``frames[]`` of
``file_path`` (no extension, ``.png`` appended), ``time`` and ``transform_matrix`` (camera-to-
world with Blender/OpenGL camera axes: x right, y up, z backwards). Images are RGBA and are
composited on the background (white by default). The principal point is the exact image
centre (``cx = W / 2`` with pixel centres at +0.5). Times are divided by their maximum over
train + test. Initial points: ``fused.ply`` if present, else uniform random points in
[-1.3, 1.3]^3 (seeded), as the 4DGaussians reference does.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence

import numpy as np

from evalkit.data.common import (WHITE, as_matrix, parse_background, random_points_in_box,
                                 read_json, require)
from evalkit.data.images import ImageCache, png_size, read_rgb
from evalkit.data.ply import read_ply
from evalkit.data.scene import Camera, DatasetError, Frame, Scene
from evalkit.data.validate import fov_angle, number, rigid

SPLITS = ("train", "val", "test")
# OpenGL/Blender camera axes -> OpenCV camera axes (flip y and z), applied on the right of c2w.
GL_TO_CV = np.diag([1.0, -1.0, -1.0, 1.0])


def is_dnerf(path: Path) -> bool:
    return (path / "transforms_train.json").is_file()


def _image_path(root: Path, file_path: str) -> Path:
    rel = file_path[2:] if file_path.startswith("./") else file_path
    p = root / rel
    return p if p.suffix.lower() == ".png" else root / (rel + ".png")


def load_dnerf(path: Path | str, *, resolution_scale: float | None = None,
               background: Sequence[float] | np.ndarray | str | None = None,
               init_points: int = 2000, seed: int = 0, image_cache: int = 8) -> Scene:
    root = Path(path)
    if not root.is_dir():
        raise DatasetError(root, "dataset folder is missing")
    scale = 1.0 if resolution_scale is None else float(resolution_scale)
    if not 0 < scale <= 1.0:
        raise ValueError(f"resolution_scale must be in (0, 1], got {scale}")
    bg = parse_background(background, WHITE)

    raw: list[tuple[str, Path, float, np.ndarray, float, Path]] = []  # split, img, t, c2w, angle, json
    for split in SPLITS:
        jpath = root / f"transforms_{split}.json"
        if split == "val" and not jpath.is_file():
            continue
        meta = read_json(jpath)
        angle_x = fov_angle(require(meta, "camera_angle_x", jpath), jpath, "camera_angle_x")
        frames = require(meta, "frames", jpath, list)
        if not frames and split != "val":
            raise DatasetError(jpath, "'frames' is empty")
        for i, fr in enumerate(frames):
            where = f"frames[{i}]"
            if not isinstance(fr, dict):
                raise DatasetError(jpath, f"{where} should be an object, got {type(fr).__name__}")
            fp = require(fr, "file_path", jpath, str)
            t = number(require(fr, "time", jpath), jpath, f"{where}.time", low=0.0)
            c2w = as_matrix(require(fr, "transform_matrix", jpath), (4, 4), jpath,
                            f"{where}.transform_matrix")
            rigid(c2w, jpath, f"{where}.transform_matrix")
            if np.abs(c2w[3] - [0, 0, 0, 1]).max() > 1e-6:
                raise DatasetError(jpath, f"{where}.transform_matrix: last row {c2w[3].tolist()} is not [0, 0, 0, 1]")
            raw.append((split, _image_path(root, fp), float(t), c2w, angle_x, jpath))

    # Image sizes from the PNG headers (cheap); every image must match the first.
    sizes = {}
    for split, img, *_ in raw:
        sizes[img] = png_size(img)
    ref_img, ref_size = raw[0][1], sizes[raw[0][1]]
    for img, sz in sizes.items():
        if sz != ref_size:
            raise DatasetError(img, f"image is {sz[0]}x{sz[1]} but {ref_img.name} (and the first "
                                    f"frames) are {ref_size[0]}x{ref_size[1]}")
    W, H = ref_size
    Wo, Ho = max(1, round(W * scale)), max(1, round(H * scale))

    max_t = max(t for s, _, t, *_ in raw if s in ("train", "test"))
    cache = ImageCache(image_cache)
    out_size = (Wo, Ho) if (Wo, Ho) != (W, H) else None
    frames_out: list[Frame] = []
    for split, img, t, c2w_gl, angle_x, jpath in raw:
        focal = 0.5 * W / math.tan(0.5 * angle_x)
        K = np.array([[focal * Wo / W, 0.0, Wo / 2.0],
                      [0.0, focal * Ho / H, Ho / 2.0],
                      [0.0, 0.0, 1.0]])
        c2w_cv = c2w_gl @ GL_TO_CV
        w2c = np.linalg.inv(c2w_cv)
        time = t / max_t if max_t > 0 else 0.0
        if time > 1.0:
            raise DatasetError(jpath, f"time {t:g} of {img.name} is beyond the train/test range (max {max_t:g})")
        frames_out.append(Frame(
            camera=Camera(K=K, w2c=w2c, width=Wo, height=Ho),
            time=float(time), split=split,
            camera_id=f"{split}_{img.stem}", image_name=img.stem,
            _loader=lambda p=img: cache.get(p, lambda: read_rgb(p, bg, out_size)),
        ))

    fused = root / "fused.ply"
    points = read_ply(fused) if fused.is_file() else random_points_in_box(init_points, -1.3, 1.3, seed)
    times = {round(f.time, 6) for f in frames_out if f.split in ("train", "test")}
    return Scene(name=root.name, format="dnerf", path=root, frames=frames_out, background=bg,
                 points=points, near=None, far=None, num_time_steps=len(times),
                 extra={"max_time": max_t, "source_size": (W, H), "image_cache": cache})
