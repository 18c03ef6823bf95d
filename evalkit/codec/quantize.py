"""Quantisation: training relaxations of rounding and uniform N-bit scalar quantisation.

Training: ``add_uniform_noise`` (x + U(-.5, .5), the usual proxy whose density matches the
discretised likelihood) and ``round_ste`` (round forward, identity gradient).

Storage: ``uniform_quantize`` maps floats to integers in [0, 2**bits - 1] with per-channel
(last dimension) or global min/max, e.g. xyz at 16 bits, scale/rotation/opacity at 8 bits.
The dequantisation parameters are float32 so they can be stored exactly (``to_bytes``).
"""
from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
from torch import Tensor

from evalkit.codec.container import BitstreamError
from evalkit.codec.serialize import read_tensor_at, tensor_to_bytes


def add_uniform_noise(x: Tensor) -> Tensor:
    """x + U(-0.5, 0.5): differentiable stand-in for rounding during training."""
    return x + torch.empty_like(x).uniform_(-0.5, 0.5)


def round_ste(x: Tensor) -> Tensor:
    """Round in the forward pass, identity gradient in the backward pass."""
    return x + (torch.round(x) - x).detach()


def relaxed_round(x: Tensor, mode: Literal["noise", "ste", "round"]) -> Tensor:
    """Training-time rounding: "noise" (additive uniform), "ste" (straight-through), "round" (hard)."""
    if mode == "noise":
        return add_uniform_noise(x)
    if mode == "ste":
        return round_ste(x)
    if mode == "round":
        return torch.round(x)
    raise ValueError(f"unknown rounding mode {mode!r}")


@dataclass(frozen=True)
class UniformQuantParams:
    """x ~= lo + q * (hi - lo) / (2**bits - 1); lo/hi float32 (scalar or per channel)."""
    lo: Tensor
    hi: Tensor
    bits: int

    @property
    def levels(self) -> int:
        return (1 << self.bits) - 1

    def step(self) -> Tensor:
        """Quantisation step in float64 (0 where hi == lo)."""
        return (self.hi.double() - self.lo.double()) / self.levels

    def to_bytes(self) -> bytes:
        return struct.pack("<B", self.bits) + tensor_to_bytes(self.lo) + tensor_to_bytes(self.hi)

    @classmethod
    def from_bytes(cls, data: bytes, source: str | Path = "<quant params>") -> "UniformQuantParams":
        if len(data) < 1:
            raise BitstreamError(source, "empty quantisation parameters")
        lo, pos = read_tensor_at(data, 1, source)
        hi, pos = read_tensor_at(data, pos, source)
        if pos != len(data):
            raise BitstreamError(source, f"{len(data) - pos} trailing bytes after quantisation parameters")
        if lo.shape != hi.shape or lo.dtype != torch.float32 or not 1 <= data[0] <= 32:
            raise BitstreamError(source, "corrupt quantisation parameters")
        return cls(lo=lo, hi=hi, bits=data[0])


def uniform_quantize(x: Tensor, bits: int, per_channel: bool = True,
                     lo: Tensor | None = None, hi: Tensor | None = None) -> tuple[Tensor, UniformQuantParams]:
    """Quantise x to int64 in [0, 2**bits - 1].

    ``per_channel``: min/max over all dimensions but the last (x of shape (..., C)); else one
    global min/max. Given ``lo``/``hi`` are used instead (values outside are clamped).
    Computed in float64 so the result does not depend on the device's float32 arithmetic.
    """
    if not 1 <= bits <= 32:
        raise ValueError(f"bits must lie in 1..32, got {bits}")
    if x.numel() and not torch.isfinite(x).all():
        raise ValueError("cannot quantise non-finite values")
    xd = x.detach().double()
    if lo is None or hi is None:
        if x.numel() == 0:
            raise ValueError("cannot derive min/max of an empty tensor; pass lo and hi")
        flat = xd.reshape(-1, x.shape[-1]) if per_channel and x.ndim > 0 else xd.reshape(-1, 1)
        lo = flat.min(0).values if lo is None else lo
        hi = flat.max(0).values if hi is None else hi
        if not per_channel or x.ndim == 0:
            lo, hi = lo.reshape(()), hi.reshape(())
    params = UniformQuantParams(lo=torch.as_tensor(lo).detach().to("cpu", torch.float32).clone(),
                                hi=torch.as_tensor(hi).detach().to("cpu", torch.float32).clone(), bits=bits)
    if (params.hi < params.lo).any():
        raise ValueError("hi must be >= lo")
    step = params.step().to(xd.device)
    lo64 = params.lo.double().to(xd.device)
    q = torch.where(step > 0, torch.round((xd - lo64) / torch.where(step > 0, step, 1.0)), 0.0)
    return q.clamp_(0, params.levels).to(torch.int64), params


def uniform_dequantize(q: Tensor, params: UniformQuantParams, dtype: torch.dtype = torch.float32) -> Tensor:
    """lo + q * step in float64, cast to ``dtype`` (on q's device)."""
    q64 = q.double()
    out = params.lo.double().to(q.device) + q64 * params.step().to(q.device)
    return out.to(dtype)
