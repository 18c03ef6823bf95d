"""Canonical Gaussian attributes: uniform scalar quantisation (paper Sec. 3.2) and their streams.

Position at ``xyz_bits`` (16), log-scale, quaternion and opacity logit at ``attribute_bits`` (8),
each channel with its own [min, max] (float32, in the header). The raw parameters are quantised
as the deformation network reads them (4DGS adds its deltas to the raw quaternion and to the
opacity logit), after training (post-training quantisation: the paper does not say that these
attributes are quantisation-aware trained, and the Compact3D / LightGaussian codecs it follows
quantise them after training).

Storage: the paper stores the integers "losslessly ... directly" (fixed-length codes). With
``canonical_entropy`` each channel is histogram coded instead when that is smaller
(``intcode.encode_auto``); the fixed-length size of each attribute is recorded in the header so
both numbers are reported.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from evalkit.codec.container import BitstreamError
from evalkit.codec.quantize import UniformQuantParams, uniform_dequantize, uniform_quantize
from evalkit.codec.bitpack import packed_size
from evalkit.codec.intcode import decode_auto, encode_auto, join_streams, split_streams

# bitstream component name -> (Gaussian parameter key, channels)
ATTRIBUTES: dict[str, tuple[str, int]] = {
    "xyz": ("means", 3), "scale": ("scales", 3), "rotation": ("quats", 4), "opacity": ("opacities", 1)}


def attribute_bits(name: str, xyz_bits: int, other_bits: int) -> int:
    return xyz_bits if name == "xyz" else other_bits


def quantize_attribute(x: torch.Tensor, bits: int) -> tuple[torch.Tensor, UniformQuantParams]:
    """(N, C) or (N,) floats -> (N, C) int64 symbols and per-channel [min, max]."""
    x2 = x.detach().reshape(x.shape[0], -1)
    return uniform_quantize(x2, bits, per_channel=True)


def dequantize_attribute(q: torch.Tensor, params: UniformQuantParams, key: str) -> torch.Tensor:
    out = uniform_dequantize(q, params, torch.float32)
    return out[:, 0] if key == "opacities" else out


def params_to_json(p: UniformQuantParams) -> dict:
    return {"bits": p.bits, "lo": [float(v) for v in p.lo.reshape(-1)], "hi": [float(v) for v in p.hi.reshape(-1)]}


def params_from_json(d: dict, source: str | Path) -> UniformQuantParams:
    try:
        lo = torch.tensor(d["lo"], dtype=torch.float32)
        hi = torch.tensor(d["hi"], dtype=torch.float32)
        bits = int(d["bits"])
    except (KeyError, TypeError, ValueError) as exc:
        raise BitstreamError(source, f"corrupt quantisation parameters: {exc}") from None
    if lo.shape != hi.shape or not 1 <= bits <= 32:
        raise BitstreamError(source, "corrupt quantisation parameters")
    return UniformQuantParams(lo=lo, hi=hi, bits=bits)


def encode_symbols(q: torch.Tensor, bits: int, entropy: bool) -> tuple[bytes, int]:
    """(N, C) ints -> (component bytes, fixed-length size in bytes of the same integers)."""
    a = q.cpu().numpy()
    streams = [encode_auto(a[:, c], bits, entropy) for c in range(a.shape[1])]
    return join_streams(streams), packed_size(bits, a.size)


def decode_symbols(data: bytes, n: int, channels: int, bits: int, source: str | Path) -> torch.Tensor:
    streams = split_streams(data, channels, source)
    cols = [decode_auto(s, n, bits, source) for s in streams]
    out = np.stack(cols, axis=1) if cols else np.zeros((n, 0), np.int64)
    if out.size and (out.min() < 0 or out.max() >= (1 << bits)):
        raise BitstreamError(source, f"decoded attribute outside [0, 2**{bits})")
    return torch.from_numpy(out)
