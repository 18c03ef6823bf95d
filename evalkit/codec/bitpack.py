"""Vectorised packing of unsigned integers with per-value bit widths (MSB first).

Used for raw (bypass) payloads: escape values of the arithmetic coder and uniformly coded
symbols whose range is too wide for a CDF table.
"""
from __future__ import annotations

import numpy as np

from evalkit.codec.container import BitstreamError

_PIECE = 1 << 18  # values expanded to bits at a time (bounds temporary memory)


def _bits_of(values: np.ndarray, widths: np.ndarray) -> np.ndarray:
    """One uint8 per bit, MSB first, for values[i] written in widths[i] bits."""
    total = int(widths.sum())
    if total == 0:
        return np.zeros(0, np.uint8)
    owner = np.repeat(np.arange(len(values)), widths)
    starts = np.cumsum(widths) - widths
    shift = (widths[owner] - 1 - (np.arange(total) - starts[owner])).astype(np.uint64)
    return ((values[owner] >> shift) & np.uint64(1)).astype(np.uint8)


def pack_bits(values: np.ndarray, widths: np.ndarray | int) -> bytes:
    """Concatenate ``values[i]`` in ``widths[i]`` bits each (0..64), zero-padded to a byte."""
    values = np.asarray(values, dtype=np.uint64).ravel()
    widths = np.broadcast_to(np.asarray(widths, dtype=np.int64), values.shape)
    if widths.size and (widths.min() < 0 or widths.max() > 64):
        raise ValueError("bit widths must lie in 0..64")
    short = widths < 64
    if np.any(values[short] >> widths[short].astype(np.uint64)):
        raise ValueError("a value does not fit its bit width")
    pieces = [_bits_of(values[i:i + _PIECE], widths[i:i + _PIECE]) for i in range(0, len(values), _PIECE)]
    bits = np.concatenate(pieces) if pieces else np.zeros(0, np.uint8)
    return np.packbits(bits).tobytes()


def packed_size(widths: np.ndarray | int, count: int | None = None) -> int:
    """Bytes that pack_bits produces for these widths."""
    total = int(widths) * int(count) if np.isscalar(widths) else int(np.asarray(widths, np.int64).sum())
    return (total + 7) // 8


def unpack_bits(data: bytes, widths: np.ndarray, source: str = "<bit payload>") -> np.ndarray:
    """Inverse of pack_bits; ``data`` must have exactly the packed length. Returns uint64."""
    widths = np.asarray(widths, dtype=np.int64).ravel()
    if len(data) != packed_size(widths):
        raise BitstreamError(source, f"bit payload has {len(data)} bytes, expected {packed_size(widths)}")
    out = np.zeros(len(widths), np.uint64)
    bits = np.unpackbits(np.frombuffer(data, np.uint8))
    starts = np.cumsum(widths) - widths
    for i in range(0, len(widths), _PIECE):
        w, s = widths[i:i + _PIECE], starts[i:i + _PIECE]
        nz = np.flatnonzero(w)
        if nz.size == 0:
            continue
        wn, sn = w[nz], s[nz]
        owner = np.repeat(np.arange(nz.size), wn)
        local = np.arange(int(wn.sum())) - np.repeat(np.cumsum(wn) - wn, wn)
        pos = sn[owner] + local
        contrib = bits[pos].astype(np.uint64) << (wn[owner] - 1 - local).astype(np.uint64)
        # bits of one value are disjoint, so the sum equals the bitwise or
        out[i + nz] = np.add.reduceat(contrib, np.cumsum(wn) - wn)
    return out
