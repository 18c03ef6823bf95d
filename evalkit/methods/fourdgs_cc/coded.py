"""What the bitstream holds, as decoded values (``CodedScene``), and the renderable model built from it.

The encoder builds a ``CodedScene`` from the trained model (``finalize``) and renders with the
model that ``CodedScene.build_model`` makes of it; the decoder parses the same ``CodedScene`` out
of the file and calls the same builder, so decoded renders equal the encoder's renders.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn

from evalkit.codec.quantize import UniformQuantParams
from evalkit.models.fourdgs.config import FourDGSConfig
from evalkit.models.fourdgs.deformation import DeformationField
from evalkit.models.fourdgs.model import FourDGSModel
from evalkit.codec.canonical import ATTRIBUTES, dequantize_attribute, quantize_attribute
from evalkit.methods.fourdgs_cc.config import CCConfig
from evalkit.methods.fourdgs_cc.model import FourDGSCCModel
from evalkit.methods.fourdgs_cc.nvcc import dequantize_plane, quantize_plane
from evalkit.train.vq import compact_and_sort, indices_from_runs

GAUSSIAN_KEYS = ("means", "scales", "quats", "opacities", "sh0", "shN")
_DTYPES = {"float16": torch.float16, "float32": torch.float32}


@dataclass
class CodedScene:
    fcfg: FourDGSConfig
    cc: CCConfig
    sh_degree: int
    background: list[float]
    aabb: torch.Tensor  # (2, 3) float32
    num_gaussians: int
    mlp_state: dict[str, torch.Tensor]  # deformation MLP weights in their stored dtype
    # canonical Gaussians: quantised (+ VQ) or, for "w/o CG", float32
    canonical: dict[str, tuple[torch.Tensor, UniformQuantParams]] | None = None
    runs: torch.Tensor | None = None  # (K,) Gaussians per code; Gaussians are sorted by code
    codebook: torch.Tensor | None = None  # (K, 3 * (deg + 1)^2) int64 symbols
    float_gaussians: dict[str, torch.Tensor] | None = None
    # HexPlane: symbols[s][i] (C, H, W) int64 or, for "w/o NV", float32 planes (1, C, H, W)
    plane_symbols: list[list[torch.Tensor]] | None = None
    float_planes: list[list[torch.Tensor]] | None = None

    def sh_values(self) -> torch.Tensor:
        """(N, K, 3) SH of every Gaussian: its code vector."""
        cb = (self.codebook.double() * self.cc.codebook_qstep).float()
        return cb[indices_from_runs(self.runs)].reshape(self.num_gaussians, -1, 3)

    def gaussians(self, device: torch.device) -> nn.ParameterDict:
        if self.canonical is not None:
            vals = {key: dequantize_attribute(self.canonical[name][0], self.canonical[name][1], key)
                    for name, (key, _) in ATTRIBUTES.items()}
            sh = self.sh_values()
            vals["sh0"], vals["shN"] = sh[:, :1].contiguous(), sh[:, 1:].contiguous()
        else:
            vals = dict(self.float_gaussians)
        return nn.ParameterDict({k: nn.Parameter(vals[k].to(device), requires_grad=False) for k in GAUSSIAN_KEYS})

    def planes(self) -> list[list[torch.Tensor]]:
        if self.plane_symbols is not None:
            step = self.cc.hexplane_qstep
            return [[dequantize_plane(q, i, step) for i, q in enumerate(level)] for level in self.plane_symbols]
        return [[p.float() for p in level] for level in self.float_planes]

    def build_model(self, device: torch.device) -> FourDGSModel:
        deform = DeformationField(self.fcfg.deformation_config(), self.aabb)
        state = {k: v.float() for k, v in self.mlp_state.items()}
        state["grid.aabb"] = self.aabb.float()
        for s, level in enumerate(self.planes()):
            for i, p in enumerate(level):
                state[f"grid.grids.{s}.{i}"] = p
        deform.load_state_dict(state, strict=True)
        bg = torch.tensor(self.background, dtype=torch.float32)
        model = FourDGSModel(self.gaussians(device), deform.to(device), self.sh_degree, bg.to(device),
                             self.fcfg.near_plane).eval()
        model.freeze_for_rendering()  # as the 4DGS decoder: CUDA-graphed deformation on GPU (same renders)
        return model


def round_to_storage(module: nn.Module, dtype: str) -> None:
    """Round weights to the dtype they are stored in, so that the encoder uses the stored values."""
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(p.to(_DTYPES[dtype]).to(p.dtype))


def mlp_state_of(model: FourDGSModel, dtype: str) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().to(_DTYPES[dtype]).clone() for k, v in model.deformation.state_dict().items()
            if not k.startswith("grid.")}


@torch.no_grad()
def finalize(model: FourDGSCCModel, fcfg: FourDGSConfig, cc: CCConfig) -> CodedScene:
    """Quantise everything that goes into the bitstream (entropy-model weights included)."""
    for m in (model.nvcc, model.vqcc):
        if m is not None:
            round_to_storage(m, cc.entropy_model_dtype)
    g = model.gaussians
    n = model.num_primitives()
    coded = CodedScene(fcfg=fcfg, cc=cc, sh_degree=model.sh_degree, background=model.background.tolist(),
                       aabb=model.deformation.grid.aabb.detach().cpu().float().clone(), num_gaussians=n,
                       mlp_state=mlp_state_of(model, cc.mlp_dtype))
    if cc.compress_canonical:
        vq = model.vq
        flat = torch.cat([g["sh0"], g["shN"]], 1).reshape(n, -1)
        if not vq.active:  # the fine stage ended before VQ started: quantise after training
            vq.initialise(flat)
        elif vq.indices.shape[0] != n:
            vq.assign(flat)
        codes = vq.code_vectors(flat)  # the member means, as the training renders use them
        symbols = torch.round(codes.double() / cc.codebook_qstep).to(torch.int64)
        order, coded.runs, coded.codebook = compact_and_sort(vq.indices, symbols)
        order_dev = order.to(g["means"].device)
        coded.canonical = {}
        for name, (key, _) in ATTRIBUTES.items():
            bits = cc.xyz_bits if name == "xyz" else cc.attribute_bits
            q, params = quantize_attribute(g[key][order_dev], bits)
            coded.canonical[name] = (q.cpu(), params)
    else:
        coded.float_gaussians = {k: g[k].detach().cpu().float().clone() for k in GAUSSIAN_KEYS}
    grids = model.deformation.grid.grids
    if cc.compress_hexplane:
        coded.plane_symbols = [[quantize_plane(p, i, cc.hexplane_qstep).cpu() for i, p in enumerate(level)]
                               for level in grids]
    else:
        coded.float_planes = [[p.detach().cpu().float().clone() for p in level] for level in grids]
    return coded
