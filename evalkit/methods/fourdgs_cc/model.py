"""The 4DGS model during 4DGS-CC training: quantised HexPlane, vector-quantised SH, rate terms."""
from __future__ import annotations

import torch

from evalkit.methods.fourdgs.hexplane import HexPlane
from evalkit.methods.fourdgs.model import FourDGSModel
from evalkit.methods.fourdgs_cc.config import CCConfig
from evalkit.methods.fourdgs_cc.nvcc import NVCC, ste_plane
from evalkit.methods.fourdgs_cc.vq import SHVectorQuantizer
from evalkit.methods.fourdgs_cc.vqcc import VQCC


class QuantizedHexPlane(HexPlane):
    """HexPlane whose forward samples the planes on their quantisation grid (straight-through)."""

    step: float = 0.0  # 0: not quantised

    def sampled_planes(self) -> list[list[torch.Tensor]]:
        if not self.step:
            return super().sampled_planes()
        return [[ste_plane(p, i, self.step) for i, p in enumerate(scale)] for scale in self.grids]


class FourDGSCCModel(FourDGSModel):
    """4DGS + the 4DGS-CC compression modules (``vq``, ``vqcc``, ``nvcc``; None when ablated).

    The compression modules live outside ``gaussians`` (gsplat's strategy owns that dict) and
    outside ``deformation`` (the trainer's optimiser covers it), so ``extra_parameters`` go to the
    extra optimiser."""

    def __init__(self, base: FourDGSModel, cc: CCConfig, seed: int = 0) -> None:
        super().__init__(base.gaussians, base.deformation, base.sh_degree, base.background)
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
                          cc.nvcc_hidden_update, cc.first_feature, cc.cuda_graphs).to(dev)
                     if cc.compress_hexplane and cc.nvcc else None)
        dim = 3 * (self.sh_degree + 1) ** 2
        self.vq = (SHVectorQuantizer(cc.codebook_size, dim, cc.codebook_qstep, cc.kmeans_iters, seed).to(dev)
                   if cc.compress_canonical else None)
        self.vqcc = (VQCC(dim, cc.codebook_qstep, cc.vqcc_hidden, cc.vqcc_latent).to(dev)
                     if cc.compress_canonical and cc.vqcc else None)

    def canonical_sh(self) -> torch.Tensor:
        sh = super().canonical_sh()
        return self.vq(sh) if self.vq is not None else sh

    def extra_parameters(self) -> list[dict]:
        groups = []
        entropy = [p for m in (self.nvcc, self.vqcc) if m is not None for p in m.parameters()]
        if entropy:
            groups.append({"params": entropy, "lr": self.cc.entropy_lr, "name": "entropy_models"})
        if self.vq is not None:
            groups.append({"params": [self.vq.codebook], "lr": self.cc.codebook_lr, "name": "codebook"})
        return groups

    def rate_terms(self, mode: str = "noise") -> dict[str, tuple[torch.Tensor, int]]:
        """(bits, coded values) of the HexPlane (NVCC) and of the codebook (VQCC, once VQ runs)."""
        out = {}
        if self.nvcc is not None:
            planes = [list(scale) for scale in self.deformation.grid.grids]
            if not self.nvcc.initialised:
                self.nvcc.initialise(planes)
            out["nvcc"] = self.nvcc.bits(planes, mode)
        if self.vqcc is not None and self.vq is not None and self.vq.active:
            codebook = self.vq.codebook[:self.vq.n_codes]
            if not self.vqcc.initialised:
                self.vqcc.initialise(codebook.detach())
            out["vqcc"] = self.vqcc.bits(codebook, mode)
        return out

