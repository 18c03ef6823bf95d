"""What an ADC-GS bitstream holds (``CodedScene``) and the renderable model built from it.

The encoder turns the trained model into a ``CodedScene`` (``finalize``: snapped positions in Morton
order, MEM symbols) and renders the model that ``CodedScene.build_model`` makes of it; the decoder
parses the same ``CodedScene`` from the file and calls the same builder, so decoded renders equal
the encoder's. Steps, means and scales are computed in float64 on the CPU from decoded data only
(``compute_params_on_cpu``'s rule), so a file coded on a GPU decodes anywhere.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor

from evalkit.codec.entropy import cpu64
from evalkit.methods.adc_gs.config import ADCConfig
from evalkit.methods.adc_gs.geometry import morton_order
from evalkit.methods.adc_gs.mem import MEM
from evalkit.methods.adc_gs.model import ADCModel, FEATURES


class EncodeQuantiser:
    """round(f / step) per stream; keeps the symbols and their (mean, scale) in symbol units."""

    def __init__(self) -> None:
        self.symbols: dict[str, Tensor] = {}
        self.params: dict[str, tuple[Tensor, Tensor]] = {}

    def hyper(self, mem: MEM, fv: Tensor, n: int) -> Tensor:
        eta = torch.round(mem.h_a(fv))
        self.symbols["hyper"] = eta.long()
        return eta

    def gauss(self, name: str, x: Tensor, mean: Tensor, scale: Tensor, step: Tensor) -> Tensor:
        q = torch.round(x / step)
        self.symbols[name] = q.long()
        self.params[name] = (mean, scale)
        return q * step


class SymbolQuantiser:
    """Dequantise known symbols (decoder side); ``decode(name, mean, scale)`` supplies a stream's
    symbols when they are not known yet (entropy decoding needs the stream's parameters)."""

    def __init__(self, symbols: dict[str, Tensor] | None = None, decode=None) -> None:
        self.symbols = dict(symbols or {})
        self.decode = decode

    def hyper(self, mem: MEM, fv, n: int) -> Tensor:
        if "hyper" not in self.symbols:
            self.symbols["hyper"] = self.decode("hyper", None, None)
        return self.symbols["hyper"].to(torch.float64)

    def gauss(self, name: str, x, mean: Tensor, scale: Tensor, step: Tensor) -> Tensor:
        if name not in self.symbols:
            self.symbols[name] = self.decode(name, mean, scale)
        return self.symbols[name].to(torch.float64) * step


@dataclass
class CodedScene:
    cfg: ADCConfig
    time_rows: int
    background: list[float]
    grid_positions: np.ndarray           # (N, 3) int64 on the snap grid, Morton order
    theta_state: dict[str, Tensor]
    deform_state: dict[str, Tensor]
    mem_state: dict[str, Tensor] | None  # decoder part of MEM (None: float32 anchors)
    symbols: dict[str, Tensor] | None = None           # MEM streams (rate-distortion on)
    float_features: dict[str, Tensor] | None = None    # float32 anchors (rate-distortion off)
    float_xyz: Tensor | None = None
    extra: dict = field(default_factory=dict)
    dequantised: dict[str, Tensor] | None = None  # features from the walk that made or read the symbols

    @property
    def num_anchors(self) -> int:
        return len(self.grid_positions) if self.float_xyz is None else self.float_xyz.shape[0]

    def xyz(self) -> Tensor:
        if self.float_xyz is not None:
            return self.float_xyz
        return torch.from_numpy((self.grid_positions.astype(np.float64) * self.cfg.snap_grid)).float()

    def mem64(self) -> MEM:
        mem = MEM(self.cfg)
        missing = mem.load_state_dict(self.mem_state, strict=False).missing_keys
        if any(not k.startswith("h_a.") for k in missing):
            raise ValueError(f"entropy model state lacks {missing}")
        return cpu64(mem)

    def features(self) -> dict[str, Tensor]:
        """Dequantised anchor features, float32 (exactly what the decoder computes)."""
        if self.float_features is not None:
            return self.float_features
        if self.dequantised is None:
            with torch.no_grad():
                feats = self.mem64().walk(None, self.num_anchors, SymbolQuantiser(self.symbols))
            self.dequantised = {k: v.float() for k, v in feats.items()}
        return self.dequantised

    def build_model(self, device: torch.device) -> ADCModel:
        xyz = self.xyz()
        n = xyz.shape[0]
        model = ADCModel(self.cfg, xyz, torch.zeros(n, 3), torch.zeros(n, 6), self.time_rows)
        feats = self.features()
        with torch.no_grad():
            for k in FEATURES:
                getattr(model, k).copy_(feats[k])
        model.theta.load_state_dict(self.theta_state)
        model.deform.load_state_dict(self.deform_state)
        model = model.to(device).eval()
        model.requires_grad_(False)
        return model


def finalize(model: ADCModel, time_rows: int, background: list[float]) -> CodedScene:
    """The trained model as the bitstream stores it."""
    cfg = model.cfg
    theta = {k: v.detach().cpu().clone() for k, v in model.theta.state_dict().items()}
    deform = {k: v.detach().cpu().clone() for k, v in model.deform.state_dict().items()}
    xyz = model.xyz.detach().cpu().double()
    if not cfg.rate_distortion:
        feats = {k: v.detach().cpu().float().clone() for k, v in model.features().items()}
        return CodedScene(cfg, time_rows, background, np.zeros((0, 3), np.int64), theta, deform, None,
                          float_features=feats, float_xyz=xyz.float())
    grid = torch.round(xyz / cfg.snap_grid).long().numpy()
    order = morton_order(grid - grid.min(0)) if len(grid) else np.zeros(0, np.int64)
    idx = torch.from_numpy(order)
    mem: MEM = model.mem
    feats = {k: v.detach().cpu().double()[idx] for k, v in model.features().items()}
    enc = EncodeQuantiser()
    with torch.no_grad():
        deq = cpu64(mem).walk(feats, len(order), enc)
    return CodedScene(cfg, time_rows, background, grid[order], theta, deform,
                      {k: v.detach().cpu().clone() for k, v in mem.decoder_state().items()},
                      symbols=enc.symbols, extra={"stream_params": enc.params},
                      dequantised={k: v.float() for k, v in deq.items()})
