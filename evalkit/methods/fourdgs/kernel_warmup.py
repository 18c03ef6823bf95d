"""Compile the fine stage's Triton kernels before training is timed.

The HexPlane lookup (``hexplane_triton``) and the regulariser (``plane_regulariser``) are Triton
kernels compiled on first use for the configuration's plane shapes. On a cold Triton cache that
took tens of seconds on an H200 (HyperNeRF's configuration: two stalls of about 30 s inside the
fine stage, one per specialisation of the point count, before the count was unspecialised), and it
happens once per machine and configuration (Triton caches the binaries on disk). Like gsplat's
extension build it is setup, not training: ``compile_kernels`` runs every kernel once on a
throwaway deformation field of the same shapes, and the runner records its time apart
(``timings["training_setup_s"]``).
"""
from __future__ import annotations

import time

import torch

from evalkit.methods.fourdgs import hexplane_triton
from evalkit.methods.fourdgs.config import FourDGSConfig
from evalkit.methods.fourdgs.deformation import DeformationField
from evalkit.methods.fourdgs.plane_regulariser import PlaneRegulariser


def compile_kernels(cfg: FourDGSConfig, device: torch.device, points: int = 1000) -> tuple[float, list[str]]:
    """One forward and backward of a deformation field with ``cfg``'s shapes and of its
    regularisers on ``device``. Returns the seconds taken and the kernels that failed to compile
    (their PyTorch fallbacks then train instead: slower, same results). Nothing to compile off
    CUDA: (0.0, []). The global random state is left as it was (training's initialisation draws
    from it)."""
    if device.type != "cuda":
        return 0.0, []
    t0 = time.perf_counter()
    with torch.random.fork_rng(devices=[device]):
        field = DeformationField(cfg.deformation_config(), torch.tensor([[-1.0] * 3, [1.0] * 3])).to(device)
        means = (torch.rand(points, 3, device=device) * 2 - 1).requires_grad_(True)
        zeros = torch.zeros(points, 3, device=device)
        quats = torch.zeros(points, 4, device=device)
        quats[:, 0] = 1.0
        out = field(means, zeros, quats, torch.zeros(points, device=device),
                    torch.zeros(points, 16, 3, device=device), 0.5)
        reg = PlaneRegulariser(field.grid, cfg.plane_tv_weight, cfg.time_smoothness_weight, cfg.l1_time_planes)
        loss = out.means.sum() + out.log_scales.sum() + out.quats.sum() + reg()
        loss.backward()
        torch.cuda.synchronize(device)
    failed = [f"{name}: {err}" for name, err in (("HexPlane lookup", hexplane_triton.failed),
                                                ("HexPlane regulariser", reg.failed)) if err]
    return time.perf_counter() - t0, failed


def prepare(cfg: FourDGSConfig, device: torch.device, log) -> None:
    """``compile_kernels`` for a method's ``prepare_training``; says in the job log when a kernel
    fell back to PyTorch."""
    _, failed = compile_kernels(cfg, device)
    for f in failed:
        log(f"Triton kernel unavailable, training uses the PyTorch path: {f}")
