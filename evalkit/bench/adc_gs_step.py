"""ADC-GS's late training step at a fixed anchor count, split by phase (issue 26: <= 20 min a scene).

    python -m evalkit.bench.adc_gs_step SCENE_DIR [--dataset dnerf] [--rate mid] [--anchors 31000]
        [--steps 300] [--warmup 100] [--profile-steps 20] [--device cuda]

The trainer itself (``adc_gs.training.train``) runs with every stage on from the first step
(deformation, quantisation noise, the rate term; anchors snapped and frozen after step 1,
refinement off), so the anchor count stays at ``--anchors``: the scene's initial points, drawn
with replacement and jittered by a tenth of their nearest-neighbour distance, as the late stage
of a run that has grown that many (31,031 on jumpingjacks at the full schedule).

* wall: ms per step between step ``--warmup`` and ``--warmup + --steps`` (both multiples of
  100, where the trainer reports progress), unsynchronised as training runs; on CUDA again with
  ``cuda_graphs`` toggled (the canonical unit replayed from CUDA graphs or run eagerly).
* split: ``--profile-steps`` steps after ``--warmup`` ones, under ``torch.profiler``; device time per phase (the
  trainer's ``record_function`` ranges: quantise + F_theta, deformation, rasterise, image loss,
  rate, backward, optimiser) and all device time, per step. On CUDA the backward's kernels are
  launched from autograd's own thread, so the "backward" range may hold little of them: all
  device time minus the forward ranges is the backward's upper bound.
"""
from __future__ import annotations

import argparse
import dataclasses
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch
from scipy.spatial import cKDTree

from evalkit.bench.fourdgs import load_bench_scene
from evalkit.data.scene import PointCloud, Scene
from evalkit.methods.adc_gs.config import ADCConfig
from evalkit.methods.adc_gs.training import train
from evalkit.metrics.fps import synced_clock
from evalkit.specs import load_method_spec

PHASE_PREFIX = "adc-gs: "


def late_stage(cfg: ADCConfig, iterations: int) -> ADCConfig:
    """``cfg`` with every stage on from step 1, anchors frozen after step 1, refinement off."""
    return dataclasses.replace(cfg, iterations=iterations, deform_from=0, quant_from=0, rate_from=0,
                               refinement=False, refine_from=0, refine_until=1)


def with_anchors(scene: Scene, n: int, seed: int = 0) -> Scene:
    """The scene with ``n`` initial points: its own, drawn with replacement, each jittered by a
    tenth of its nearest-neighbour distance (copies of one point do not coincide, unless the scene
    repeats a point)."""
    xyz = np.asarray(scene.points.xyz, dtype=np.float64)
    rgb = scene.points.rgb
    rng = np.random.default_rng(seed)
    pick = rng.integers(0, len(xyz), n)
    d, _ = cKDTree(xyz).query(xyz, k=2)
    jitter = rng.normal(size=(n, 3)) * (0.1 * d[pick, 1:2])
    points = PointCloud((xyz[pick] + jitter).astype(np.float32),
                        None if rgb is None else np.asarray(rgb)[pick], source=f"{scene.points.source} x{n} jittered")
    return dataclasses.replace(scene, points=points)


def wall_ms(scene: Scene, cfg: ADCConfig, device: torch.device, warmup: int, steps: int) -> float:
    """Trainer ms per step from step ``warmup`` to ``warmup + steps`` (progress fires every 100)."""
    marks: dict[int, float] = {}

    def progress(step: int, total: int, stats: dict) -> None:
        if step in (warmup, warmup + steps):
            marks[step] = synced_clock(device)

    train(scene, late_stage(cfg, warmup + steps), device, progress=progress)
    return 1e3 * (marks[warmup + steps] - marks[warmup]) / steps


def phase_ms(scene: Scene, cfg: ADCConfig, device: torch.device, warmup: int, steps: int) -> dict[str, float]:
    """Device (or CPU) ms per step by the trainer's phases, over ``steps`` steps profiled after
    ``warmup`` untimed ones."""
    cuda = device.type == "cuda"
    activities = [torch.profiler.ProfilerActivity.CPU] + ([torch.profiler.ProfilerActivity.CUDA] if cuda else [])
    prof = torch.profiler.profile(activities=activities)

    def progress(step: int, total: int, stats: dict) -> None:
        if step == warmup:
            prof.start()

    train(scene, late_stage(cfg, warmup + steps), device, progress=progress)
    prof.stop()
    out: dict[str, float] = defaultdict(float)
    events = prof.key_averages()
    for e in events:
        if e.key.startswith(PHASE_PREFIX):
            us = e.device_time_total if cuda else e.cpu_time_total
            out[e.key[len(PHASE_PREFIX):]] += us / 1e3 / steps
    if cuda:  # kernels launched from autograd's device thread fall outside the main thread's ranges
        total = sum(e.self_device_time_total for e in events) / 1e3 / steps
        out["(all device time)"] = total
    return dict(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("scene", type=Path, help="scene folder")
    ap.add_argument("--dataset", default="dnerf")
    ap.add_argument("--rate", default="mid")
    ap.add_argument("--method", default="adc-gs", help="adc-gs or one of its variants, e.g. adc-gs:unpadded")
    ap.add_argument("--anchors", type=int, default=31000)
    ap.add_argument("--steps", type=int, default=300, help="timed steps (a multiple of 100)")
    ap.add_argument("--warmup", type=int, default=100, help="untimed steps first (a multiple of 100)")
    ap.add_argument("--profile-steps", type=int, default=20)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--resolution-scale", type=float, default=None)
    args = ap.parse_args()
    if args.steps < 100 or args.steps % 100 or args.warmup < 100 or args.warmup % 100:
        raise SystemExit("error: --steps and --warmup must be positive multiples of 100 (the trainer's progress interval)")
    device = torch.device(args.device)
    scene, _ = load_bench_scene(args.scene, args.dataset, device, args.resolution_scale)
    if args.method.partition(":")[0] != "adc-gs":
        raise SystemExit(f"error: --method must be adc-gs or a variant of it, got {args.method!r}")
    mspec = load_method_spec(args.method)
    (rate,) = mspec.rate_points(args.dataset, [args.rate])
    cfg = ADCConfig.from_dict({**mspec.config(args.dataset, args.scene.name), **rate.params})
    scene = with_anchors(scene, args.anchors)
    print(f"{args.method} rate {args.rate} (lambda_e {cfg.lambda_e}): {args.anchors} anchors x {cfg.k} primitives, "
          f"batch {cfg.batch_size}, every stage on, anchors frozen")
    ms = wall_ms(scene, cfg, device, args.warmup, args.steps)
    print(f"wall: {ms:.2f} ms per step (trainer, unsynchronised, cuda_graphs={cfg.cuda_graphs}) -> "
          f"{cfg.iterations * ms / 6e4:.1f} min for {cfg.iterations} steps at this count")
    if device.type == "cuda":  # the same steps with the canonical unit's CUDA graphs toggled
        other = dataclasses.replace(cfg, cuda_graphs=not cfg.cuda_graphs)
        ms2 = wall_ms(scene, other, device, args.warmup, args.steps)
        print(f"wall: {ms2:.2f} ms per step with cuda_graphs={other.cuda_graphs}")
    split = phase_ms(scene, cfg, device, args.warmup, args.profile_steps)
    kind = "device" if device.type == "cuda" else "CPU"
    print(f"split ({kind} ms per step, torch.profiler over {args.profile_steps} steps):")
    for name, v in sorted(split.items(), key=lambda kv: -kv[1]):
        print(f"  {name:<24}{v:8.3f}")


if __name__ == "__main__":
    main()
