"""VQCC: lossless coding of the quantised codebook with a learned hyperprior (paper Sec. 3.3).

Each quantised code vector y_i (integers: code / ``codebook_qstep``) gets a hyper-latent
z_i = h_a(y_i) (MLP), quantised and coded with a factorized (non-parametric, per channel) prior
as in Balle et al. 2018 [2]; y_i is coded with a discretised Gaussian whose mean and scale an MLP
h_s predicts from z_i. The networks work in value units (symbol x step), the Gaussian in symbol
units. Training uses ``bits`` (noise or straight-through relaxation); coding uses the same
networks, evaluated on CPU in float64 from the decoded z (``compute_params_on_cpu``).
"""
from __future__ import annotations

from pathlib import Path


import torch
import torch.nn as nn

from evalkit.codec.entropy import FactorizedPrior, GaussianConditional, compute_params_on_cpu, cpu64
from evalkit.codec.quantize import relaxed_round, round_ste
from evalkit.codec.intcode import join_streams, split_streams


def center_factorized_prior(prior: FactorizedPrior, medians: torch.Tensor) -> None:
    """Shift a fresh prior's density so that channel c is centred near ``medians[c]``
    (data-dependent initialisation; the coded values are unaffected)."""
    with torch.no_grad():
        m0 = nn.functional.softplus(prior.matrices[0])  # (C, F, 1)
        prior.biases[0].sub_(m0 * medians.to(m0).reshape(-1, 1, 1))


class VQCC(nn.Module):
    def __init__(self, dim: int, step: float, hidden: int = 64, latent: int = 16) -> None:
        super().__init__()
        self.dim, self.step, self.latent = int(dim), float(step), int(latent)
        self.h_a = nn.Sequential(nn.Linear(dim, hidden), nn.LeakyReLU(), nn.Linear(hidden, latent))
        self.h_s = nn.Sequential(nn.Linear(latent, hidden), nn.LeakyReLU(), nn.Linear(hidden, 2 * dim))
        self.prior = FactorizedPrior(latent)
        self.conditional = GaussianConditional()
        nn.init.zeros_(self.h_s[-1].weight)  # starts from the data-dependent bias (``initialise``)
        self.initialised = False  # ``initialise`` ran (training only; coding never changes weights)

    def _params(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Gaussian (mean, scale) of y in symbol units from z."""
        mean_v, log_scale = self.h_s(z).chunk(2, dim=-1)
        return mean_v / self.step, torch.exp(log_scale.clamp(-12.0, 12.0))

    @torch.no_grad()
    def initialise(self, codebook: torch.Tensor) -> None:
        """Data-dependent start (when VQ starts): the hyperprior's density centred on the
        hyper-latents, every dimension's Gaussian on its mean and spread over the codebook."""
        y = torch.round(codebook / self.step)
        z = self.h_a(y * self.step)
        center_factorized_prior(self.prior, z.median(0).values)
        last = self.h_s[-1]
        last.bias[:self.dim] = y.mean(0) * self.step
        last.bias[self.dim:] = torch.log(y.std(0, unbiased=False).clamp_min(0.5))
        self.initialised = True

    def bits(self, codebook: torch.Tensor, mode: str = "noise") -> tuple[torch.Tensor, int]:
        """Estimated bits for the (continuous) codebook (K, D); mode noise / ste / round."""
        y = codebook / self.step
        y_hat = round_ste(y)
        z = self.h_a(y_hat * self.step)
        z_t = relaxed_round(z, mode)
        mean, scale = self._params(z_t)
        b = self.prior.bits(z_t) + self.conditional.bits(relaxed_round(y, mode), mean, scale)
        return b, int(y.numel())

    # -- coding ------------------------------------------------------------------------
    def compress_streams(self, symbols: torch.Tensor) -> tuple[bytes, bytes]:
        """symbols (K, D) int64 -> (hyper-latent stream, code-vector stream)."""
        m64 = cpu64(self)
        z = torch.round(compute_params_on_cpu(m64.h_a, symbols.to(torch.float64) * self.step)).to(torch.int64)
        mean, scale = compute_params_on_cpu(m64._params, z.double())
        return self.prior.compress(z), self.conditional.compress(symbols, mean, scale)

    def decompress_streams(self, z_bytes: bytes, y_bytes: bytes, n_codes: int, source: str | Path) -> torch.Tensor:
        z = self.prior.decompress(z_bytes, n_codes, source)
        mean, scale = compute_params_on_cpu(cpu64(self)._params, z.double())
        return self.conditional.decompress(y_bytes, mean, scale, source)


def fixed_codebook_streams(symbols: torch.Tensor) -> tuple[bytes, list[list[int]]]:
    """"w/o VQCC": every dimension stored with uniform codes over its [min, max]
    (log2(max - min + 1) bits per value, ``compress_uniform``)."""
    from evalkit.codec.entropy import compress_uniform

    a = symbols.cpu().numpy()
    ranges = [[int(a[:, d].min()), int(a[:, d].max())] for d in range(a.shape[1])]
    return join_streams([compress_uniform(a[:, d], lo, hi) for d, (lo, hi) in enumerate(ranges)]), ranges


def fixed_codebook_decode(data: bytes, n_codes: int, ranges: list[list[int]], source: str | Path) -> torch.Tensor:
    from evalkit.codec.entropy import decompress_uniform

    streams = split_streams(data, len(ranges), source)
    cols = [decompress_uniform(s, n_codes, lo, hi, source) for s, (lo, hi) in zip(streams, ranges)]
    return torch.stack(cols, dim=1) if cols else torch.zeros(n_codes, 0, dtype=torch.int64)

