"""4DGS-CC's fine step against 4DGS's at the same Gaussian count (issue 27: at most 1.3x).

    python -m evalkit.bench.fourdgs_cc_step SCENE_DIR [--dataset dnerf] [--rate high] [--coarse 3000]
        [--grow-to 95000] [--steps 300] [--split-steps 100] [--warmup 30] [--device cuda]

One model from the trainer's coarse stage (``--coarse`` iterations, grown by splitting to
``--grow-to`` Gaussians) is trained on by both methods at a fixed Gaussian count (refinement off):

* wall: ``--steps`` fine steps of the trainer itself (``train(stages=("fine",))``, unsynchronised,
  as training runs them) after ``--warmup`` steps on the same model (first-use compiles, the rate
  terms' CUDA-graph capture). 4DGS-CC runs with VQ active from the start; its k-means start is
  outside the timing and the periodic re-assignment is timed apart (printed with how often
  training pays it).
* split: ``--split-steps`` steps of the same work with a device synchronisation around each phase:
  render + loss + backward (4DGS's loss and regularisers), the NVCC rate forward + backward, the
  VQCC rate forward + backward (each rate alone, the other coder taken off the model for the
  call), the optimiser step. Medians per step; the synchronisations slow the loop, so the shares
  are the point and the wall numbers are what training pays.
"""
from __future__ import annotations

import argparse
import copy
import random
import statistics
import time
from collections import defaultdict
from dataclasses import replace

import torch

from evalkit.bench.fourdgs import add_scene_arguments, load_bench_scene, prepared_model
from evalkit.bench.fourdgs_cc import cc_configs, cc_model, one_coder
from evalkit.methods.fourdgs_cc.config import CCConfig
from evalkit.methods.fourdgs_cc.model import FourDGSCCModel
from evalkit.methods.fourdgs_cc.training import VQSchedule, entropy_optimizer, rate_loss
from evalkit.metrics.fps import synced_clock
from evalkit.models.fourdgs.config import FourDGSConfig
from evalkit.models.fourdgs.model import FourDGSModel
from evalkit.models.fourdgs.plane_regulariser import PlaneRegulariser
from evalkit.models.fourdgs.trainer import _deformation_optimizer, _optimizers, train, views_loss
from evalkit.train.adam_steps import AdamSteps
from evalkit.train.images import ImageBank

NO_REASSIGN = VQSchedule(start=0, until=0, interval=1)  # VQ already running: no k-means in the timed steps
RENDER, OPTIMISER = "render + loss + backward", "optimiser"


def fixed_count(cfg: FourDGSConfig, steps: int) -> FourDGSConfig:
    """``steps`` fine steps with refinement, pruning and opacity resets off: the count stays fixed."""
    return replace(cfg, iterations=steps, densify_from_iter=10**9, densify_until_iter=0,
                   opacity_reset_interval=10**9)


def wall_ms(scene, cfg: FourDGSConfig, device: torch.device, model: FourDGSModel, bank: ImageBank,
            steps: int, warmup: int, cc: CCConfig | None = None) -> float:
    """Trainer fine steps on ``model`` (4DGS-CC's rate terms when ``cc``): ms per step of the timed run."""
    seconds = 0.0
    for n in (warmup, steps):  # warm-up first, on the same model (a CUDA graph is captured per model)
        if n < 1:
            continue
        extra = ({"extra_loss": rate_loss(cc, NO_REASSIGN, {}), "extra_optimizer": entropy_optimizer(model)}
                 if cc is not None else {})
        model.train()
        _, stats = train(scene, fixed_count(cfg, n), device, model=model, stages=("fine",), bank=bank, **extra)
        seconds = stats[0].seconds
    return 1e3 * seconds / steps


def _rate_alone(model: FourDGSCCModel, cc: CCConfig, name: str) -> None:
    """Forward + backward of one rate term (weighted as in training), the other coder taken off."""
    with one_coder(model, name):
        terms = model.rate_terms(cc.quantization)
    if name in terms:
        bits, count = terms[name]
        ((cc.lambda_e if name == "nvcc" else cc.lambda_c) * bits / count).backward()


def split_ms(scene, cfg: FourDGSConfig, device: torch.device, model: FourDGSModel, bank: ImageBank,
             steps: int, warmup: int, cc: CCConfig | None = None) -> dict[str, float]:
    """Median ms per phase of a fine step, synchronised around each phase."""
    frames = scene.train
    times = torch.tensor([f.time for f in frames], dtype=torch.float32, device=device)
    batched = cfg.batch_size > 1 and len({(f.camera.width, f.camera.height) for f in frames}) == 1
    extent = scene.camera_extent()
    opts = _optimizers(model, cfg, extent)
    extra = entropy_optimizer(model) if cc is not None else None
    optimizers = AdamSteps([*opts.values(), _deformation_optimizer(model.deformation, cfg, extent), extra])
    regulariser = PlaneRegulariser(model.deformation.grid, cfg.plane_tv_weight, cfg.time_smoothness_weight,
                                   cfg.l1_time_planes)
    rates = [n for n in ("nvcc", "vqcc") if cc is not None and getattr(model, n) is not None]
    rng = random.Random(0)
    acc: dict[str, list[float]] = defaultdict(list)
    model.train()
    for step in range(warmup + steps):
        picks = [rng.randrange(len(frames)) for _ in range(cfg.batch_size)]
        t0 = synced_clock(device)
        loss, _, _ = views_loss(model, frames, bank, picks, times, cfg, True, cfg.sh_degree, False, batched=batched)
        (loss + regulariser()).backward()
        t = synced_clock(device)
        phase = {RENDER: t - t0}
        for name in rates:
            _rate_alone(model, cc, name)
            t1 = synced_clock(device)
            phase[f"{name.upper()} rate fwd+bwd"], t = t1 - t, t1
        optimizers.step()
        optimizers.zero_grad()
        phase[OPTIMISER] = synced_clock(device) - t
        if step >= warmup:
            for k, v in phase.items():
                acc[k].append(v)
    return {k: 1e3 * statistics.median(v) for k, v in acc.items()}


def reassign_ms(model: FourDGSCCModel, device: torch.device) -> float:
    """One periodic VQ re-assignment (``kmeans_iters`` Lloyd iterations from the current codes)."""
    sh = FourDGSModel.canonical_sh(model).detach()
    flat = sh.reshape(sh.shape[0], -1)
    t0 = synced_clock(device)
    model.vq.assign(flat)
    return 1e3 * (synced_clock(device) - t0)


def report(wall: dict[str, float], split: dict[str, dict[str, float]]) -> list[str]:
    """The printed comparison: wall ms per step and ratio, then the split side by side."""
    a, b = wall["4dgs"], wall["4dgs-cc"]
    lines = ["wall ms per fine step (trainer loop, unsynchronised):",
             f"  4dgs     {a:9.3f}", f"  4dgs-cc  {b:9.3f}   ratio {b / a:.2f} (issue 27 target: <= 1.3)",
             "split (synchronised around each phase, median ms per step):",
             f"  {'phase':28s} {'4dgs':>9s} {'4dgs-cc':>9s}"]
    rows = [RENDER, "NVCC rate fwd+bwd", "VQCC rate fwd+bwd", OPTIMISER]
    fmt = lambda d, k: f"{d[k]:9.3f}" if k in d else f"{'-':>9s}"  # noqa: E731
    for k in rows:
        lines.append(f"  {k:28s} {fmt(split['4dgs'], k)} {fmt(split['4dgs-cc'], k)}")
    sa, sb = sum(split["4dgs"].values()), sum(split["4dgs-cc"].values())
    lines.append(f"  {'sum':28s} {sa:9.3f} {sb:9.3f}   ratio {sb / sa:.2f}")
    return lines


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_scene_arguments(ap, warmup=30)  # --steps: timed trainer steps per method
    ap.add_argument("--rate", default="high", help="4dgs-cc rate point")
    ap.add_argument("--split-steps", type=int, default=100, help="synchronised steps per method")
    ap.add_argument("--compile", action="store_true", help="also time 4dgs-cc with rate_compile on (wall only)")
    a = ap.parse_args(argv)
    if a.steps < 1 or a.split_steps < 1 or a.warmup < 0:
        ap.error("--steps and --split-steps must be >= 1, --warmup >= 0")
    device = torch.device(a.device)
    scene, _ = load_bench_scene(a.scene, a.dataset, device, a.resolution_scale)
    cfg, cc = cc_configs(a.dataset, a.scene.name, a.rate)
    print(f"4dgs-cc rate {a.rate}: codebook {cc.codebook_size}, lambda_e {cc.lambda_e}; HexPlane "
          f"{cfg.feature_dim} channels, resolution {cfg.resolution}, scales {cfg.multires}")
    t0 = time.perf_counter()
    bank = ImageBank(scene.train, device)
    base = prepared_model(scene, cfg, device, a.coarse, a.grow_to, bank)
    print(f"{base.num_primitives()} Gaussians for both methods")
    plain, ccm = copy.deepcopy(base), cc_model(base, cc)
    wall = {"4dgs": wall_ms(scene, cfg, device, plain, bank, a.steps, a.warmup),
            "4dgs-cc": wall_ms(scene, cfg, device, ccm, bank, a.steps, a.warmup, cc)}
    split = {"4dgs": split_ms(scene, cfg, device, plain, bank, a.split_steps, a.warmup),
             "4dgs-cc": split_ms(scene, cfg, device, ccm, bank, a.split_steps, a.warmup, cc)}
    print("\n".join(report(wall, split)))
    if a.compile:  # the same start, the rate terms compiled (their compile is in the warm-up)
        cc_c = replace(cc, rate_compile=True)
        ccc = cc_model(base, cc_c)
        ms = wall_ms(scene, cfg, device, ccc, bank, a.steps, a.warmup, cc_c)
        print(f"  4dgs-cc with rate_compile {ms:9.3f}   ratio {ms / wall['4dgs']:.2f} ({ccc.rate_graph_status()})")
    print(f"rate terms: {ccm.rate_graph_status()}")
    if ccm.vq is not None:
        sched = VQSchedule.of(cfg, cc)
        n = max(0, (sched.until - sched.start) // sched.interval)
        ms = reassign_ms(ccm, device)
        print(f"VQ re-assignment: {ms:.1f} ms each, {n} of them in a {cfg.iterations}-step fine stage "
              f"({ms * n / max(cfg.iterations, 1):.3f} ms per step on average)")
    print(f"total {time.perf_counter() - t0:.1f} s")


if __name__ == "__main__":
    main()
