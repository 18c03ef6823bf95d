"""Where 4DGS time goes: a synchronised per-phase breakdown of fine-stage training steps and of
rendering a decoded model (deformation vs rasterisation).

    python -m evalkit.bench.fourdgs SCENE_DIR [--dataset dnerf] [--coarse 3000] [--grow-to 95000]
        [--steps 300] [--warmup 20] [--bitstream X.evk]

The fine steps start from the trainer's own coarse stage (``--coarse`` iterations; 0: the freshly
initialised Gaussians, which on D-NeRF's random cloud are few and large and make the rasteriser's
backward far slower than it is in training), optionally grown by splitting to ``--grow-to``
Gaussians (lego ends near 95k). Training phases are timed with a device synchronisation around each phase, which itself slows
the loop; the per-phase shares are the point, the unsynchronised training wall-clock time is in
the run's record. With ``--bitstream`` the decoded model's render time is split into the
deformation network and the rasteriser, over all test views.
"""
from __future__ import annotations

import argparse
import math
import random
import statistics
from collections import defaultdict
from dataclasses import replace
from pathlib import Path

import torch
import torch.nn as nn
from gsplat.strategy import DefaultStrategy

from evalkit.codec.container import Bitstream
from evalkit.data.detect import load_scene
from evalkit.data.scene import DatasetError, Scene
from evalkit.methods.fourdgs import codec
from evalkit.train.adam_steps import AdamSteps
from evalkit.models.fourdgs.config import FourDGSConfig
from evalkit.models.fourdgs.plane_regulariser import PlaneRegulariser
from evalkit.models.fourdgs.model import FourDGSModel
from evalkit.train.images import ImageBank
from evalkit.models.fourdgs.trainer import _deformation_optimizer, _optimizers, build_model, train
from evalkit.render import rasterize
from evalkit.specs import load_dataset_spec, load_method_spec
from evalkit.metrics.fps import synced_clock



def train_breakdown(scene, cfg: FourDGSConfig, device: torch.device, steps: int, warmup: int = 20,
                    model: FourDGSModel | None = None, bank: ImageBank | None = None,
                    ) -> tuple[dict[str, tuple[float, float]], dict[str, float]]:
    """Per phase of a fine-stage step, (mean, median) ms over ``steps`` steps after ``warmup``
    untimed ones (the first calls compile the Triton kernels), from ``model`` (default: freshly
    initialised Gaussians); and extras (the Gaussian count at the end, the image upload when this
    call made the bank). A mean far above its median means a few slow steps, not a steady cost."""
    if steps < 1 or warmup < 0:
        raise ValueError(f"need steps >= 1 and warmup >= 0, got {steps} and {warmup}")
    model = model if model is not None else build_model(scene, cfg, device)
    model.train()
    frames = scene.train
    load_s = None
    if bank is None:
        t0 = synced_clock(device)
        bank = ImageBank(frames, device)
        load_s = synced_clock(device) - t0
    extent = scene.camera_extent()
    opts = _optimizers(model, cfg, extent)
    dopt = _deformation_optimizer(model.deformation, cfg, extent)
    optimizers = AdamSteps([*opts.values(), dopt])  # as the trainer steps them
    regulariser = PlaneRegulariser(model.deformation.grid, cfg.plane_tv_weight, cfg.time_smoothness_weight,
                                   cfg.l1_time_planes)
    strategy = DefaultStrategy(refine_start_iter=50, refine_stop_iter=10**9, refine_every=100, verbose=False)
    state = strategy.initialize_state(scene_scale=extent)
    acc: dict[str, list[float]] = defaultdict(list)  # seconds per step, per phase
    for step in range(1, warmup + steps + 1):
        if step == warmup + 1:  # the warm-up's times are dropped
            acc.clear()
        i = random.randrange(len(frames))
        f = frames[i]
        t0 = synced_clock(device)
        gt = bank.get(i)
        t = synced_clock(device)
        acc["data"].append(t - t0)
        acts = model.activated(f.time)
        t1 = synced_clock(device)
        acc["deformation fwd"].append(t1 - t)
        out = rasterize(*acts, *model._camera_tensors(f.camera), f.camera.width, f.camera.height,
                        sh_degree=cfg.sh_degree, background=model.background)
        strategy.step_pre_backward(model.gaussians, opts, state, step, out.info)
        t2 = synced_clock(device)
        acc["rasterise fwd"].append(t2 - t1)
        loss = (out.image - gt).abs().mean() + regulariser()
        t3 = synced_clock(device)
        acc["loss + regularisers"].append(t3 - t2)
        loss.backward()
        t4 = synced_clock(device)
        acc["backward"].append(t4 - t3)
        with torch.no_grad():
            strategy.step_post_backward(model.gaussians, opts, state, step, out.info, packed=False)
        t5 = synced_clock(device)
        acc["densification"].append(t5 - t4)
        optimizers.step()
        optimizers.zero_grad()
        acc["optimiser"].append(synced_clock(device) - t5)
    phases = {k: (1000.0 * statistics.fmean(v), 1000.0 * statistics.median(v)) for k, v in acc.items()}
    extras = {"gaussians at end": float(model.num_primitives())}
    if load_s is not None:
        extras["image upload (once, s)"] = load_s
    return phases, extras


@torch.no_grad()
def grow(model: FourDGSModel, target: int, seed: int = 0) -> None:
    """Split random Gaussians (each into two, offset by a sample of itself, scales / 1.6) until
    ``target`` Gaussians exist."""
    g = model.gaussians
    gen = torch.Generator(device=g["means"].device).manual_seed(seed)
    while model.num_primitives() < target:
        n = model.num_primitives()
        k = min(n, target - n)
        idx = torch.randperm(n, generator=gen, device=g["means"].device)[:k]
        scales = torch.exp(g["scales"][idx])
        offset = torch.randn(k, 3, generator=gen, device=scales.device) * scales
        new = {name: g[name][idx].clone() for name in g.keys()}
        new["means"] = new["means"] + offset
        new["scales"] = new["scales"] - math.log(1.6)
        for name in list(g.keys()):
            data = g[name].data.clone()
            if name == "scales":
                data[idx] -= math.log(1.6)
            g[name] = nn.Parameter(torch.cat([data, new[name]], 0))


def prepared_model(scene, cfg: FourDGSConfig, device: torch.device, coarse: int, grow_to: int,
                   bank: ImageBank) -> FourDGSModel:
    """A model as training has it at the start of the fine stage (``coarse`` iterations of the
    trainer's coarse stage), grown by splitting to ``grow_to`` Gaussians if that is larger."""
    if coarse > 0:
        model, stats = train(scene, replace(cfg, coarse_iterations=coarse), device, stages=("coarse",), bank=bank)
        print(f"coarse stage: {coarse} iterations in {stats[0].seconds:.1f} s -> {model.num_primitives()} Gaussians")
    else:
        model = build_model(scene, cfg, device)
    if grow_to > model.num_primitives():
        grow(model, grow_to)
        print(f"grown to {model.num_primitives()} Gaussians by splitting")
    return model


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
            t0 = synced_clock(device)
            acts = model.activated(f.time)  # eager, also when render() replays the CUDA graph
            t1 = synced_clock(device)
            rasterize(*acts, vm, K, f.camera.width, f.camera.height, sh_degree=model.sh_degree,
                      background=model.background)
            t2 = synced_clock(device)
            model.render(f.camera, f.time)
            t3 = synced_clock(device)
            deform_s += t1 - t0
            raster_s += t2 - t1
            full_s += t3 - t2
    n = repeats * len(frames)
    return {"deformation ms/frame": 1000 * deform_s / n, "rasterise ms/frame": 1000 * raster_s / n,
            "render() ms/frame (synchronised per frame)": 1000 * full_s / n,
            "gaussians": float(model.num_primitives())}


def add_scene_arguments(ap: argparse.ArgumentParser, coarse: int = 3000, warmup: int | None = 20) -> None:
    """The arguments the 4DGS step benchmarks share: the scene and how the model to time is made
    (``--coarse`` iterations, grown to ``--grow-to``), ``--steps`` (and ``--warmup`` unless None)."""
    ap.add_argument("scene", type=Path, help="scene folder")
    ap.add_argument("--dataset", default="dnerf")
    ap.add_argument("--coarse", type=int, default=coarse, help="coarse-stage iterations first (0: fresh model)")
    ap.add_argument("--grow-to", type=int, default=0, help="split Gaussians up to this count first")
    ap.add_argument("--steps", type=int, default=300, help="timed steps")
    if warmup is not None:
        ap.add_argument("--warmup", type=int, default=warmup, help="untimed steps first (kernel compilation)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--resolution-scale", type=float, default=None)


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
    add_scene_arguments(ap)
    ap.add_argument("--bitstream", type=Path)
    args = ap.parse_args(argv)
    if args.steps < 1 or args.warmup < 0 or args.coarse < 0:
        ap.error("--steps must be >= 1, --warmup and --coarse >= 0")
    device = torch.device(args.device)
    scene, cfg = load_bench_scene(args.scene, args.dataset, device, args.resolution_scale)
    t0 = synced_clock(device)
    bank = ImageBank(scene.train, device)
    print(f"  data: training images to the device once, {synced_clock(device) - t0:.3f} s")
    model = prepared_model(scene, cfg, device, args.coarse, args.grow_to, bank)
    phases, extras = train_breakdown(scene, cfg, device, args.steps, args.warmup, model, bank)
    for k, (mean, median) in phases.items():
        print(f"  train {k:28s} {mean:9.3f} ms/step mean, {median:9.3f} median")
    for k, v in extras.items():
        print(f"  train {k:28s} {v:9.3f}")
    if args.bitstream:
        for k, v in render_breakdown(args.bitstream, scene, device).items():
            print(f"  render {k:44s} {v:9.3f}")


if __name__ == "__main__":
    main()
