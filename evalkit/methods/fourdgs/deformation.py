"""The 4DGS deformation field: HexPlane features -> small MLP -> per-attribute deltas.

``feature_out`` is Linear(grid_dim, W) followed by (D - 1) x [ReLU, Linear(W, W)] (so D = 0
and D = 1 both give a single Linear, as in the reference). Each deformed attribute has a head
ReLU-Linear(W, W)-ReLU-Linear(W, out). Deltas are added to the raw (pre-activation)
parameters: position, log-scale, un-normalised quaternion, opacity logit, SH coefficients.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn as nn

from evalkit.methods.fourdgs.hexplane import HexPlane, HexPlaneConfig

HEAD_DIMS = {"xyz": 3, "scale": 3, "rot": 4, "opacity": 1, "sh": 48}


@dataclass
class DeformationConfig:
    hexplane: HexPlaneConfig = field(default_factory=HexPlaneConfig)
    depth: int = 0  # D
    width: int = 64  # W
    deform: list[str] = field(default_factory=lambda: ["xyz", "scale", "rot"])


@dataclass
class Deformed:
    means: torch.Tensor
    log_scales: torch.Tensor
    quats: torch.Tensor
    opacity_logits: torch.Tensor
    sh: torch.Tensor


class DeformationField(nn.Module):
    def __init__(self, cfg: DeformationConfig, aabb: torch.Tensor) -> None:
        super().__init__()
        unknown = set(cfg.deform) - set(HEAD_DIMS)
        if unknown:
            raise ValueError(f"unknown deformed attribute(s) {sorted(unknown)}; choose from {sorted(HEAD_DIMS)}")
        self.cfg = cfg
        self.grid = HexPlane(cfg.hexplane, aabb)
        W = cfg.width
        layers: list[nn.Module] = [nn.Linear(cfg.hexplane.out_dim, W)]
        for _ in range(cfg.depth - 1):
            layers += [nn.ReLU(), nn.Linear(W, W)]
        self.feature_out = nn.Sequential(*layers)
        self.heads = nn.ModuleDict({
            name: nn.Sequential(nn.ReLU(), nn.Linear(W, W), nn.ReLU(), nn.Linear(W, HEAD_DIMS[name]))
            for name in cfg.deform})
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)  # as the reference; biases keep torch's default init

        self._graphs: _GraphedDeltas | None = None  # see use_cuda_graphs

    def use_cuda_graphs(self, on: bool) -> None:
        """Training on CUDA: replay the field's forward and backward (HexPlane lookup + MLP, a few
        dozen small kernels each way, bound by host-side launch and autograd work) as CUDA graphs,
        captured again whenever the point count changes (densification). Same operations, same
        results; used only with gradients enabled, a tensor time and points on CUDA."""
        self._graphs = _GraphedDeltas(self) if on else None

    @property
    def graph_captures(self) -> int:
        """How many times the current ``use_cuda_graphs`` session captured (0 when off)."""
        return self._graphs.captures if self._graphs is not None else 0

    def deltas(self, means: torch.Tensor, t: torch.Tensor | float) -> tuple[torch.Tensor, ...]:
        """The heads' outputs, in ``cfg.deform`` order."""
        h = self.feature_out(self.grid(means, t))
        return tuple(self.heads[name](h) for name in self.cfg.deform)

    def mlp_parameters(self) -> list[nn.Parameter]:
        return list(self.feature_out.parameters()) + list(self.heads.parameters())

    def grid_parameters(self) -> list[nn.Parameter]:
        return list(self.grid.parameters())

    def forward(self, means: torch.Tensor, log_scales: torch.Tensor, quats: torch.Tensor,
                opacity_logits: torch.Tensor, sh: torch.Tensor, t: float) -> Deformed:
        g = self._graphs
        deltas = g(means, t) if g is not None and g.applies(means, t) else self.deltas(means, t)
        out = dict(zip(self.cfg.deform, deltas))
        n = means.shape[0]
        return Deformed(
            means=means + out["xyz"] if "xyz" in out else means,
            log_scales=log_scales + out["scale"] if "scale" in out else log_scales,
            quats=quats + out["rot"] if "rot" in out else quats,
            opacity_logits=opacity_logits + out["opacity"][:, 0] if "opacity" in out else opacity_logits,
            sh=sh + out["sh"].view(n, 16, 3)[:, : sh.shape[1]] if "sh" in out else sh,
        )


class _Deltas(nn.Module):
    """``DeformationField.deltas`` as a module of its own (a new one per capture: capturing
    replaces the module's ``forward``), with the field's parameters."""

    def __init__(self, field: DeformationField) -> None:
        super().__init__()
        self.grid, self.feature_out, self.heads = field.grid, field.feature_out, field.heads
        self.deform = list(field.cfg.deform)

    def forward(self, means: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, ...]:
        h = self.feature_out(self.grid(means, t))
        return tuple(self.heads[name](h) for name in self.deform)


class _GraphedDeltas:
    """``torch.cuda.make_graphed_callables`` of ``_Deltas`` for the current input shapes; the
    inputs are copied into the graph's own buffers at each call and the deltas it returns are
    overwritten by the next call (the field adds them to the attributes at once). One memory pool
    for all captures; the previous capture is dropped when the shapes change."""

    def __init__(self, field: DeformationField) -> None:
        self.field = field
        self.key: tuple | None = None
        self.fn = None
        self.pool = None
        self.captures = 0

    @staticmethod
    def applies(means: torch.Tensor, t) -> bool:
        return means.is_cuda and torch.is_tensor(t) and torch.is_grad_enabled() and means.requires_grad

    def __call__(self, means: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, ...]:
        key = (tuple(means.shape), tuple(t.shape), means.device)
        if key != self.key:
            self.fn = self.key = None  # free the old graphs before capturing new ones
            if self.pool is None:
                self.pool = torch.cuda.graph_pool_handle()
            core = _Deltas(self.field)
            samples = (means.detach().clone().requires_grad_(True), t.detach().clone())
            self.fn = torch.cuda.make_graphed_callables(core, samples, num_warmup_iters=1, pool=self.pool)
            self.key = key
            self.captures += 1
        return self.fn(means, t)
