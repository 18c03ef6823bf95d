"""Rasterisation throughput on random scenes.

    python -m evalkit.bench.render [--device cuda] [--sizes 100000,1000000] [--res 800]
                                   [--backend auto] [--sh-degree 3] [--quick]

One line per scene size, ``key=value`` fields: ``gaussians``, ``res``, ``device``,
``backend``, ``ms_per_frame``, ``fps``, ``gaussians_per_s``, ``visible``. A frame is one full
``evalkit.render.rasterize`` call under ``torch.no_grad()`` (projection, SH, sorting,
blending), timed after warm-up with CUDA events on GPU, ``perf_counter`` on CPU. Scenes come
from ``evalkit.render.synthetic.random_gaussians`` (splat size shrinking as N^-1/3), seen by a
camera 3.5 units away with a 53 degree field of view.

On CPU the torch reference runs, at smaller default sizes; its numbers are labelled CPU and
say nothing about GPU speed. ``--quick`` is a seconds-long smoke run.
"""
from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass

import numpy as np
import torch

from evalkit.render import rasterize
from evalkit.render.api import select_backend
from evalkit.render.synthetic import look_at_w2c, random_gaussians

CUDA_DEFAULTS = dict(sizes=(100_000, 1_000_000), res=800, warmup=5, iters=20)
CPU_DEFAULTS = dict(sizes=(2_000, 20_000), res=256, warmup=1, iters=3)
QUICK = dict(sizes=(300,), res=48, warmup=1, iters=2)


@dataclass
class RenderBenchConfig:
    device: str
    sizes: tuple[int, ...]
    res: int
    warmup: int
    iters: int
    backend: str = "auto"
    sh_degree: int | None = 3
    seed: int = 0


@dataclass
class RenderBenchResult:
    gaussians: int
    width: int
    height: int
    device: str
    backend: str
    ms_per_frame: float
    visible: int  # Gaussians that passed culling in the timed view

    @property
    def fps(self) -> float:
        return 1000.0 / self.ms_per_frame

    @property
    def gaussians_per_s(self) -> float:
        return self.gaussians * self.fps

    def line(self) -> str:
        return (f"render gaussians={self.gaussians} res={self.width}x{self.height} "
                f"device={self.device} backend={self.backend} ms_per_frame={self.ms_per_frame:.3f} "
                f"fps={self.fps:.2f} gaussians_per_s={self.gaussians_per_s:.4g} visible={self.visible}")


def _bench_one(n: int, cfg: RenderBenchConfig) -> RenderBenchResult:
    dev = torch.device(cfg.device)
    g = random_gaussians(n, seed=cfg.seed, sh_degree=cfg.sh_degree, device=dev)
    viewmat = torch.tensor(look_at_w2c(np.array([0.6, -0.8, -3.4])), dtype=torch.float32, device=dev)
    f = float(cfg.res)
    K = torch.tensor([[f, 0, cfg.res / 2], [0, f, cfg.res / 2], [0, 0, 1]], dtype=torch.float32, device=dev)
    bg = torch.ones(3, device=dev)

    def frame():
        return rasterize(*g.tensors(), viewmat, K, cfg.res, cfg.res, sh_degree=cfg.sh_degree,
                         background=bg, backend=cfg.backend)

    with torch.no_grad():
        out = None
        for _ in range(max(cfg.warmup, 1)):
            out = frame()
        visible = int((out.info["radii"] > 0).all(-1).sum())
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            for _ in range(cfg.iters):
                frame()
            end.record()
            torch.cuda.synchronize(dev)
            ms = start.elapsed_time(end) / cfg.iters
        else:
            t0 = time.perf_counter()
            for _ in range(cfg.iters):
                frame()
            ms = (time.perf_counter() - t0) * 1000 / cfg.iters
    return RenderBenchResult(n, cfg.res, cfg.res, cfg.device, out.backend, ms, visible)


def bench_render(cfg: RenderBenchConfig) -> list[RenderBenchResult]:
    return [_bench_one(n, cfg) for n in cfg.sizes]


def _device_label(device: str) -> str:
    if device.startswith("cuda"):
        return f"GPU {torch.cuda.get_device_name(torch.device(device))}"
    return f"CPU ({torch.get_num_threads()} torch threads; torch reference rasteriser, not comparable to GPU)"


def parse_args(argv: list[str] | None) -> RenderBenchConfig:
    p = argparse.ArgumentParser(prog="python -m evalkit.bench.render", description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--sizes", help="comma-separated Gaussian counts")
    p.add_argument("--res", type=int, help="square image side in pixels")
    p.add_argument("--warmup", type=int)
    p.add_argument("--iters", type=int)
    p.add_argument("--backend", default="auto", choices=["auto", "gsplat", "torch"])
    p.add_argument("--sh-degree", type=int, default=3, help="-1 for plain RGB colours")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quick", action="store_true", help="tiny smoke run (seconds, any device)")
    a = p.parse_args(argv)
    if a.device.startswith("cuda") and not torch.cuda.is_available():
        p.error("--device cuda requested but torch sees no CUDA device")
    base = dict(QUICK if a.quick else CUDA_DEFAULTS if a.device.startswith("cuda") else CPU_DEFAULTS)
    if a.sizes:
        try:
            base["sizes"] = tuple(int(s) for s in a.sizes.split(",") if s.strip())
        except ValueError:
            p.error(f"--sizes must be comma-separated integers, got {a.sizes!r}")
    for key in ("res", "warmup", "iters"):
        if getattr(a, key) is not None:
            base[key] = getattr(a, key)
    if min(base["sizes"]) <= 0 or base["res"] <= 0 or base["iters"] <= 0:
        p.error("sizes, res and iters must be positive")
    return RenderBenchConfig(device=a.device, backend=a.backend, seed=a.seed,
                             sh_degree=None if a.sh_degree < 0 else a.sh_degree, **base)


def main(argv: list[str] | None = None) -> int:
    cfg = parse_args(argv)
    print(f"device: {_device_label(cfg.device)}")
    chosen = select_backend(cfg.backend, torch.device(cfg.device), torch.float32)
    if cfg.device.startswith("cuda") and chosen != "gsplat":
        from evalkit.render.gsplat_backend import gsplat_status
        why = "as requested" if cfg.backend == "torch" else f"gsplat unavailable: {gsplat_status()[1]}"
        print(f"warning: timing the torch reference rasteriser on CUDA ({why})")
    print(f"config: sh_degree={cfg.sh_degree} warmup={cfg.warmup} iters={cfg.iters} seed={cfg.seed}")
    for n in cfg.sizes:
        print(_bench_one(n, cfg).line(), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
