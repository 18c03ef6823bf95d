"""Frame time of a decoded ADC-GS bitstream, split into the per-frame primitives (deformation,
Eq. 5) and the rasteriser, over a scene's test cameras.

    python -m evalkit.bench.adc_gs RESULT.evk SCENE_DIR [--repeats 50]

Prints ms per frame for each part and FPS of the whole, the primitives from the path renders
use (``fast_frame``: a CUDA graph on GPU), and for comparison the module path's primitives time
(``ADCModel.at_time``, not part of the total); run it alone on the GPU.
"""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Callable

import torch

from evalkit.codec.container import Bitstream
from evalkit.data.detect import load_scene
from evalkit.methods.adc_gs import ADCGS
from evalkit.render.api import camera_tensors, rasterize
from evalkit.metrics.fps import synced_clock


def time_primitives(fn: Callable[[float], tuple], times: list[float], repeats: int, dev: torch.device) -> float:
    """Mean seconds of ``fn(t)`` over ``repeats`` passes of ``times`` (after one warm-up pass)."""
    for t in times:
        fn(t)
    total = 0.0
    for _ in range(repeats):
        for t in times:
            a = synced_clock(dev)
            fn(t)
            total += synced_clock(dev) - a
    return total / (repeats * len(times))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("bitstream", type=Path)
    ap.add_argument("scene", type=Path)
    ap.add_argument("--repeats", type=int, default=50)
    args = ap.parse_args()
    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    t0 = synced_clock(dev)
    decoded = ADCGS().decode(Bitstream.read(args.bitstream), dev, str(args.bitstream))
    decode_s = synced_clock(dev) - t0
    renderer = decoded.frame_renderer
    scene = load_scene(args.scene)
    views = [(f.camera, f.time, *camera_tensors(f.camera, dev)) for f in scene.test]
    bg = torch.as_tensor(decoded.coded.background, dtype=torch.float32, device=dev)
    near = decoded.model.cfg.near_plane
    for cam, t, vm, K in views[:3]:  # warm-up
        rasterize(*renderer.frame(t), vm, K, cam.width, cam.height, background=bg, near=near)
    deform = raster = 0.0
    n = 0
    for _ in range(args.repeats):
        for cam, t, vm, K in views:
            a = synced_clock(dev)
            prims = renderer.frame(t)  # CUDA-graph buffers: consumed by the rasteriser before the next frame
            b = synced_clock(dev)
            rasterize(*prims, vm, K, cam.width, cam.height, background=bg, near=near)
            c = synced_clock(dev)
            deform += b - a
            raster += c - b
            n += 1
    module_s = time_primitives(renderer.module_primitives, [v[1] for v in views], args.repeats, dev)
    w, h = views[0][0].width, views[0][0].height
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else "CPU"
    path = f"fast path: {renderer.fast.graph_status}" if renderer.fast is not None else "module path"
    print(f"{args.bitstream}: {decoded.num_primitives()} primitives, {w}x{h}, {name}, decode {decode_s:.2f} s")
    print(f"deformation {1e3 * deform / n:.3f} ms ({path}), rasteriser {1e3 * raster / n:.3f} ms, "
          f"total {1e3 * (deform + raster) / n:.3f} ms = {n / (deform + raster):.1f} FPS (synchronised per part)")
    print(f"module-path deformation for comparison: {1e3 * module_s:.3f} ms (ADCModel.at_time, not in the total)")


if __name__ == "__main__":
    main()
