"""Entropy-coder throughput and efficiency on data drawn from the models themselves.

    python -m evalkit.bench.entropy [--n 1000000] [--channels 8] [--fit-steps 300] [--seed 0]

One line per coder, ``key=value`` fields: ``coder``, ``symbols``, ``encode_sym_per_s``,
``decode_sym_per_s``, ``bits_per_symbol`` (real bytes * 8 / symbols), ``estimate_bits_per_symbol``
(the differentiable rate the models give training), ``coded_over_estimate``. Every stream is
decoded and checked to equal the input.

Coders: the discretised Gaussian and Laplacian conditionals (means uniform in [-50, 50], scales
log-uniform in [0.2, 100], values drawn from that distribution), the factorized prior after
``--fit-steps`` Adam steps on Laplacian data with per-channel scales 0.5..40, and uniform
coding of 8-bit values. Times cover compress/decompress (incl. parameter quantisation and the
per-stream table build of the factorized prior), not the one-off table build of the
conditionals or the torchac compilation, both done before timing. CPU only (torchac is a CPU
coder).
"""
from __future__ import annotations

import argparse
import math
import time
from dataclasses import dataclass
from typing import Callable

import torch

from evalkit.codec.entropy import FactorizedPrior, GaussianConditional, compress_uniform, decompress_uniform


@dataclass
class CoderResult:
    coder: str
    symbols: int
    encode_s: float
    decode_s: float
    nbytes: int
    estimate_bits: float

    def line(self) -> str:
        bps = self.nbytes * 8 / self.symbols
        est = self.estimate_bits / self.symbols
        return (f"coder={self.coder} symbols={self.symbols} "
                f"encode_sym_per_s={self.symbols / self.encode_s:.3e} "
                f"decode_sym_per_s={self.symbols / self.decode_s:.3e} "
                f"bits_per_symbol={bps:.4f} estimate_bits_per_symbol={est:.4f} "
                f"coded_over_estimate={bps / est:.4f}")


def _timed(fn: Callable[[], object]) -> tuple[object, float]:
    t = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t


def _laplace(shape: tuple[int, ...], g: torch.Generator) -> torch.Tensor:
    u = torch.rand(shape, generator=g, dtype=torch.float64) - 0.5
    return -torch.sign(u) * torch.log1p(-2 * u.abs())


def bench_conditional(family: str, n: int, g: torch.Generator) -> CoderResult:
    gc = GaussianConditional(family)
    _ = gc.tables  # one-off build, outside the timing
    mean = (torch.rand(n, generator=g, dtype=torch.float64) - 0.5) * 100
    scale = torch.exp(torch.empty(n, dtype=torch.float64).uniform_(math.log(0.2), math.log(100), generator=g))
    noise = torch.randn(n, generator=g, dtype=torch.float64) if family == "gaussian" else _laplace((n,), g)
    q = torch.round(mean + scale * noise).long()
    est = float(gc.bits(q.double(), mean, scale))
    data, te = _timed(lambda: gc.compress(q, mean, scale))
    back, td = _timed(lambda: gc.decompress(data, mean, scale))
    if not torch.equal(back, q):
        raise AssertionError(f"{family} conditional did not round-trip")
    return CoderResult(f"{family}_conditional", n, te, td, len(data), est)


def bench_factorized(n: int, channels: int, fit_steps: int, g: torch.Generator) -> CoderResult:
    rows = max(1, n // channels)
    b = torch.exp(torch.linspace(math.log(0.5), math.log(40), channels, dtype=torch.float64))
    q = torch.round(_laplace((rows, channels), g) * b).float()
    prior = FactorizedPrior(channels)
    opt = torch.optim.Adam(prior.parameters(), lr=0.05)
    for _ in range(fit_steps):
        batch = q[torch.randint(0, rows, (4096,), generator=g)]
        loss = prior.bits(batch + torch.empty_like(batch).uniform_(-0.5, 0.5, generator=g)) / batch.numel()
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        est = float(prior.bits(q))
    qi = q.long()
    data, te = _timed(lambda: prior.compress(qi))
    back, td = _timed(lambda: prior.decompress(data, rows))
    if not torch.equal(back, qi):
        raise AssertionError("factorized prior did not round-trip")
    return CoderResult("factorized_prior", rows * channels, te, td, len(data), est)


def bench_uniform(n: int, g: torch.Generator) -> CoderResult:
    q = torch.randint(0, 256, (n,), generator=g)
    data, te = _timed(lambda: compress_uniform(q, 0, 255))
    back, td = _timed(lambda: decompress_uniform(data, n, 0, 255))
    if not torch.equal(back, q):
        raise AssertionError("uniform coder did not round-trip")
    return CoderResult("uniform_8bit", n, te, td, len(data), 8.0 * n)


def main(argv: list[str] | None = None) -> list[CoderResult]:
    ap = argparse.ArgumentParser(prog="python -m evalkit.bench.entropy", description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=1_000_000, help="symbols per coder")
    ap.add_argument("--channels", type=int, default=8, help="channels of the factorized prior")
    ap.add_argument("--fit-steps", type=int, default=300, help="Adam steps fitting the factorized prior")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    if args.n < 1:
        ap.error("--n must be positive")
    g = torch.Generator().manual_seed(args.seed)
    compress_uniform(torch.zeros(1, dtype=torch.long), 0, 1)  # compile/load torchac before timing
    results = [bench_conditional("gaussian", args.n, g), bench_conditional("laplacian", args.n, g),
               bench_factorized(args.n, args.channels, args.fit_steps, g), bench_uniform(args.n, g)]
    print(f"# entropy bench: torch threads={torch.get_num_threads()}, seed={args.seed}")
    for r in results:
        print(r.line(), flush=True)
    return results


if __name__ == "__main__":
    main()
