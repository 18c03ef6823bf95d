"""The cost of one real 4DGS fine-stage step at a late-training Gaussian count.

    python -m evalkit.bench.fourdgs_step SCENE_DIR [--dataset dnerf] [--coarse 3000]
        [--grow-to 95000] [--steps 300] [--variants torch/torch,triton/torch,triton/triton]
        [--switches none,mlp,sh,mlp+sh] [--profile] [--host-profile]

A real coarse stage (``--coarse`` iterations of the trainer) gives Gaussians on the scene's
surfaces; ``--grow-to`` then splits random Gaussians (two children at 1/1.6 the scale, as
densification does) until the count is reached, so a step costs what it costs late in training
(lego ends near 95k). Each variant then runs ``--steps`` fine steps of the trainer itself
(``train(stages=("fine",))``, refinement off so the count stays fixed) after a warm-up, from a copy
of the same model; a variant names the HexPlane lookup and regulariser backends (torch or
triton); each is run once per ``--switches`` entry, which turns on (+-joined) the host-side
savings: ``mlp`` the deformation MLP as one autograd node (``DeformationField.fused``), ``sh``
the gsplat backend's own SH step without a per-render sync (``gsplat_backend.OWN_SH_STEP``);
``all`` is both (the default, as in training), ``none`` neither; ``gc`` (bench only) freezes the
objects alive before the timed steps (``gc.freeze``). Printed: wall-clock ms per step (unsynchronised, as in training) and, with
``--profile``, the GPU time per step summed over kernels and the busiest operators: when the GPU
time is well below the wall time the loop is bound by host-side launch overhead.
``--host-profile`` adds a cProfile of 100 steps: which Python functions the host time goes to.
"""
from __future__ import annotations

import argparse
import copy
import gc
import time
from dataclasses import replace

import torch

from evalkit.bench.fourdgs import add_scene_arguments, grow, load_bench_scene
from evalkit.models.fourdgs.config import FourDGSConfig
from evalkit.models.fourdgs.deformation import DeformationField
from evalkit.models.fourdgs.hexplane import HexPlane
from evalkit.models.fourdgs.model import FourDGSModel
from evalkit.models.fourdgs.plane_regulariser import PlaneRegulariser
from evalkit.train.images import ImageBank
from evalkit.models.fourdgs.trainer import train
from evalkit.render import gsplat_backend


def step_time(model: FourDGSModel, scene, cfg: FourDGSConfig, device: torch.device, steps: int,
              bank: ImageBank, profile: bool, host_profile: bool = False, freeze_gc: bool = False
              ) -> dict[str, float]:
    fixed = replace(cfg, iterations=steps, densify_from_iter=10**9, densify_until_iter=0,
                    opacity_reset_interval=10**9)
    warm = copy.deepcopy(model)
    train(scene, replace(fixed, iterations=min(30, steps)), device, model=warm, stages=("fine",), bank=bank)
    del warm
    out: dict[str, float] = {}
    run = copy.deepcopy(model)
    if freeze_gc:  # everything alive now out of the collector's sight: cheaper full collections
        gc.collect()
        gc.freeze()
    try:
        _, stats = train(scene, fixed, device, model=run, stages=("fine",), bank=bank)
    finally:
        gc.unfreeze()
    out["wall ms/step"] = 1e3 * stats[0].seconds / steps
    if profile and device.type == "cuda":
        from torch.profiler import ProfilerActivity, profile as prof
        run = copy.deepcopy(model)
        n = min(steps, 50)
        with prof(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as p:
            train(scene, replace(fixed, iterations=n), device, model=run, stages=("fine",), bank=bank)
        ev = p.key_averages()
        gpu_us = sum(e.self_device_time_total for e in ev)
        out["GPU kernel ms/step (profiled)"] = gpu_us / 1e3 / n
        out["kernel launches/step"] = sum(e.count for e in ev if e.self_device_time_total > 0
                                          and e.device_type.name == "CUDA") / n
        print(ev.table(sort_by="self_device_time_total", row_limit=25, max_name_column_width=60))
    if host_profile:
        import cProfile
        import pstats
        run = copy.deepcopy(model)
        n = min(steps, 100)
        with cProfile.Profile() as cp:
            train(scene, replace(fixed, iterations=n), device, model=run, stages=("fine",), bank=bank)
        print(f"host time by function over {n} steps (cProfile; its own overhead inflates Python-heavy rows):")
        st = pstats.Stats(cp)
        st.sort_stats("tottime").print_stats(30)
        st.sort_stats("cumulative").print_stats(45)
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_scene_arguments(ap, warmup=None)
    ap.add_argument("--variants", default="auto/auto",
                    help="comma-separated LOOKUP/REGULARISER backend pairs, e.g. torch/torch,triton/triton")
    ap.add_argument("--switches", default="all", help="comma-separated: none, mlp, sh, mlp+sh, all")
    ap.add_argument("--profile", action="store_true")
    ap.add_argument("--host-profile", action="store_true", help="cProfile 100 steps: where the host time goes")
    a = ap.parse_args(argv)
    device = torch.device(a.device)
    scene, cfg = load_bench_scene(a.scene, a.dataset, device, a.resolution_scale)
    bank = ImageBank(scene.train, device)
    t0 = time.perf_counter()
    model, stats = train(scene, replace(cfg, coarse_iterations=a.coarse), device, stages=("coarse",), bank=bank)
    print(f"coarse stage: {a.coarse} iterations in {stats[0].seconds:.1f} s -> {model.num_primitives()} Gaussians")
    if a.grow_to:
        grow(model, a.grow_to)
        print(f"grown to {model.num_primitives()} Gaussians by splitting")
    fused, own_sh = DeformationField.fused, gsplat_backend.OWN_SH_STEP  # restored at the end
    for variant in a.variants.split(","):
        backend, _, reg = variant.partition("/")
        HexPlane.backend = backend
        PlaneRegulariser.backend = reg or "auto"
        for switch in a.switches.split(","):
            on = set(switch.split("+")) - {"none"}
            if "all" in on:
                on = (on - {"all"}) | {"mlp", "sh"}
            if on - {"mlp", "sh", "gc"}:
                ap.error(f"--switches: unknown {sorted(on - {'mlp', 'sh', 'gc'})}")
            DeformationField.fused = "mlp" in on
            gsplat_backend.OWN_SH_STEP = "sh" in on
            res = step_time(model, scene, cfg, device, a.steps, bank, a.profile, a.host_profile,
                            freeze_gc="gc" in on)
            print(f"variant {variant} switches {switch}: " + ", ".join(f"{k} {v:.3f}" for k, v in res.items()),
                  flush=True)
    DeformationField.fused, gsplat_backend.OWN_SH_STEP = fused, own_sh
    print(f"total {time.perf_counter() - t0:.1f} s")


if __name__ == "__main__":
    main()
