"""A finished job's test views as images, to see what its numbers mean.

``write_views`` decodes the job's bitstream (the file beside its record, the decoder reads nothing
else), renders the test frames as ``evalkit run`` evaluated them and writes, per frame, one PNG:
ground truth | render | error (|render - ground truth|, mean over RGB, x4, clipped). The
render panel is the 8-bit image that was scored; each frame's PSNR is recomputed from it and set
beside the record's, so a render that no longer matches its record shows.
"""
from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path
import numpy as np
import torch

from evalkit.metrics.image import psnr, to_uint8


class ViewsError(RuntimeError):
    """Bad input for ``write_views``: the message names the file and the problem."""


ERROR_GAIN = 4.0  # errors of 1/4 of the range and more are white


@dataclass
class ViewImage:
    name: str
    time: float
    psnr: float
    record_psnr: float | None
    path: Path


def image_u8(img: torch.Tensor) -> np.ndarray:
    """(H, W, 3) float in [0, 1] -> uint8 on the host, quantised as the metrics do (``to_uint8`` in
    float64), computed where ``img`` lives so a GPU render crosses to the host as bytes."""
    return to_uint8(img.double()).cpu().numpy()


def psnr_u8(a: np.ndarray, b: np.ndarray) -> float:
    """The metrics' PSNR of two 8-bit images (in float64)."""
    return float(psnr(torch.from_numpy(a / 255.0), torch.from_numpy(b / 255.0)))


def panel(gt: np.ndarray, render: np.ndarray) -> np.ndarray:
    """ground truth | render | error, side by side (uint8, (H, 3W, 3))."""
    err = np.abs(render.astype(np.float32) - gt.astype(np.float32)).mean(axis=2) * ERROR_GAIN
    err = np.clip(np.rint(err), 0, 255).astype(np.uint8)
    return np.concatenate([gt, render, np.repeat(err[:, :, None], 3, axis=2)], axis=1)


def record_scene(record, data_root: Path | None):
    """The scene a record was evaluated on (its dataset, evaluation split and image scale) under
    ``data_root``; ``ViewsError`` names the folder when it is missing or loads at another size."""
    from evalkit.data.scene import DatasetError
    from evalkit.runner import default_cache_dir, default_data_root, ensure_synthetic, protocol_scene
    from evalkit.specs import load_dataset_spec

    dspec = load_dataset_spec(record.dataset)
    if dspec.generated:  # where ``evalkit run`` puts the built-in scenes
        data_root = data_root or default_cache_dir() / "data"
        ensure_synthetic(dspec, data_root)
    data_root = data_root or default_data_root()
    scene_dir = data_root / dspec.folder / record.scene
    if not scene_dir.is_dir():
        raise ViewsError(f"{scene_dir}: scene folder not found (the record is of {record.dataset}/{record.scene}; "
                         "give the --data-root it was run with)")
    # The loader's own default where the spec sets no scale and the run added none, as the runner.
    scale = None if dspec.resolution_scale is None and record.resolution_scale == 1.0 else record.resolution_scale
    try:
        scene = protocol_scene(scene_dir, dspec, scale, record.eval_split)
    except DatasetError as exc:
        raise ViewsError(str(exc)) from None
    if not scene.test:
        raise ViewsError(f"{scene_dir}: the scene has no test frames")
    size = [scene.test[0].camera.width, scene.test[0].camera.height]
    if record.resolution and list(record.resolution) != size:
        raise ViewsError(f"{scene_dir}: test views load at {size[0]}x{size[1]}, the record was evaluated at "
                         f"{record.resolution[0]}x{record.resolution[1]}")
    return scene


def write_views(record_path: Path, data_root: Path | None, out: Path, *, every: int = 1,
                device: torch.device | None = None, max_frames: int | None = None) -> list[ViewImage]:
    """Render every ``every``-th test frame of the job recorded at ``record_path`` into ``out``
    (``<frame>.png`` panels and ``views.csv``); returns what was written. ``max_frames``: at most
    that many of those frames, evenly spread from the first to the last."""
    from evalkit.codec.container import Bitstream, BitstreamError
    from evalkit.methods.base import ContractError
    from evalkit.methods.registry import UnknownMethod, get_method
    from evalkit.results import RecordError, read_record

    if every < 1:
        raise ViewsError(f"--every must be at least 1, not {every}")
    try:
        record = read_record(record_path)
    except RecordError as exc:
        raise ViewsError(str(exc)) from None
    if record.status != "ok":
        raise ViewsError(f"{record_path}: the job did not finish ({record.status}: {record.error}); nothing to render")
    bits_path = Path(record_path).with_suffix(".evk")
    if not bits_path.is_file():
        raise ViewsError(f"{bits_path}: the record's bitstream is missing (records kept without their "
                         ".evk, as under results/reference, cannot be rendered)")
    scene = record_scene(record, data_root)
    device = device or torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        bits = Bitstream.read(bits_path)
        model = get_method(bits.header.get("method", "?")).decode(bits, device, source=str(bits_path))
    except (BitstreamError, UnknownMethod, ContractError) as exc:
        raise ViewsError(str(exc)) from None

    from PIL import Image

    recorded = {f["name"]: f.get("psnr") for f in record.per_frame or []}
    out.mkdir(parents=True, exist_ok=True)
    written: list[ViewImage] = []
    with torch.no_grad():
        frames = scene.test[::every]
        if max_frames is not None and 0 < max_frames < len(frames):
            frames = [frames[round(i * (len(frames) - 1) / max(max_frames - 1, 1))] for i in range(max_frames)]
        for frame in frames:
            render = image_u8(model.render(frame.camera, frame.time).float().cpu())
            gt = image_u8(torch.from_numpy(frame.load()))
            path = out / f"{frame.image_name.replace('/', '_')}.png"
            Image.fromarray(panel(gt, render)).save(path)
            view = ViewImage(frame.image_name, float(frame.time), psnr_u8(render, gt),
                             recorded.get(frame.image_name), path)
            written.append(view)
    with open(out / "views.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["frame", "time", "psnr", "record_psnr", "file"])
        for v in written:
            w.writerow([v.name, v.time, v.psnr, "" if v.record_psnr is None else v.record_psnr, v.path.name])
    return written
