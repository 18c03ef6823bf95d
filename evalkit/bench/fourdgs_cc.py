"""Where 4DGS-CC training time goes: the rate terms (NVCC with and without the CUDA-graph
recurrence, VQCC), the k-means start of VQ, and whole fine-stage steps against plain 4DGS steps.

    python -m evalkit.bench.fourdgs_cc SCENE_DIR [--dataset dnerf] [--rate high] [--steps 300]
                                       [--profile] [--kernels]

A short coarse stage (``--coarse`` iterations) gives a realistic Gaussian set; rate terms are
timed synchronised (forward + backward); the fine-stage comparison runs the same number of steps
of both methods from the same coarse model, VQ active from the first step. ``--profile`` prints
the busiest operators of the 4DGS-CC steps (torch.profiler). ``--kernels`` profiles the NVCC
rate forward + backward alone (eager, so each kernel keeps its operator's name) and prints the
kernels per step, their device time per step, and the busiest kernels and operators.
"""
from __future__ import annotations

import argparse
import copy
from contextlib import contextmanager
from dataclasses import replace
from typing import Iterator

import torch

from evalkit.data.detect import load_scene
from evalkit.methods.base import Budget, TrainContext
from evalkit.train.images import ImageBank
from evalkit.models.fourdgs.trainer import train
from evalkit.methods.fourdgs_cc.config import CCConfig, split_config
from evalkit.methods.fourdgs_cc.model import FourDGSCCModel
from evalkit.methods.fourdgs_cc.training import fine_stage
from evalkit.specs import load_method_spec
from evalkit.metrics.fps import synced_clock
from evalkit.models.fourdgs.config import FourDGSConfig
from evalkit.models.fourdgs.model import FourDGSModel



def cc_configs(dataset: str, scene_name: str, rate: str) -> tuple[FourDGSConfig, CCConfig]:
    """The 4DGS and 4DGS-CC configurations of ``rate`` for a scene, as the method resolves them."""
    spec = load_method_spec("4dgs-cc")
    point = spec.rate_points(dataset, [rate])[0]
    base = load_method_spec("4dgs").config(dataset, scene_name)
    return split_config(base, {**spec.config(dataset, scene_name), **point.params})


def cc_model(base: FourDGSModel, cc: CCConfig) -> FourDGSCCModel:
    """A 4DGS-CC model on a copy of ``base`` with VQ started (k-means), as late in the fine stage."""
    model = FourDGSCCModel(copy.deepcopy(base), cc)
    if model.vq is not None:
        model.vq.pending = "init"
        with torch.no_grad():
            model.canonical_sh()
    return model


@contextmanager
def one_coder(model: FourDGSCCModel, name: str | None) -> Iterator[None]:
    """``rate_terms`` computes every term the model has in one call (one CUDA graph): to time the
    ``name`` term alone ("nvcc" / "vqcc"; None: both), the other coder is off the model meanwhile."""
    other = {"nvcc": "vqcc", "vqcc": "nvcc"}.get(name or "")
    kept = getattr(model, other) if other else None
    if other:
        setattr(model, other, None)
    try:
        yield
    finally:
        if other:
            setattr(model, other, kept)


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
    ap.add_argument("--kernels", action="store_true", help="profile the NVCC rate step's kernels")
    ap.add_argument("--sync-debug", action="store_true", help="list where the loop synchronises (CUDA)")
    a = ap.parse_args(argv)
    device = torch.device(a.device)

    scene = load_scene(a.scene_dir)
    name = scene.path.name
    fcfg, cc = cc_configs(a.dataset, name, a.rate)
    fcfg = replace(fcfg, coarse_iterations=a.coarse)
    print(f"scene {name}: {len(scene.train)} train views, resolution {fcfg.resolution}, "
          f"codebook {cc.codebook_size}, lambda_e {cc.lambda_e}, device {device}")

    t0 = synced_clock(device)
    base, _ = train(scene, fcfg, device, stages=("coarse",))
    print(f"coarse stage: {a.coarse} iterations in {synced_clock(device) - t0:.1f} s, {base.num_primitives()} Gaussians")

    t0 = synced_clock(device)
    model = cc_model(base, cc)
    print(f"VQ start (k-means++ + {cc.kmeans_iters} Lloyd iterations, K={cc.codebook_size}): "
          f"{synced_clock(device) - t0:.2f} s")

    def rate_step():
        terms = model.rate_terms(cc.quantization)
        loss = sum(bits / n for bits, n in terms.values())
        loss.backward()

    graphs = model._graphs
    for enabled in (True, False):
        graphs.enabled = enabled
        for label, alone in (("NVCC + VQCC", None), ("NVCC alone", "nvcc"), ("VQCC alone", "vqcc")):
            with one_coder(model, alone):
                ms = _time(rate_step, device, a.reps)
            print(f"rate fwd+bwd, {label:11s}, CUDA graphs {'on ' if enabled else 'off'}: {ms:7.2f} ms"
                  + (f"  (capture failed: {graphs.failed})" if enabled and graphs.failed else ""))
    if a.kernels:
        graphs.enabled = False
        with one_coder(model, "nvcc"):
            print("\n".join(kernel_profile(rate_step, device)))
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


def kernel_profile(step, device: torch.device, steps: int = 5) -> list[str]:
    """Kernels per ``step`` and their device time (torch.profiler, after a warm-up), then the busiest
    kernels and the operators that launch the most device time."""
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    for _ in range(3):
        step()
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=acts) as prof:
        for _ in range(steps):
            step()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
    kernels = [e for e in prof.events() if e.device_type == DeviceType.CUDA]
    busy = sum(getattr(e, "device_time", 0.0) for e in kernels) / 1e3 / steps
    ev = prof.key_averages()
    key = "self_device_time_total" if device.type == "cuda" else "self_cpu_time_total"
    lines = [f"NVCC rate fwd+bwd, eager: {len(kernels) / steps:.0f} kernels per step, {busy:.2f} ms of "
             f"kernel time per step ({steps} steps profiled)",
             ev.table(sort_by=key, row_limit=30)]
    if device.type == "cuda":
        ops = [e for e in ev if e.key.startswith("aten::") or "Backward" in e.key]
        ops.sort(key=lambda e: getattr(e, "device_time_total", 0.0), reverse=True)
        lines.append("operators by device time (incl. children), ms per step / calls per step:")
        lines += [f"  {e.key:45s} {getattr(e, 'device_time_total', 0.0) / 1e3 / steps:8.3f} "
                  f"{e.count / steps:6.0f}" for e in ops[:25]]
    return lines


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
