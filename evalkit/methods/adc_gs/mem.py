"""Multi-dimension entropy model, MEM (paper Sec. 3.4, Eqs. 6-9).

Order of the streams (each step only uses what the decoder already has):

1. eta = h_a(f_v) (32 -> 4 -> 4, code sizes), rounded, coded with a learned factorized prior.
2. f_v: Gaussian with mu, sigma = E_fv(eta^) (Eq. 7), step from eta^.
3. Sigma_v, C_v: Gaussians with mu, sigma = E(f_v^), steps from f_v^.
4. f_g in M chunks along the channel axis (choice; each chunk K x N_g / M values per anchor), chunk m
   from E_m(f_v^ + f_g^{<m}) (Eq. 8), step from the same context.

Adaptive quantisation (Eq. 6): step = Q_i (1 + tanh(a)), Q_i = 0.1 / 0.1 / 0.01 / 0.01 for f_v / f_g /
Sigma_v / C_v (paper). Eq. 6's F_q(f_i) reads the value being coded, which the decoder does not
have, so a (one per anchor and attribute) comes from that stream's decodable context (choice: the
form of HAC, on which the paper builds). Training: f + U(-1/2, 1/2) step; coding: round(f / step).
sigma = softplus(.), floored at 0.11 symbols (the coder's smallest scale). E_*: residual MLPs with
2 blocks, width 32 (code). Step heads start at a = 0 (step = Q_i).

The walk over the streams is one function (``walk``) for training, rate estimates, encoding and
decoding, so the coder uses exactly the probabilities training saw.
"""
from __future__ import annotations

from typing import Protocol

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from evalkit.codec.entropy import FactorizedPrior, GaussianConditional
from evalkit.methods.adc_gs.config import ADCConfig
from evalkit.methods.adc_gs.nets import ResidualMLP


GAUSSIAN = GaussianConditional()  # the f_v / Sigma_v / C_v / f_g streams: training bits and coding alike


class Quantiser(Protocol):
    def hyper(self, mem: "MEM", fv: Tensor | None, n: int) -> Tensor: ...

    def gauss(self, name: str, x: Tensor | None, mean: Tensor, scale: Tensor, step: Tensor) -> Tensor: ...


def stream_names(cfg: ADCConfig) -> list[str]:
    return ["hyper", "fv", "sigma", "color"] + [f"fg{m}" for m in range(cfg.fg_chunks)]


class MEM(nn.Module):
    def __init__(self, cfg: ADCConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.chunk = cfg.fg_dim // cfg.fg_chunks
        w, fv, h = cfg.entropy_width, cfg.fv_dim, cfg.hyper_dim
        self.h_a = nn.Sequential(nn.Linear(fv, h), nn.LeakyReLU(), nn.Linear(h, h))  # encoder only
        self.prior = FactorizedPrior(h)
        self.e_fv = ResidualMLP(h, 2 * fv, w, 2)
        self.e_sigma = ResidualMLP(fv, 12, w, 2)
        self.e_color = ResidualMLP(fv, 6, w, 2)
        cw = cfg.k * self.chunk
        self.e_fg = nn.ModuleList(ResidualMLP(fv + m * cw, 2 * cw, w, 2) for m in range(cfg.fg_chunks))
        self.step_fv = nn.Linear(h, 1)
        self.step_sigma = nn.Linear(fv, 1)
        self.step_color = nn.Linear(fv, 1)
        self.step_fg = nn.ModuleList(nn.Linear(fv + m * cw, 1) for m in range(cfg.fg_chunks))
        for lin in (self.step_fv, self.step_sigma, self.step_color, *self.step_fg):
            nn.init.zeros_(lin.weight)
            nn.init.zeros_(lin.bias)

    def decoder_state(self) -> dict[str, Tensor]:
        """What the decoder needs (everything but h_a)."""
        return {k: v for k, v in self.state_dict().items() if not k.startswith("h_a.")}

    def values_per_anchor(self) -> int:
        c = self.cfg
        return c.hyper_dim + c.fv_dim + 6 + 3 + c.k * c.fg_dim

    @staticmethod
    def _params(out: Tensor, step: Tensor) -> tuple[Tensor, Tensor]:
        mean, raw = out.chunk(2, dim=-1)
        return mean / step, F.softplus(raw) / step

    @staticmethod
    def _step(q: float, head: nn.Linear, ctx: Tensor) -> Tensor:
        return q * (1.0 + torch.tanh(head(ctx)))

    def walk(self, feats: dict[str, Tensor] | None, n: int, quant: Quantiser) -> dict[str, Tensor]:
        """Quantise (or decode) the anchor features stream by stream; ``feats`` is None when
        decoding. Returns the dequantised features."""
        cfg = self.cfg
        get = (lambda k: None) if feats is None else (lambda k: feats[k])
        eta = quant.hyper(self, get("fv"), n)
        step = self._step(cfg.q_fv, self.step_fv, eta)
        fv = quant.gauss("fv", get("fv"), *self._params(self.e_fv(eta), step), step)
        step = self._step(cfg.q_sigma, self.step_sigma, fv)
        sigma = quant.gauss("sigma", get("sigma"), *self._params(self.e_sigma(fv), step), step)
        step = self._step(cfg.q_color, self.step_color, fv)
        color = quant.gauss("color", get("color"), *self._params(self.e_color(fv), step), step)
        fg_in = get("fg")
        chunks: list[Tensor] = []
        for m in range(cfg.fg_chunks):
            ctx = torch.cat([fv, *chunks], dim=-1)
            step = self._step(cfg.q_fg, self.step_fg[m], ctx)
            x = None if fg_in is None else fg_in[:, :, m * self.chunk:(m + 1) * self.chunk].reshape(n, -1)
            chunks.append(quant.gauss(f"fg{m}", x, *self._params(self.e_fg[m](ctx), step), step))
        fg = torch.stack([c.reshape(n, cfg.k, self.chunk) for c in chunks], dim=2).reshape(n, cfg.k, cfg.fg_dim)
        return {"fv": fv, "fg": fg, "sigma": sigma, "color": color}


class TrainingQuantiser:
    """f + U(-1/2, 1/2) step ("noise") or round(f / step) step ("round", straight-through), with the
    bits of every stream under the model (differentiable)."""

    def __init__(self, mode: str = "noise", row_weight: Tensor | None = None) -> None:
        self.mode = mode
        self.row_weight = row_weight
        self.bits: dict[str, Tensor] = {}

    def _weighted_bits(self, likelihood: Tensor) -> Tensor:
        """sum over anchors of row_weight x -log2 likelihood (the padded path; the models floor
        the likelihood at 1e-9, so the logarithm is finite)."""
        return -(torch.log2(likelihood) * self.row_weight).sum()

    def _q(self, x: Tensor) -> Tensor:
        if self.mode == "noise":
            return x + torch.empty_like(x).uniform_(-0.5, 0.5)
        return x + (torch.round(x) - x).detach()

    def hyper(self, mem: MEM, fv: Tensor, n: int) -> Tensor:
        eta = self._q(mem.h_a(fv))
        self.bits["hyper"] = (mem.prior.bits(eta) if self.row_weight is None
                              else self._weighted_bits(mem.prior.likelihood(eta)))
        return eta

    def gauss(self, name: str, x: Tensor, mean: Tensor, scale: Tensor, step: Tensor) -> Tensor:
        s = self._q(x / step)
        self.bits[name] = (GAUSSIAN.bits(s, mean, scale) if self.row_weight is None
                           else self._weighted_bits(GAUSSIAN.likelihood(s, mean, scale)))
        return s * step


def quantise(mem: MEM, feats: dict[str, Tensor], mode: str = "noise",
             row_weight: Tensor | None = None) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """(quantised features, bits per stream) for training (``noise``) or estimates (``round``);
    ``row_weight`` (anchors, 1) weighs each anchor's bits (0 for the padding rows of a graphed unit)."""
    q = TrainingQuantiser(mode, row_weight)
    out = mem.walk(feats, feats["fv"].shape[0], q)
    return out, q.bits


def bits_per_value(mem: MEM, bits: dict[str, Tensor], n: int) -> Tensor:
    """R: bits per coded value over all MEM streams (choice, as HAC)."""
    return sum(bits.values()) / max(1, n * mem.values_per_anchor())
