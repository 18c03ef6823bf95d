"""Where 4DGS-CC training time goes: the rate terms (NVCC with and without the CUDA-graph
recurrence, VQCC), the k-means start of VQ, and whole fine-stage steps against plain 4DGS steps.

    python -m evalkit.bench.fourdgs_cc SCENE_DIR [--dataset dnerf] [--rate high] [--steps 300]
                                       [--profile]

A short coarse stage (``--coarse`` iterations) gives a realistic Gaussian set; rate terms are
timed synchronised (forward + backward); the fine-stage comparison runs the same number of steps
of both methods from the same coarse model, VQ active from the first step. ``--profile`` prints
the busiest operators of the 4DGS-CC steps (torch.profiler).
"""
from __future__ import annotations

import argparse
import copy
from dataclasses import replace

import torch

from evalkit.data.detect import load_scene
from evalkit.methods.base import Budget, TrainContext
from evalkit.train.images import ImageBank
from evalkit.models.fourdgs.trainer import train
from evalkit.methods.fourdgs_cc.config import split_config
from evalkit.methods.fourdgs_cc.model import FourDGSCCModel
from evalkit.methods.fourdgs_cc.training import fine_stage
from evalkit.specs import load_method_spec
from evalkit.metrics.fps import synced_clock



def _time(fn, device: torch.device, reps: int, warmup: int = 3) -> float:
    for _ in range(warmup):
        fn()
    t0 = synced_clock(device)
    for _ in range(reps):
        fn()
    return (synced_clock(device) - t0) / reps * 1e3


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("scene_dir")
    ap.add_argument("--dataset", default="dnerf")
    ap.add_argument("--rate", default="high")
    ap.add_argument("--coarse", type=int, default=1000)
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--reps", type=int, default=30)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--profile", action="store_true")
    ap.add_argument("--sync-debug", action="store_true", help="list where the loop synchronises (CUDA)")
    a = ap.parse_args(argv)
    device = torch.device(a.device)

    scene = load_scene(a.scene_dir)
    name = scene.path.name
    spec = load_method_spec("4dgs-cc")
    rate = spec.rate_points(a.dataset, [a.rate])[0]
    base_cfg = load_method_spec("4dgs").config(a.dataset, name)
    fcfg, cc = split_config(base_cfg, {**spec.config(a.dataset, name), **rate.params})
    fcfg = replace(fcfg, coarse_iterations=a.coarse)
    print(f"scene {name}: {len(scene.train)} train views, resolution {fcfg.resolution}, "
          f"codebook {cc.codebook_size}, lambda_e {cc.lambda_e}, device {device}")

    t0 = synced_clock(device)
    base, _ = train(scene, fcfg, device, stages=("coarse",))
    print(f"coarse stage: {a.coarse} iterations in {synced_clock(device) - t0:.1f} s, {base.num_primitives()} Gaussians")

    model = FourDGSCCModel(copy.deepcopy(base), cc)
    model.vq.pending = "init"
    t0 = synced_clock(device)
    model.canonical_sh()
    print(f"VQ start (k-means++ + {cc.kmeans_iters} Lloyd iterations, K={cc.codebook_size}): "
          f"{synced_clock(device) - t0:.2f} s")

    def rate_step():
        terms = model.rate_terms(cc.quantization)
        loss = sum(bits / n for bits, n in terms.values())
        loss.backward()

    # rate_terms computes every term the model has in one call (one CUDA graph): a term alone is
    # timed with the other coder taken off the model for the measurement.
    graphs = model._graphs
    for enabled in (True, False):
        graphs.enabled = enabled
        for label, off in (("NVCC + VQCC", None), ("NVCC alone", "vqcc"), ("VQCC alone", "nvcc")):
            kept = getattr(model, off) if off else None
            if off:
                setattr(model, off, None)
            try:
                ms = _time(rate_step, device, a.reps)
            finally:
                if off:
                    setattr(model, off, kept)
            print(f"rate fwd+bwd, {label:11s}, CUDA graphs {'on ' if enabled else 'off'}: {ms:7.2f} ms"
                  + (f"  (capture failed: {graphs.failed})" if enabled and graphs.failed else ""))
    graphs.enabled = cc.cuda_graphs
    for p in model.parameters():
        p.grad = None

    # Whole fine-stage steps: 4DGS vs 4DGS-CC from the same coarse model, VQ from step 1.
    short = replace(fcfg, iterations=a.steps)
    ctx = TrainContext(device=device, budget=Budget(), config={})
    bank = ImageBank(scene.train, device)
    t0 = synced_clock(device)
    train(scene, short, device, model=copy.deepcopy(base), stages=("fine",), bank=bank)
    plain = (synced_clock(device) - t0) / a.steps * 1e3
    cc_short = replace(cc, vq_start=1)
    t0 = synced_clock(device)
    if a.profile:
        from torch.profiler import ProfilerActivity, profile
        acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
        with profile(activities=acts) as prof:
            fine_stage(scene, short, cc_short, copy.deepcopy(base), ctx, bank=bank)
    else:
        fine_stage(scene, short, cc_short, copy.deepcopy(base), ctx, bank=bank)
    withcc = (synced_clock(device) - t0) / a.steps * 1e3
    print(f"fine-stage step ({a.steps} steps, densification on): 4DGS {plain:.2f} ms, 4DGS-CC {withcc:.2f} ms "
          f"(includes the k-means start once)")
    if a.profile:
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=25))
    if a.sync_debug and device.type == "cuda":
        sync_sources(scene, replace(fcfg, iterations=40), cc_short, base, ctx, bank)


def sync_sources(scene, fcfg, cc, base, ctx, bank) -> None:
    """Where the training loop waits for the GPU: each synchronising call, by its evalkit frame."""
    import traceback
    import warnings
    from collections import Counter

    seen: Counter[str] = Counter()

    def record(message, category, filename, lineno, file=None, line=None):
        frames = [f for f in traceback.extract_stack() if "evalkit" in f.filename and "bench" not in f.filename]
        where = " <- ".join(f"{f.filename.split('evalkit/')[-1]}:{f.lineno}" for f in reversed(frames[-3:]))
        seen[f"{str(message)[:60]} @ {where}"] += 1

    torch.cuda.set_sync_debug_mode("warn")
    try:
        with warnings.catch_warnings():  # restores showwarning on exit
            warnings.simplefilter("always")
            warnings.showwarning = record
            fine_stage(scene, fcfg, cc, copy.deepcopy(base), ctx, bank=bank)
    finally:
        torch.cuda.set_sync_debug_mode(0)
    print(f"synchronising calls in {fcfg.iterations} 4DGS-CC steps:")
    for k, n in seen.most_common(20):
        print(f"  {n:5d}  {k}")


if __name__ == "__main__":
    main()
