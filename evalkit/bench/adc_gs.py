"""Frame time of a decoded ADC-GS bitstream, split into the per-frame deformation (F_omega, F_varpi,
Eq. 5) and the rasteriser, over a scene's test cameras.

    python -m evalkit.bench.adc_gs RESULT.evk SCENE_DIR [--repeats 50]

Prints ms per frame for each part and FPS of the whole; run it alone on the GPU.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import torch

from evalkit.codec.container import Bitstream
from evalkit.data.detect import load_scene
from evalkit.methods.adc_gs import ADCGS
from evalkit.render.api import camera_tensors, rasterize
from evalkit.metrics.fps import synced_clock



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
    scene = load_scene(args.scene)
    views = [(f.camera, f.time, *camera_tensors(f.camera, dev)) for f in scene.test]
    bg = torch.as_tensor(decoded.coded.background, dtype=torch.float32, device=dev)
    near = decoded.model.cfg.near_plane
    for cam, t, vm, K in views[:3]:  # warm-up
        rasterize(*decoded.primitives(t), vm, K, cam.width, cam.height, background=bg, near=near)
    deform = raster = 0.0
    n = 0
    for _ in range(args.repeats):
        for cam, t, vm, K in views:
            a = synced_clock(dev)
            prims = decoded.primitives(t)
            b = synced_clock(dev)
            rasterize(*prims, vm, K, cam.width, cam.height, background=bg, near=near)
            c = synced_clock(dev)
            deform += b - a
            raster += c - b
            n += 1
    w, h = views[0][0].width, views[0][0].height
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else "CPU"
    print(f"{args.bitstream}: {decoded.num_primitives()} primitives, {w}x{h}, {name}, decode {decode_s:.2f} s")
    print(f"deformation {1e3 * deform / n:.3f} ms, rasteriser {1e3 * raster / n:.3f} ms, "
          f"total {1e3 * (deform + raster) / n:.3f} ms = {n / (deform + raster):.1f} FPS (synchronised per part)")


if __name__ == "__main__":
    main()
