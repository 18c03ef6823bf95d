"""The small networks ADC-GS is built of (layouts from the public code, BasicBlocks.py)."""
from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn import functional as F


class ResidualMLP(nn.Module):
    """Linear(in, w) -> ``blocks`` x [x + Linear(LeakyReLU(Linear(LeakyReLU(x))))] -> LeakyReLU ->
    Linear(w, out), plus a linear skip Linear(in, out) (code's ResidualMLP)."""

    def __init__(self, d_in: int, d_out: int, width: int = 32, blocks: int = 1) -> None:
        super().__init__()
        self.inp = nn.Linear(d_in, width)
        self.blocks = nn.ModuleList(nn.Sequential(nn.LeakyReLU(), nn.Linear(width, width), nn.LeakyReLU(),
                                                  nn.Linear(width, width)) for _ in range(blocks))
        self.out = nn.Linear(width, d_out)
        self.skip = nn.Linear(d_in, d_out)

    def forward(self, x: Tensor) -> Tensor:
        h = self.inp(x)
        for b in self.blocks:
            h = h + b(h)
        return self.out(F.leaky_relu(h)) + self.skip(x)


class MultiHead(nn.Module):
    """Linear(in, w), then per head ReLU-Linear(w, w)-ReLU-Linear(w, out) (the code's deformation
    layout). Heads' last layers start at zero, so a deformation starts as the identity (choice)."""

    def __init__(self, d_in: int, width: int, heads: dict[str, int]) -> None:
        super().__init__()
        self.trunk = nn.Linear(d_in, width)
        self.heads = nn.ModuleDict({k: nn.Sequential(nn.ReLU(), nn.Linear(width, width), nn.ReLU(),
                                                     nn.Linear(width, n)) for k, n in heads.items()})
        for h in self.heads.values():
            nn.init.zeros_(h[-1].weight)
            nn.init.zeros_(h[-1].bias)

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        h = self.trunk(x)
        return {k: head(h) for k, head in self.heads.items()}


def pe_inverse_frequencies(frequencies: int, device: torch.device, dtype: torch.dtype, scale: float = 1.0) -> Tensor:
    """scale / 10000^(2i / (6 * frequencies)), i = 0..frequencies-1 (Vaswani's formula with d = 72 for
    12 frequencies, as the code, at scale 1; ``scale`` multiplies every frequency: the PE of
    scale * x)."""
    i = torch.arange(frequencies, device=device, dtype=dtype)
    # (torch.full, not torch.tensor: no host-to-device copy, so a CUDA graph can capture it)
    return torch.pow(torch.full((), 10000.0, device=device, dtype=dtype), -2.0 * i / (6 * frequencies)) * scale


def encode_angles(ang: Tensor) -> Tensor:
    """(N, 3, F) angles -> (N, 6F): sin then cos per axis."""
    return torch.cat([torch.sin(ang), torch.cos(ang)], dim=-1).flatten(-2)


def positional_encoding(x: Tensor, frequencies: int, scale: float = 1.0) -> Tensor:
    """(N, 3) -> (N, 3 * 2 * frequencies): sin / cos of x times ``pe_inverse_frequencies`` per axis."""
    return encode_angles(x[..., None] * pe_inverse_frequencies(frequencies, x.device, x.dtype, scale))


class TimeTable(nn.Module):
    """f_t (Eq. 3): a learnable (rows, dim) table linearly interpolated at t in [0, 1]."""

    def __init__(self, rows: int, dim: int, init_std: float = 0.0) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(rows, dim) * init_std if init_std > 0 else torch.zeros(rows, dim))

    def forward(self, t: float | Tensor) -> Tensor:
        rows = self.weight.shape[0]
        pos = torch.as_tensor(t, dtype=self.weight.dtype, device=self.weight.device).clamp(0, 1) * (rows - 1)
        lo = torch.clamp(pos.floor().long(), 0, rows - 2) if rows > 1 else torch.zeros_like(pos, dtype=torch.long)
        w = (pos - lo.to(pos.dtype)).clamp(0, 1)
        if rows == 1:
            return self.weight[0]
        # index_select, not weight[lo]: indexing by a 0-d tensor reads it on the host (a device
        # synchronisation, which a CUDA graph cannot capture)
        idx = lo.reshape(-1)
        below = self.weight.index_select(0, idx).reshape(*lo.shape, -1)
        above = self.weight.index_select(0, idx + 1).reshape(*lo.shape, -1)
        return below * (1 - w)[..., None] + above * w[..., None]
