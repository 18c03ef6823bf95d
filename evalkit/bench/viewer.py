"""Frame time of the viewer (``evalkit view``) for a decoded model.

    python -m evalkit.bench.viewer RESULT.evk|RECORD.json [--data-root DIR] [--device cuda] [--frames 50]
                                   [--max-side 800]

Decodes the bitstream, then renders ``--frames`` frames through ``evalkit.viewer.render_frame`` (what
the viewer sends: the render, copied to the host and quantised to 8 bits) at the dataset's test
cameras (the record's scene; else a camera 3.5 units from the origin looking at it), cycling the time
over [0, 1). One ``key=value`` line: device, gpu, resolution, frames, ms_per_frame (median; the render
alone and the full frame), fps. PNG encoding and the websocket are not included.
"""
from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from evalkit.data.scene import Camera
from evalkit.viewer import Preset, dataset_presets, fit_size, load_model, render_frame


def _default_preset(size: int) -> Preset:
    from evalkit.render.synthetic import look_at_w2c

    f = 0.5 * size / np.tan(np.radians(26.5))
    K = np.array([[f, 0, size / 2], [0, f, size / 2], [0, 0, 1.0]])
    return Preset("orbit", Camera(K=K, w2c=look_at_w2c(np.array([0.0, 0.0, 3.5]), np.zeros(3)), width=size,
                                  height=size), 0.0)


def _scaled(cam: Camera, max_side: int) -> Camera:
    w, h = fit_size(cam.width, cam.height, max_side)
    if (w, h) == (cam.width, cam.height):
        return cam
    K = cam.K.copy()
    K[0] *= w / cam.width
    K[1] *= h / cam.height
    return Camera(K=K, w2c=cam.w2c, width=w, height=h)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("path", type=Path)
    ap.add_argument("--data-root", type=Path)
    ap.add_argument("--device", default=None)
    ap.add_argument("--frames", type=int, default=50)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--max-side", type=int, default=800)
    a = ap.parse_args(argv)
    device = torch.device(a.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    model, _, record = load_model(a.path, device)
    presets, _ = dataset_presets(record, a.data_root)
    presets = presets or [_default_preset(a.max_side)]
    cams = [_scaled(p.camera, a.max_side) for p in presets]
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    render_ms, frame_ms = [], []
    for i in range(a.warmup + a.frames):
        cam, t = cams[i % len(cams)], (i * 0.137) % 1.0
        sync()
        t0 = time.perf_counter()
        with torch.no_grad():
            model.render(cam, t)
        sync()
        t1 = time.perf_counter()
        render_frame(model, cam, t)
        t2 = time.perf_counter()
        if i >= a.warmup:
            render_ms.append(1000 * (t1 - t0))
            frame_ms.append(1000 * (t2 - t1))
    med = statistics.median(frame_ms)
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else "-"
    print(f"device={device.type} gpu={gpu.replace(' ', '_')} resolution={cams[0].width}x{cams[0].height} "
          f"frames={a.frames} cameras={'test' if presets[0].name != 'orbit' else 'orbit'} "
          f"render_ms={statistics.median(render_ms):.2f} frame_ms={med:.2f} fps={1000 / med:.1f}")


if __name__ == "__main__":  # pragma: no cover
    main()
