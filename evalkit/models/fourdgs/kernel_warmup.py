"""Compile the fine stage's Triton kernels before the fine stage needs them.

The HexPlane lookup (``hexplane_triton``) and the regulariser (``plane_regulariser``) are Triton
kernels compiled on first use for the configuration's plane shapes. On a cold Triton cache that
takes tens of seconds (results/MEASUREMENTS.md), once per machine and configuration (Triton caches
the binaries on disk).
``compile_kernels`` runs every kernel once on a throwaway deformation field of the same shapes.

The coarse stage (static 3DGS) needs none of these kernels, so ``ParallelCompile`` runs them in
child Python processes (``BackgroundCompile``, entry point ``main``), one per group of ``PARTS``
(the lookup's forward, its backward, the regulariser), while the coarse stage trains: the children
fill Triton's on-disk cache; ``ParallelCompile.finish``, called before the fine stage and inside
the training timer, waits for them and then loads the binaries in this process. Processes, not
threads: the coarse stage is bound by host-side Python, and a compiler in the same interpreter
would compete with it for the GIL. Any wait is training time. A child that fails or hangs costs
only its time: ``finish`` then compiles what is missing in this process.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

import torch

from evalkit.models.fourdgs import hexplane_triton
from evalkit.models.fourdgs.config import FourDGSConfig
from evalkit.models.fourdgs.deformation import DeformationField
from evalkit.models.fourdgs.plane_regulariser import PlaneRegulariser
from evalkit.metrics import contention


_COMPILED: set[str] = set()  # shape keys (``shapes_key``) this process has compiled and run


def shapes_key(cfg: FourDGSConfig) -> str:
    """What the kernels are compiled for: the deformation field's configuration (plane shapes)."""
    return json.dumps(asdict(cfg.deformation_config()), sort_keys=True)


# The kernels in groups that compile independently: ``ParallelCompile`` runs one child per group.
PARTS = ("lookup", "lookup_backward", "regulariser")


def compile_kernels(cfg: FourDGSConfig, device: torch.device, points: int = 1000,
                    part: str = "all") -> tuple[float, list[str]]:
    """One forward and backward of a deformation field with ``cfg``'s shapes and of its
    regularisers on ``device`` (``part="all"``), or one group of ``PARTS``: the lookup's forward,
    its backward kernels alone, the regulariser. Returns the seconds taken and the kernels that
    failed to compile (their PyTorch fallbacks then train instead: slower, same results). Nothing to
    compile off CUDA: (0.0, []). The global random state is left as it was (training's
    initialisation draws from it)."""
    if part != "all" and part not in PARTS:
        raise ValueError(f"unknown kernel group {part!r}; choose from all, {', '.join(PARTS)}")
    if device.type != "cuda":
        return 0.0, []
    t0 = time.perf_counter()
    reg = None
    with torch.random.fork_rng(devices=[device]):
        field = DeformationField(cfg.deformation_config(), torch.tensor([[-1.0] * 3, [1.0] * 3])).to(device)
        means = (torch.rand(points, 3, device=device) * 2 - 1).requires_grad_(True)
        if part in ("all", "regulariser"):
            reg = PlaneRegulariser(field.grid, cfg.plane_tv_weight, cfg.time_smoothness_weight, cfg.l1_time_planes)
        if part == "all":
            zeros = torch.zeros(points, 3, device=device)
            quats = torch.zeros(points, 4, device=device)
            quats[:, 0] = 1.0
            out = field(means, zeros, quats, torch.zeros(points, device=device),
                        torch.zeros(points, 16, 3, device=device), 0.5)
            loss = out.means.sum() + out.log_scales.sum() + out.quats.sum() + reg()
            loss.backward()
        elif part == "lookup":
            with torch.no_grad():
                field.grid(means, 0.5)
        elif part == "lookup_backward" and hexplane_triton.available():
            try:
                coords = field.grid.coords(means.detach(), 0.5)
                hexplane_triton.run_backward_kernels(coords, field.grid.sampled_planes())
            except Exception as exc:  # noqa: BLE001 - reported below, as the lookup's own fallback would
                hexplane_triton.disable(exc)
        elif part == "regulariser":
            reg()
        torch.cuda.synchronize(device)
    failed = [f"{name}: {err}" for name, err in (("HexPlane lookup", hexplane_triton.failed),
                                                ("HexPlane regulariser", reg.failed if reg else None)) if err]
    if not failed and part == "all":
        _COMPILED.add(shapes_key(cfg))
    return time.perf_counter() - t0, failed


def warm_up(device: torch.device) -> float:
    """Per-process first-use costs, paid here (setup) instead of in a job's first training step:
    torch imports ``torch._dynamo`` (with sympy and FSDP) lazily at the first optimiser's
    ``add_param_group`` (seconds: it dominated the first coarse step, results/MEASUREMENTS.md);
    and on CUDA, loading gsplat's extension: a few Gaussians rendered
    forwards and backwards. Returns the seconds taken. Random state untouched."""
    t0 = time.perf_counter()
    torch.optim.Adam([torch.zeros(1, requires_grad=True)])  # its add_param_group imports torch._dynamo
    if device.type != "cuda":
        return time.perf_counter() - t0
    from evalkit.render.api import rasterize

    with torch.random.fork_rng(devices=[device]):
        n, sh_degree = 16, 3
        means = (torch.rand(n, 3, device=device) - 0.5).requires_grad_(True)
        quats = torch.zeros(n, 4, device=device)
        quats[:, 0] = 1.0
        scales = torch.full((n, 3), 0.05, device=device)
        sh = torch.zeros(n, (sh_degree + 1) ** 2, 3, device=device)
        K = torch.tensor([[16.0, 0.0, 8.0], [0.0, 16.0, 8.0], [0.0, 0.0, 1.0]], device=device)
        viewmat = torch.eye(4, device=device)
        viewmat[2, 3] = 2.0
        out = rasterize(means, quats, scales, torch.full((n,), 0.5, device=device), sh, viewmat, K, 16, 16,
                        sh_degree=sh_degree, background=torch.ones(3, device=device))
        out.image.sum().backward()
        torch.cuda.synchronize(device)
    return time.perf_counter() - t0


class BackgroundCompile:
    """``compile_kernels(part=...)`` in a child process from construction until ``wait``. Off CUDA
    there is nothing to compile and no child."""

    def __init__(self, cfg: FourDGSConfig, device: torch.device, timeout: float = 900.0,
                 part: str = "all") -> None:
        self.cfg, self.device, self.timeout, self.part = cfg, device, timeout, part
        self.proc: subprocess.Popen | None = None
        self._stderr = self._stdout = None
        self._t0 = time.perf_counter()
        # Compiled earlier in this process (an earlier rate point or scene with these shapes):
        # they load in milliseconds, less than a child takes to start.
        if device.type == "cuda" and shapes_key(cfg) not in _COMPILED:
            index = device.index if device.index is not None else torch.cuda.current_device()
            self._start([sys.executable, "-c", f"import sys; from {__name__} import main; sys.exit(main())",
                         json.dumps(cfg.to_dict()), f"cuda:{index}", part])

    def _start(self, argv: list[str]) -> None:
        self._stderr = tempfile.TemporaryFile()
        env = dict(os.environ)  # the child imports this evalkit, installed or not
        root = str(Path(__file__).resolve().parents[3])
        env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH", "")) if p)
        self._stdout = tempfile.TemporaryFile()
        self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=self._stdout,
                                     stderr=self._stderr, env=env)
        contention.register_helper(self.proc)  # its CUDA context is ours, not another job's

    def wait(self, log) -> None:
        """Wait for the child (up to the timeout, then kill it) and log how it ended."""
        if self.proc is None:
            return
        try:
            rc = self.proc.wait(timeout=max(0.0, self.timeout - (time.perf_counter() - self._t0)))
        except subprocess.TimeoutExpired:
            rc = None
        if rc != 0:
            log(f"background kernel compile {'timed out' if rc is None else f'exited with {rc}'}: "
                f"{self._tail(self._stderr) or 'no output'}; compiling in this process")
        elif said := self._tail(self._stdout, 200):
            log(f"background kernel compile: {said}; the child started "
                f"{time.perf_counter() - self._t0:.1f} s ago")
        self.close()

    def close(self) -> None:
        """Stop the child if it still runs (a failed job must not leave it behind). Idempotent."""
        if self.proc is not None:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()
            contention.unregister_helper(self.proc)
            self.proc = None
        for f in (self._stdout, self._stderr):
            if f is not None:
                f.close()
        self._stdout = self._stderr = None

    @staticmethod
    def _tail(f, chars: int = 400) -> str:
        if f is None:
            return ""
        f.seek(0)
        return f.read().decode(errors="replace").strip()[-chars:]


class ParallelCompile:
    """One ``BackgroundCompile`` child per group of ``PARTS``, all at once. Each group's compile
    is single-threaded, so three children on three cores finish about when the slowest does
    instead of after the sum (times: results/MEASUREMENTS.md). ``finish``
    waits for all, then runs ``compile_kernels`` here once: Triton's disk cache hits, or the
    compile of what a child did not compile. No child where ``BackgroundCompile`` would start none."""

    def __init__(self, cfg: FourDGSConfig, device: torch.device, timeout: float = 900.0) -> None:
        self.cfg, self.device = cfg, device
        self.children: list[BackgroundCompile] = []
        try:
            for part in PARTS:
                self.children.append(BackgroundCompile(cfg, device, timeout, part=part))
        except BaseException:
            self.close()
            raise

    def finish(self, log) -> float:
        t0 = time.perf_counter()
        for child in self.children:
            child.wait(log)
        _, failed = compile_kernels(self.cfg, self.device)
        for f in failed:
            log(f"Triton kernel unavailable, training uses the PyTorch path: {f}")
        return time.perf_counter() - t0

    def close(self) -> None:
        for child in self.children:
            child.close()


def start_background(cfg: FourDGSConfig, device: torch.device) -> ParallelCompile:
    """A method's ``prepare_training``: start the ``ParallelCompile`` of ``cfg``'s kernels, then
    ``warm_up`` in this process meanwhile (the children are stopped if that fails)."""
    kernels = ParallelCompile(cfg, device)
    try:
        warm_up(device)
    except BaseException:
        kernels.close()
        raise
    return kernels


class KernelsInBackground:
    """Mixin of a method built on the 4DGS trainer: ``prepare_kernels`` (from its
    ``prepare_training``) starts ``start_background``; its training calls ``kernels_ready`` before
    the fine stage and ``stop_kernels`` when it ends, however it ends. Without a
    ``prepare_kernels`` (e.g. a direct ``train`` call) there is nothing to wait for: the kernels
    compile at their first use."""

    _kernels: ParallelCompile | None = None

    def prepare_kernels(self, cfg: FourDGSConfig, device: torch.device) -> None:
        self.stop_kernels()
        self._kernels = start_background(cfg, device)

    def kernels_ready(self, log) -> None:
        if self._kernels is not None:
            log(f"fine-stage kernels ready after {self._kernels.finish(log):.1f} s "
                "(waiting for the background compile)")

    def stop_kernels(self) -> None:
        kernels, self._kernels = self._kernels, None
        if kernels is not None:
            kernels.close()


def main(argv: list[str] | None = None) -> int:
    """The child of ``BackgroundCompile``, arguments ``CONFIG_JSON DEVICE [PART]``; returns its exit
    status (1 when a kernel failed to compile, with the errors on stderr)."""
    t0 = time.perf_counter()  # after the imports
    args = sys.argv[1:] if argv is None else argv
    cfg = FourDGSConfig.from_dict(json.loads(args[0]), source="background kernel compile")
    part = args[2] if len(args) > 2 else "all"
    seconds, failed = compile_kernels(cfg, torch.device(args[1]), part=part)
    for f in failed:
        print(f, file=sys.stderr)
    print(f"{part + ': ' if part != 'all' else ''}compiled in {seconds:.1f} s in the child "
          f"({time.perf_counter() - t0:.1f} s in its main)")
    return 1 if failed else 0
