"""Vector quantisation of the canonical SH colours (paper Sec. 3.2, after Compact3D [38]).

Training follows Compact3D (Navaneet et al.; its public ``kmeans_quantize.py``), whose VQ the paper
adopts:

* The continuous SH coefficients (DC + rest, 48 values for degree 3) stay parameters of the
  Gaussians; the rendered colour is the Gaussian's code vector with a straight-through estimator
  (forward: the code; backward: the gradient goes to the Gaussian's continuous SH).
* A code vector is the mean of the continuous SH of its members, recomputed at every step (the
  codes follow their members, so a member's gradient moves the rendered colour of its code).
* VQ starts when densification stops (Compact3D starts at 3DGS's densify_until_iter, 15k of 30k),
  so the Gaussian set no longer changes; the codebook starts from k-means (k-means++ seeds, a
  choice: Compact3D seeds with random points, which leaves duplicate centres) with
  ``kmeans_iters`` Lloyd iterations.
* Every ``vq_assign_interval`` steps (Compact3D: 100) during the first ``vq_assign_fraction`` of the
  VQ phase the clustering is refined by ``kmeans_iters`` Lloyd iterations from the current codes
  (Compact3D's ``cluster_assign``); then the assignment is frozen.
* The VQCC rate of Eq. (2) is computed on the codes (the member means). By default it trains the
  VQCC networks only: the paper calls VQCC lossless coding of the quantised codebook, and Compact3D
  detaches its member means. ``vqcc_rate_moves_codes`` lets its gradient reach the members'
  continuous SH through their mean (``code_vectors`` is differentiable) instead: it pulls the codes
  together, a smaller codebook for a lower PSNR (results/MEASUREMENTS.md).
* The codes are quantised (step ``codebook_qstep``, straight-through) when rendered, so the
  rendered colours are the decoded ones.

An earlier version learned the codebook as a free parameter beside the continuous SH: the
continuous SH then drifted away from their codes (the render does not change when they move) and
the re-assignments gathered most Gaussians on a few hundred codes, costing quality
(results/MEASUREMENTS.md).

Coding: unused codes are dropped, the Gaussians are sorted by index (their order is arbitrary)
and the sorted index array is run-length coded as the run length of every code in order
(Compact3D sorts and run-length codes its indices the same way; 4DGS-CC: "the indices are ...
compressed using a run-length coding algorithm"). The run lengths are entropy coded
(``intcode.encode_unsigned``).
"""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn as nn

from evalkit.codec.container import BitstreamError
from evalkit.codec.quantize import round_ste
from evalkit.codec.intcode import decode_unsigned, encode_unsigned


def nearest_code(x: torch.Tensor, codes: torch.Tensor, chunk_elements: int = 1 << 24) -> torch.Tensor:
    """Index of the nearest row of ``codes`` (K, D) for each row of ``x`` (N, D) (squared L2)."""
    x, codes = x.detach(), codes.detach()
    c2 = codes.square().sum(1)
    rows = max(1, chunk_elements // max(codes.shape[0], 1))
    out = [torch.argmin(c2[None, :] - 2.0 * x[i:i + rows] @ codes.t(), dim=1) for i in range(0, x.shape[0], rows)]
    return torch.cat(out) if out else torch.zeros(0, dtype=torch.long, device=x.device)


def kmeans_plus_plus(x: torch.Tensor, k: int, seed: int = 0) -> torch.Tensor:
    """k-means++ seeding (Arthur & Vassilvitskii 2007): each next centre drawn with probability
    proportional to the squared distance to the nearest centre so far."""
    g = torch.Generator(device=x.device).manual_seed(seed)
    n = x.shape[0]
    first = torch.randint(n, (1,), generator=g, device=x.device)
    centres = [x[first]]
    d2 = (x - x[first]).square().sum(1)
    for _ in range(1, k):
        cdf = torch.cumsum(d2.double(), 0)
        u = torch.rand(1, generator=g, device=x.device, dtype=torch.float64) * cdf[-1]
        nxt = torch.searchsorted(cdf, u).clamp_(max=n - 1)
        centres.append(x[nxt])
        d2 = torch.minimum(d2, (x - x[nxt]).square().sum(1))
    return torch.cat(centres, 0)


def lloyd(x: torch.Tensor, centres: torch.Tensor, iters: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``iters`` Lloyd iterations from ``centres``; empty clusters keep their centre. Returns the
    centres and the nearest-centre index of every row."""
    x, centres = x.detach(), centres.detach().clone()
    k = centres.shape[0]
    for _ in range(iters):
        idx = nearest_code(x, centres)
        sums = torch.zeros_like(centres).index_add_(0, idx, x)
        counts = torch.zeros(k, dtype=x.dtype, device=x.device).index_add_(0, idx, torch.ones_like(x[:, 0]))
        centres = torch.where(counts[:, None] > 0, sums / counts.clamp(min=1)[:, None], centres)
    return centres, nearest_code(x, centres)


def kmeans(x: torch.Tensor, k: int, iters: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Lloyd's k-means from k-means++ seeds."""
    n = x.shape[0]
    if not 1 <= k <= n:
        raise ValueError(f"k-means needs 1 <= k <= N, got k={k}, N={n}")
    return lloyd(x, kmeans_plus_plus(x.detach(), k, seed), iters)


class SHVectorQuantizer(nn.Module):
    """Codes (K, D) + per-Gaussian indices; ``forward`` maps continuous SH to code vectors."""

    def __init__(self, size: int, dim: int, step: float, kmeans_iters: int = 10, seed: int = 0) -> None:
        super().__init__()
        self.size = int(size)
        self.step = float(step)
        self.kmeans_iters = int(kmeans_iters)
        self.seed = int(seed)
        # the codes as of the last step (member means); not a parameter: they follow the members
        self.register_buffer("codebook", torch.zeros(self.size, dim))
        self.register_buffer("indices", torch.zeros(0, dtype=torch.long))
        self.register_buffer("counts", torch.zeros(self.size))  # members per code
        self.n_codes = self.size  # codes in use: fewer when there are fewer Gaussians than codes
        self.active = False
        self.pending: str | None = None  # "init" / "assign": done at the next forward
        self.round_codes = True  # False only to measure what the rounding of the codes costs

    def set_assignment(self, indices: torch.Tensor) -> None:
        self.indices = indices
        self.counts = torch.zeros(self.size, device=indices.device).index_add_(
            0, indices, torch.ones(indices.shape[0], device=indices.device))

    def code_vectors(self, flat: torch.Tensor) -> torch.Tensor:
        """(n_codes, D) member means of the continuous SH ``flat`` (N, D), differentiable; a code
        without members keeps its last value. No host synchronisation (runs every step)."""
        n = self.n_codes
        sums = flat.new_zeros(n, flat.shape[1]).index_add(0, self.indices, flat)
        counts = self.counts[:n, None]
        return torch.where(counts > 0, sums / counts.clamp(min=1), self.codebook[:n])

    def quantized_codebook(self, codes: torch.Tensor | None = None) -> torch.Tensor:
        """Code vectors on the ``step`` grid (straight-through)."""
        codes = self.codebook[:self.n_codes] if codes is None else codes
        return self.step * round_ste(codes / self.step)

    @torch.no_grad()
    def initialise(self, flat: torch.Tensor) -> None:
        k = min(self.size, flat.shape[0])  # fewer Gaussians than codes: one code each
        centres, idx = kmeans(flat, k, self.kmeans_iters, self.seed)
        self.codebook.zero_()
        self.codebook[:k] = centres
        self.n_codes = k
        self.set_assignment(idx)
        self.active = True

    @torch.no_grad()
    def assign(self, flat: torch.Tensor) -> None:
        """Refine the clustering from the current codes (Compact3D's periodic ``cluster_assign``)."""
        centres, idx = lloyd(flat, self.codebook[:self.n_codes], self.kmeans_iters)
        self.codebook[:self.n_codes] = centres
        self.set_assignment(idx)

    @torch.no_grad()
    def usage(self) -> dict[str, int]:
        """Codes kept (``n_codes``), distinct after quantisation to the grid, and used by at
        least one Gaussian: a diagnostic for codebook collapse."""
        q = torch.round(self.codebook[:self.n_codes] / self.step)
        return {"codes": int(self.n_codes), "distinct_quantised": int(torch.unique(q, dim=0).shape[0]),
                "used": int(torch.unique(self.indices).numel())}

    def forward(self, sh: torch.Tensor) -> torch.Tensor:
        flat = sh.reshape(sh.shape[0], -1)
        if self.pending == "init" or (self.pending == "assign" and not self.active):
            self.initialise(flat)
        elif self.pending == "assign":
            self.assign(flat)
        self.pending = None
        if not self.active:
            return sh
        if self.indices.shape[0] != flat.shape[0]:  # the Gaussian set changed: cluster again
            self.assign(flat)
        with torch.no_grad():
            codes = self.code_vectors(flat)
            self.codebook[:self.n_codes] = codes
        q = (self.quantized_codebook(codes) if self.round_codes else codes)[self.indices]
        return (q + (flat - flat.detach())).reshape(sh.shape)


# -- index coding ------------------------------------------------------------------------
def compact_and_sort(indices: torch.Tensor, codebook_symbols: torch.Tensor
                     ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Drop unused codes and order Gaussians by code.

    Returns (order (N,): Gaussian permutation, run lengths (K',) >= 1, codebook symbols (K', D))."""
    idx = indices.detach().cpu()
    used, remapped = torch.unique(idx, sorted=True, return_inverse=True)
    order = torch.sort(remapped, stable=True).indices
    runs = torch.bincount(remapped, minlength=len(used))
    return order, runs, codebook_symbols.detach().cpu()[used]


def indices_from_runs(runs: torch.Tensor) -> torch.Tensor:
    return torch.repeat_interleave(torch.arange(len(runs)), runs)


def encode_runs(runs: torch.Tensor) -> bytes:
    return encode_unsigned(runs.numpy() - 1)


def decode_runs(data: bytes, n_codes: int, n_gaussians: int, source: str | Path) -> torch.Tensor:
    runs = torch.from_numpy(decode_unsigned(data, n_codes, source) + 1)
    if int(runs.sum()) != n_gaussians:
        raise BitstreamError(source, f"VQ run lengths cover {int(runs.sum())} Gaussians, expected {n_gaussians}")
    return runs

