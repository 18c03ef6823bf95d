"""Where 4DGS time goes: a synchronised per-phase breakdown of fine-stage training steps and of
rendering a decoded model (deformation vs rasterisation).

    python -m evalkit.bench.fourdgs SCENE_DIR [--dataset dnerf] [--steps 300] [--bitstream X.evk]

Training phases are timed with a device synchronisation around each phase, which itself slows
the loop; the per-phase shares are the point, the unsynchronised training wall-clock time is in
the run's record. With ``--bitstream`` the decoded model's render time is split into the
deformation network and the rasteriser, over all test views.
"""
from __future__ import annotations

import argparse
import random
import time
from collections import defaultdict
from pathlib import Path

import torch
from gsplat.strategy import DefaultStrategy

from evalkit.codec.container import Bitstream
from evalkit.data.detect import load_scene
from evalkit.data.scene import DatasetError, Scene
from evalkit.methods.fourdgs import codec
from evalkit.methods.fourdgs.adam_steps import AdamSteps
from evalkit.methods.fourdgs.config import FourDGSConfig
from evalkit.methods.fourdgs.plane_regulariser import PlaneRegulariser
from evalkit.methods.fourdgs.trainer import ImageBank, _deformation_optimizer, _optimizers, build_model
from evalkit.render import rasterize
from evalkit.specs import load_dataset_spec, load_method_spec


def _sync(device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()


def train_breakdown(scene, cfg: FourDGSConfig, device: torch.device, steps: int,
                    warmup: int = 20) -> dict[str, float]:
    """Mean ms per fine-stage step for each phase (a fresh model, no coarse stage), over ``steps``
    steps after ``warmup`` untimed ones (the first calls compile and autotune the Triton kernels)."""
    model = build_model(scene, cfg, device)
    frames = scene.train
    t0 = _sync(device)
    bank = ImageBank(frames, device)
    load_s = _sync(device) - t0
    extent = scene.camera_extent()
    opts = _optimizers(model, cfg, extent)
    dopt = _deformation_optimizer(model.deformation, cfg, extent)
    optimizers = AdamSteps([*opts.values(), dopt])  # as the trainer steps them
    regulariser = PlaneRegulariser(model.deformation.grid, cfg.plane_tv_weight, cfg.time_smoothness_weight,
                                   cfg.l1_time_planes)
    strategy = DefaultStrategy(refine_start_iter=50, refine_stop_iter=10**9, refine_every=100, verbose=False)
    state = strategy.initialize_state(scene_scale=extent)
    acc: dict[str, float] = defaultdict(float)
    for step in range(1, warmup + steps + 1):
        if step == warmup + 1:
            acc.clear()
        i = random.randrange(len(frames))
        f = frames[i]
        t0 = _sync(device)
        gt = bank.get(i)
        t = _sync(device)
        acc["data"] += t - t0
        acts = model.activated(f.time)
        t1 = _sync(device)
        acc["deformation fwd"] += t1 - t
        out = rasterize(*acts, *model._camera_tensors(f.camera), f.camera.width, f.camera.height,
                        sh_degree=cfg.sh_degree, background=model.background)
        strategy.step_pre_backward(model.gaussians, opts, state, step, out.info)
        t2 = _sync(device)
        acc["rasterise fwd"] += t2 - t1
        loss = (out.image - gt).abs().mean() + regulariser()
        t3 = _sync(device)
        acc["loss + regularisers"] += t3 - t2
        loss.backward()
        t4 = _sync(device)
        acc["backward"] += t4 - t3
        with torch.no_grad():
            strategy.step_post_backward(model.gaussians, opts, state, step, out.info, packed=False)
        t5 = _sync(device)
        acc["densification"] += t5 - t4
        optimizers.step()
        optimizers.zero_grad()
        acc["optimiser"] += _sync(device) - t5
    out = {k: 1000.0 * v / steps for k, v in acc.items()}
    out["image upload (once, s)"] = load_s
    out["gaussians at end"] = float(model.num_primitives())
    return out


@torch.no_grad()
def render_breakdown(bits_path: Path, scene, device: torch.device, repeats: int = 5) -> dict[str, float]:
    model, _ = codec.decode(Bitstream.read(bits_path), device, source=str(bits_path))
    frames = scene.test
    cams = [model._camera_tensors(f.camera) for f in frames]
    for f in frames[:3]:
        model.render(f.camera, f.time)
    deform_s = raster_s = full_s = 0.0
    for _ in range(repeats):
        for f, (vm, K) in zip(frames, cams):
            t0 = _sync(device)
            acts = model.activated(f.time)  # eager, also when render() replays the CUDA graph
            t1 = _sync(device)
            rasterize(*acts, vm, K, f.camera.width, f.camera.height, sh_degree=model.sh_degree,
                      background=model.background)
            t2 = _sync(device)
            model.render(f.camera, f.time)
            t3 = _sync(device)
            deform_s += t1 - t0
            raster_s += t2 - t1
            full_s += t3 - t2
    n = repeats * len(frames)
    return {"deformation ms/frame": 1000 * deform_s / n, "rasterise ms/frame": 1000 * raster_s / n,
            "render() ms/frame (synchronised per frame)": 1000 * full_s / n,
            "gaussians": float(model.num_primitives())}


def load_bench_scene(scene_dir: Path, dataset: str, device: torch.device,
                     resolution_scale: float | None = None) -> tuple[Scene, FourDGSConfig]:
    """The scene as the dataset spec loads it and 4DGS's protocol configuration for it; prints
    the device and scene size (shared by the 4DGS benchmarks)."""
    dspec = load_dataset_spec(dataset)
    cfg = FourDGSConfig.from_dict(load_method_spec("4dgs").config(dataset, scene_dir.name))
    try:
        scene = load_scene(scene_dir, format=dspec.format, background=dspec.background,
                           resolution_scale=resolution_scale or dspec.resolution_scale)
    except DatasetError as e:  # a benchmark's user wants the file and the problem, not a traceback
        raise SystemExit(f"error: {e}") from None
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(f"device: {name}; scene {scene_dir.name} {scene.resolution[0]}x{scene.resolution[1]}, "
          f"{len(scene.train)} train views")
    return scene, cfg


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("scene", type=Path)
    ap.add_argument("--dataset", default="dnerf")
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--warmup", type=int, default=20, help="untimed steps first (kernel compilation)")
    ap.add_argument("--bitstream", type=Path)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--resolution-scale", type=float, default=None)
    args = ap.parse_args(argv)
    device = torch.device(args.device)
    scene, cfg = load_bench_scene(args.scene, args.dataset, device, args.resolution_scale)
    for k, v in train_breakdown(scene, cfg, device, args.steps, args.warmup).items():
        print(f"  train {k:28s} {v:9.3f}" + ("" if "once" in k or "gaussians" in k else " ms/step"))
    if args.bitstream:
        for k, v in render_breakdown(args.bitstream, scene, device).items():
            print(f"  render {k:44s} {v:9.3f}")


if __name__ == "__main__":
    main()
