"""The 4DGS model during 4DGS-CC training: quantised HexPlane, vector-quantised SH, rate terms."""
from __future__ import annotations

import weakref

import torch
import torch.nn as nn

from evalkit.models.fourdgs.hexplane import HexPlane
from evalkit.models.fourdgs.model import FourDGSModel
from evalkit.methods.fourdgs_cc.config import CCConfig
from evalkit.train.cuda_graphs import GraphedCalls
from evalkit.methods.fourdgs_cc.nvcc import NVCC, grid_planes
from evalkit.train.vq import SHVectorQuantizer
from evalkit.methods.fourdgs_cc.vqcc import VQCC


class QuantizedHexPlane(HexPlane):
    """HexPlane whose forward samples the planes on their quantisation grid (straight-through)."""

    step: float = 0.0  # 0: not quantised

    def sampled_planes(self) -> list[list[torch.Tensor]]:
        if not self.step:
            return super().sampled_planes()
        flat = grid_planes([p for scale in self.grids for p in scale],
                           [i for scale in self.grids for i in range(len(scale))], self.step)
        per = len(self.grids[0]) if self.grids else 0
        return [flat[k * per:(k + 1) * per] for k in range(len(self.grids))]


class FourDGSCCModel(FourDGSModel):
    """4DGS + the 4DGS-CC compression modules (``vq``, ``vqcc``, ``nvcc``; None when ablated).

    The compression modules live outside ``gaussians`` (gsplat's strategy owns that dict) and
    outside ``deformation`` (the trainer's optimiser covers it), so ``extra_parameters`` go to the
    extra optimiser."""

    def __init__(self, base: FourDGSModel, cc: CCConfig, seed: int = 0) -> None:
        super().__init__(base.gaussians, base.deformation, base.sh_degree, base.background, base.near_plane)
        self.cc = cc
        grid = base.deformation.grid
        if cc.compress_hexplane:
            qgrid = QuantizedHexPlane(grid.cfg, grid.aabb)
            qgrid.load_state_dict(grid.state_dict())
            qgrid.step = cc.hexplane_qstep
            self.deformation.grid = qgrid.to(grid.aabb.device)
        dev = base.device
        hp = grid.cfg
        self.nvcc = (NVCC(hp, cc.hexplane_qstep, cc.nvcc_hidden, cc.nvcc_window, cc.nvcc_spatial_prior,
                          cc.nvcc_hidden_update, cc.first_feature).to(dev)
                     if cc.compress_hexplane and cc.nvcc else None)
        dim = 3 * (self.sh_degree + 1) ** 2
        self.vq = (SHVectorQuantizer(cc.codebook_size, dim, cc.codebook_qstep, cc.kmeans_iters, seed).to(dev)
                   if cc.compress_canonical else None)
        self.vqcc = (VQCC(dim, cc.codebook_qstep, cc.vqcc_hidden, cc.vqcc_latent).to(dev)
                     if cc.compress_canonical and cc.vqcc else None)

    def training_flags(self) -> dict:
        """The quantiser's and entropy models' host-side state (their tensors are in ``state_dict``;
        the entropy models' weights are also coded from it, so no extra state goes there)."""
        flags: dict = {}
        if self.vq is not None:
            flags["vq"] = {"n_codes": self.vq.n_codes, "active": self.vq.active, "pending": self.vq.pending,
                           "round_codes": self.vq.round_codes}
        for name in ("nvcc", "vqcc"):
            if getattr(self, name) is not None:
                flags[f"{name}_initialised"] = getattr(self, name).initialised
        return flags

    def restore_training_flags(self, flags: dict) -> None:
        if self.vq is not None:
            vq = flags["vq"]
            self.vq.n_codes, self.vq.active = int(vq["n_codes"]), bool(vq["active"])
            self.vq.pending, self.vq.round_codes = vq["pending"], bool(vq["round_codes"])
        for name in ("nvcc", "vqcc"):
            if getattr(self, name) is not None:
                getattr(self, name).initialised = bool(flags[f"{name}_initialised"])

    def canonical_sh(self) -> torch.Tensor:
        sh = super().canonical_sh()
        return self.vq(sh) if self.vq is not None else sh

    def extra_parameters(self) -> list[dict]:
        groups = []
        entropy = [p for m in (self.nvcc, self.vqcc) if m is not None for p in m.parameters()]
        if entropy:
            groups.append({"params": entropy, "lr": self.cc.entropy_lr, "name": "entropy_models"})
        return groups

    def rate_terms(self, mode: str = "noise") -> dict[str, tuple[torch.Tensor, int]]:
        """(bits, coded values) of the HexPlane (NVCC) and of the codebook (VQCC, once VQ runs).
        On CUDA the computation replays from a CUDA graph (``cuda_graphs``; same numbers)."""
        planes = [p for scale in self.deformation.grid.grids for p in scale] if self.nvcc is not None else []
        if self.nvcc is not None and not self.nvcc.initialised:
            self.nvcc.initialise(_levels(planes, len(self.nvcc.hp.multires)))
        codebook = None
        if self.vqcc is not None and self.vq is not None and self.vq.active:
            # The codes as this step's render used them (member means). By default the rate trains
            # VQCC alone: the render stored those means in ``vq.codebook``. With
            # vqcc_rate_moves_codes they are recomputed differentiably, so the rate's gradient
            # reaches the members' continuous SH and pulls codes together (D-NeRF jumpingjacks,
            # high: 34.66 dB against 35.24 dB with the default; vq.py).
            codebook = (self.vq.code_vectors(super().canonical_sh().reshape(self.num_primitives(), -1))
                        if self.cc.vqcc_rate_moves_codes else self.vq.codebook[:self.vq.n_codes])
            if not self.vqcc.initialised:
                self.vqcc.initialise(codebook.detach())
        tensors = tuple(planes) + ((codebook,) if codebook is not None else ())
        if not tensors:
            return {}
        levels = len(self.nvcc.hp.multires) if self.nvcc is not None else 0
        key = (mode, len(planes), codebook is not None)
        if self.cc.rate_compile and tensors[0].is_cuda:
            # one compiled unit per key, kept: a new one per call (an eager fallback calls ``make``
            # every step) would compile again each time
            units = _COMPILED.setdefault(self, {})
            if key not in units:
                units[key] = compiled_rate_unit(_RateTerms(self.nvcc, self.vqcc, mode, levels))
            make = lambda: units[key]  # noqa: E731
        else:
            make = lambda: _RateTerms(self.nvcc, self.vqcc, mode, levels)  # noqa: E731
        bits = self._graphs(key + (self.cc.rate_compile,), make, *tensors)
        out, k = {}, 0
        if planes:
            out["nvcc"] = (bits[k], sum(p.numel() for p in planes))
            k += 1
        if codebook is not None:
            out["vqcc"] = (bits[k], codebook.numel())
        return out

    def rate_graph_status(self) -> str:
        """How the rate terms ran: replayed from CUDA graphs, or eagerly and why; and whether a
        ``rate_compile`` compilation failed (the terms then ran uncompiled)."""
        graphs = _GRAPHS.get(self)
        status = graphs.status() if graphs is not None else GraphedCalls.EAGER
        failed = [u.failed for u in _COMPILED.get(self, {}).values() if u.failed]
        return status + (f"; torch.compile failed, uncompiled ({failed[0]})" if failed else "")

    @property
    def _graphs(self) -> GraphedCalls:
        graphs = _GRAPHS.get(self)
        if graphs is None:
            graphs = _GRAPHS[self] = GraphedCalls(self.cc.cuda_graphs)
        return graphs


def compiled_rate_unit(module: nn.Module) -> nn.Module:
    """The rate unit compiled by torch.compile (``rate_compile``: fused kernels, the same terms). It
    compiles on its first call, which ``GraphedCalls`` makes before capturing it; a compilation that
    fails (no compiler, an inductor error) leaves the eager unit, with the reason in ``failed``."""
    return _CompiledOrEager(module)


class _CompiledOrEager(nn.Module):
    """``torch.compile(unit)``, or the unit itself from the first call whose compilation raised."""

    def __init__(self, unit: nn.Module) -> None:
        super().__init__()
        self.unit, self.compiled = unit, torch.compile(unit, dynamic=False)
        self.failed: str | None = None

    def forward(self, *tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
        if self.failed is None:
            try:
                return self.compiled(*tensors)
            except Exception as exc:  # noqa: BLE001 - any compile failure: the same terms, eagerly
                if torch.cuda.is_available() and torch.cuda.is_current_stream_capturing():
                    raise  # inside a capture: GraphedCalls falls back to eager as for any capture failure
                self.failed = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        return self.unit(*tensors)


def _levels(planes: list[torch.Tensor], levels: int) -> list[list[torch.Tensor]]:
    per = len(planes) // max(levels, 1)
    return [list(planes[i * per:(i + 1) * per]) for i in range(levels)]


class _RateTerms(nn.Module):
    """planes (flat, level-major) [+ codebook] -> (NVCC bits[, VQCC bits]): the unit captured as
    a CUDA graph. Holds references to the entropy models; it is never part of the model tree."""

    def __init__(self, nvcc: NVCC | None, vqcc: VQCC | None, mode: str, levels: int) -> None:
        super().__init__()
        self.nvcc, self.vqcc, self.mode, self.levels = nvcc, vqcc, mode, levels

    def forward(self, *tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
        n = 6 * self.levels if self.nvcc is not None else 0
        out = []
        if n:
            out.append(self.nvcc.bits(_levels(list(tensors[:n]), self.levels), self.mode)[0])
        if len(tensors) > n:
            out.append(self.vqcc.bits(tensors[n], self.mode)[0])
        return tuple(out)


# Graph caches and compiled units live outside the model so that copying or saving the model never
# touches them.
_GRAPHS: "weakref.WeakKeyDictionary[FourDGSCCModel, GraphedCalls]" = weakref.WeakKeyDictionary()
_COMPILED: "weakref.WeakKeyDictionary[FourDGSCCModel, dict[tuple, nn.Module]]" = weakref.WeakKeyDictionary()
