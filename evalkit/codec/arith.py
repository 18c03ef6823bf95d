"""Arithmetic coding of unbounded integers with integer CDF tables (torchac backend).

A *table set* holds T discrete distributions, each over a contiguous value range
``[lo_t, hi_t]`` plus two escape symbols (below / above the range). Every symbol of a stream
names its table. Table index layout (what torchac sees)::

    0            low escape   (value < lo_t)
    1 .. L_t-2   values lo_t .. hi_t
    L_t - 1      high escape  (value > hi_t)

An escaped value is coded exactly as its overflow ``o >= 0`` past the range edge, in a raw
payload: 6 bits for ``m = bitlength(o + 1) - 1``, then the low ``m`` bits of ``o + 1``. So any
int64 with ``|v| <= 2**62`` round-trips, however far outside the table range.

Counts of each table sum to ``TOTAL = 2**16 - 1`` with every symbol >= 1. torchac gives its
highest symbol index the interval up to ``2**16``, so tables narrower than a chunk are padded
with CDF entries equal to ``TOTAL``: the padded indices get zero width (never coded) and the
last real symbol keeps ``[cdf, TOTAL)``. Symbols are coded grouped by table width (stable
order, reproducible by the decoder) in chunks whose materialised ``(n, width)`` CDF tensor
stays under ``CHUNK_ENTRIES``.

Stream layout::

    u32 crc32 of the values (int64 LE)  -- a decoder using other tables fails loudly
    uvarint n_chunks, then per chunk: uvarint n_symbols, uvarint n_bytes
    chunk payloads (torchac), escape headers (6 bits each, byte-padded), escape payload bits

Decoder tables must be bit-identical to the encoder's: build them from integers or from
float64 CPU math on bit-identical inputs (see evalkit.codec.entropy).
"""
from __future__ import annotations

import os
import struct
import sys
import tempfile
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from evalkit.codec.bitpack import pack_bits, packed_size, unpack_bits
from evalkit.codec.container import BitstreamError
from evalkit.codec.serialize import read_uvarint, write_uvarint

PRECISION = 16
TOTAL = (1 << PRECISION) - 1
MAX_TABLE_SYMBOLS = 8192          # incl. the two escapes; keeps the >=1-count floor cheap
CHUNK_ENTRIES = 1 << 23           # int16 CDF entries per torchac call (16 MB)
MAX_ABS_VALUE = 1 << 62
_ESC_HEADER_BITS = 6
_MISMATCH = "the stream is corrupt or the decoder's distribution parameters differ from the encoder's"

_backend = None


def _torchac():
    """Import torchac lazily: its first import compiles a C++ extension (ninja + g++)."""
    global _backend
    if _backend is None:
        # torchac builds verbosely (ninja/compiler lines on fd 1/2): keep them for the error only
        with tempfile.TemporaryFile() as log:
            saved = [os.dup(1), os.dup(2)]
            sys.stdout.flush(), sys.stderr.flush()
            os.dup2(log.fileno(), 1), os.dup2(log.fileno(), 2)
            try:
                import torchac
            except Exception as exc:  # build failures surface as many exception types
                err = exc
            else:
                err = None
            finally:
                sys.stdout.flush(), sys.stderr.flush()
                os.dup2(saved[0], 1), os.dup2(saved[1], 2)
                os.close(saved[0]), os.close(saved[1])
            if err is not None:
                log.seek(0)
                tail = log.read()[-3000:].decode("utf-8", errors="replace")
                raise RuntimeError(f"torchac (arithmetic coder) is unavailable: {err}. It compiles a C++ "
                                   f"extension at first import (needs ninja and g++). Build output:\n{tail}") from err
        _backend = torchac
    return _backend


def ensure_backend() -> None:
    """Build / load the arithmetic coder now (seconds to minutes on first use on a machine), so a
    caller timing encoding or decoding does not time the compiler (see ``Method.prepare_coding``)."""
    _torchac()


def pmf_to_counts(pmf: np.ndarray, lengths: np.ndarray, total: int = TOTAL) -> np.ndarray:
    """Integer counts per row: each of the first ``lengths[t]`` entries >= 1, row sums == total.

    Finds by bisection the largest scale ``a`` with sum(max(1, round(p * a))) <= total, then
    gives the remaining few counts to the entries closest to rounding up. Pure float64
    elementwise math, so equal inputs give equal counts on any IEEE-754 machine.
    """
    pmf = np.asarray(pmf, dtype=np.float64)
    lengths = np.asarray(lengths, dtype=np.int64)
    t, w = pmf.shape
    if lengths.min(initial=1) < 1 or lengths.max(initial=0) > min(w, total):
        raise ValueError("table lengths must lie in 1..min(width, total)")
    mask = np.arange(w)[None, :] < lengths[:, None]
    p = np.where(mask & np.isfinite(pmf), np.maximum(pmf, 0.0), 0.0)
    s = p.sum(1, keepdims=True)
    p = np.where(s > 0, p / np.where(s > 0, s, 1.0), mask / lengths[:, None])  # all-zero row: uniform
    n = lengths[:, None].astype(np.float64)

    def count(a: np.ndarray) -> np.ndarray:
        return np.where(mask, np.maximum(1.0, np.floor(p * a + 0.5)), 0.0)

    lo = np.full((t, 1), float(total)) - n          # feasible: sum <= a + n
    hi = np.full((t, 1), float(total)) + n / 2 + 1  # infeasible: sum >= a - n/2
    for _ in range(40):  # the top-up below needs hi - lo < 1 (each entry then crosses <= 1 step)
        mid = 0.5 * (lo + hi)
        ok = count(mid).sum(1, keepdims=True) <= total
        lo, hi = np.where(ok, mid, lo), np.where(ok, hi, mid)
    c = count(lo)
    deficit = total - c.sum(1).astype(np.int64)
    if deficit.min() < 0 or np.any(deficit > lengths):
        raise RuntimeError("pmf_to_counts: bisection did not converge")  # cannot happen for finite input
    frac = np.where(mask, p * lo + 0.5 - c, -np.inf)
    order = np.argsort(-frac, axis=1, kind="stable")
    rank = np.empty_like(order)
    np.put_along_axis(rank, order, np.arange(w)[None, :].repeat(t, 0), axis=1)
    c += (rank < deficit[:, None])
    return c.astype(np.int64)


@dataclass(frozen=True)
class CdfTables:
    """T integer distributions; see the module docstring for the index layout."""
    cdf: np.ndarray      # (T, Wmax + 1) uint16 CDF starts; padded with TOTAL
    lengths: np.ndarray  # (T,) symbols per table incl. the two escapes (>= 3)
    lo: np.ndarray       # (T,) int64 value of index 1

    @classmethod
    def from_pmf(cls, pmf: np.ndarray, lengths: np.ndarray, lo: np.ndarray) -> "CdfTables":
        """``pmf[t, :lengths[t]]`` = [P(low escape), P(lo_t), ..., P(hi_t), P(high escape)]."""
        lengths = np.asarray(lengths, dtype=np.int64)
        if lengths.min() < 3 or lengths.max() > MAX_TABLE_SYMBOLS:
            raise ValueError(f"table lengths must lie in 3..{MAX_TABLE_SYMBOLS}")
        pmf = np.asarray(pmf, dtype=np.float64)
        counts = np.zeros(pmf.shape, dtype=np.int64)
        for n in np.unique(lengths):  # equal-length rows together: work ~ sum of lengths, not T * Wmax
            rows = np.flatnonzero(lengths == n)
            counts[rows, :n] = pmf_to_counts(pmf[rows, :n], lengths[rows])
        cdf = np.full((len(lengths), pmf.shape[1] + 1), TOTAL, dtype=np.int64)
        cdf[:, 1:] = np.cumsum(counts, axis=1)
        cdf[:, 0] = 0
        cdf = np.where(np.arange(cdf.shape[1])[None, :] <= lengths[:, None], cdf, TOTAL)
        return cls(cdf=cdf.astype(np.uint16), lengths=lengths, lo=np.asarray(lo, dtype=np.int64).copy())

    @property
    def hi(self) -> np.ndarray:
        return self.lo + self.lengths - 3

    def counts(self) -> np.ndarray:
        """(T, Wmax) integer counts (0 past each table's end)."""
        c = np.diff(self.cdf.astype(np.int64), axis=1)
        return np.where(np.arange(c.shape[1])[None, :] < self.lengths[:, None], c, 0)


def _as_int64(values, what: str) -> np.ndarray:
    if isinstance(values, torch.Tensor):
        values = values.detach().cpu().numpy()
    a = np.asarray(values)
    if a.dtype.kind == "f":
        if not np.all(np.isfinite(a)) or np.any(a != np.round(a)):
            raise ValueError(f"{what} must be integers (got non-integral or non-finite floats)")
        if a.size and np.abs(a).max() > MAX_ABS_VALUE:
            raise ValueError(f"{what}: magnitude above 2**62 is not supported")
    elif a.dtype.kind == "u" and a.size and a.max() > MAX_ABS_VALUE:
        raise ValueError(f"{what}: magnitude above 2**62 is not supported")
    elif a.dtype.kind not in "iub":
        raise TypeError(f"{what} must be an integer array, got dtype {a.dtype}")
    a = a.astype(np.int64).ravel()
    if a.size and (a.min() < -MAX_ABS_VALUE or a.max() > MAX_ABS_VALUE):
        raise ValueError(f"{what}: magnitude above 2**62 is not supported")
    return a


def _bit_length(x: np.ndarray) -> np.ndarray:
    """bitlength of uint64 values >= 1 (exact; float log2 corrected by one step)."""
    m = np.floor(np.log2(x.astype(np.float64))).astype(np.int64).clip(0, 63)
    m = np.where((x >> m.astype(np.uint64)) == 0, m - 1, m)
    up = np.minimum(m + 1, 63).astype(np.uint64)
    m = np.where((m < 63) & ((x >> up) != 0), m + 1, m)
    return m + 1


def _chunks(widths_sorted: np.ndarray) -> list[tuple[int, int]]:
    """Greedy runs with (count * widest) <= CHUNK_ENTRIES over ascending widths."""
    out, i, n = [], 0, len(widths_sorted)
    while i < n:
        j = min(n, i + max(1, CHUNK_ENTRIES // int(widths_sorted[i])))
        if (j - i) * int(widths_sorted[j - 1]) > CHUNK_ENTRIES:
            a, b = i + 1, j
            while a < b:
                mid = (a + b + 1) // 2
                if (mid - i) * int(widths_sorted[mid - 1]) <= CHUNK_ENTRIES:
                    a = mid
                else:
                    b = mid - 1
            j = a
        out.append((i, j))
        i = j
    return out


def _crc(values: np.ndarray) -> int:
    return zlib.crc32(values.astype("<i8").tobytes())


def encode(values, table_ids, tables: CdfTables) -> bytes:
    """Code int values (any shape) with ``tables`` row ``table_ids[i]`` for value i."""
    v = _as_int64(values, "values")
    tid = np.asarray(table_ids, dtype=np.int64).ravel()
    if tid.shape != v.shape:
        raise ValueError(f"{v.size} values but {tid.size} table ids")
    if v.size == 0:
        return b""
    if tid.min() < 0 or tid.max() >= len(tables.lengths):
        raise ValueError("table id out of range")
    L, lo = tables.lengths[tid], tables.lo[tid]
    hi = lo + L - 3
    below, above = v < lo, v > hi
    idx = np.where(below, 0, np.where(above, L - 1, v - lo + 1))

    # escapes, in value order: overflow past the edge, Elias-gamma-like with a 6-bit length
    esc = np.flatnonzero(below | above)
    over = np.where(below[esc], lo[esc] - 1 - v[esc], v[esc] - hi[esc] - 1).astype(np.uint64) + np.uint64(1)
    m = _bit_length(over) - 1
    payload = over - (np.uint64(1) << m.astype(np.uint64))
    esc_bytes = pack_bits(m.astype(np.uint64), _ESC_HEADER_BITS) + pack_bits(payload, m)

    order = np.argsort(L, kind="stable")
    widths = L[order] + 1
    ac = _torchac()
    parts, head = [], [write_uvarint(0)]
    for a, b in _chunks(widths):
        rows = tid[order[a:b]]
        cdf = torch.from_numpy(np.ascontiguousarray(tables.cdf[rows, :int(widths[b - 1])]).view(np.int16))
        sym = torch.from_numpy(idx[order[a:b]].astype(np.int16))
        parts.append(ac.encode_int16_normalized_cdf(cdf, sym))
        head += [write_uvarint(b - a), write_uvarint(len(parts[-1]))]
    head[0] = write_uvarint(len(parts))
    return struct.pack("<I", _crc(v)) + b"".join(head) + b"".join(parts) + esc_bytes


def decode(data: bytes, table_ids, tables: CdfTables, source: str | Path = "<entropy stream>") -> np.ndarray:
    """Inverse of ``encode``; returns int64 values of len(table_ids) (flattened)."""
    tid = np.asarray(table_ids, dtype=np.int64).ravel()
    n = tid.size
    if n == 0:
        if data:
            raise BitstreamError(source, f"{len(data)} bytes for an empty symbol stream")
        return np.zeros(0, np.int64)
    if tid.min() < 0 or tid.max() >= len(tables.lengths):
        raise ValueError("table id out of range")
    if len(data) < 4:
        raise BitstreamError(source, f"entropy stream truncated ({len(data)} bytes)")
    (crc,) = struct.unpack_from("<I", data, 0)
    nchunks, pos = read_uvarint(data, 4, source)
    sizes = []
    for _ in range(nchunks):
        ns, pos = read_uvarint(data, pos, source)
        nb, pos = read_uvarint(data, pos, source)
        sizes.append((ns, nb))
    if sum(s for s, _ in sizes) != n:
        raise BitstreamError(source, f"stream holds {sum(s for s, _ in sizes)} symbols, expected {n}")

    L, lo = tables.lengths[tid], tables.lo[tid]
    order = np.argsort(L, kind="stable")
    widths = L[order] + 1
    idx = np.empty(n, np.int64)
    ac, start = _torchac(), 0
    for ns, nb in sizes:
        if pos + nb > len(data):
            raise BitstreamError(source, "entropy stream truncated inside a coded chunk")
        sel = order[start:start + ns]
        cdf = torch.from_numpy(np.ascontiguousarray(tables.cdf[tid[sel], :int(widths[start + ns - 1])]).view(np.int16))
        idx[sel] = ac.decode_int16_normalized_cdf(cdf, bytes(data[pos:pos + nb])).numpy().astype(np.int64)
        pos += nb
        start += ns
    if np.any(idx >= L):
        raise BitstreamError(source, f"decoded symbol outside its table: {_MISMATCH}")

    v = lo + idx - 1
    esc = np.flatnonzero((idx == 0) | (idx == L - 1))
    hb = packed_size(np.full(esc.size, _ESC_HEADER_BITS))
    if pos + hb > len(data):
        raise BitstreamError(source, f"escape headers run past the end of the stream: {_MISMATCH}")
    m = unpack_bits(data[pos:pos + hb], np.full(esc.size, _ESC_HEADER_BITS), source).astype(np.int64)
    pos += hb
    if len(data) - pos != packed_size(m):
        raise BitstreamError(source, f"escape payload has {len(data) - pos} bytes, expected {packed_size(m)}: "
                                     f"{_MISMATCH}")
    over = unpack_bits(data[pos:], m, source) + (np.uint64(1) << m.astype(np.uint64)) - np.uint64(1)
    if over.size and over.max() > np.uint64(2 * MAX_ABS_VALUE):
        raise BitstreamError(source, f"escape value out of range: {_MISMATCH}")
    over = over.astype(np.int64)
    low = idx[esc] == 0
    v[esc] = np.where(low, lo[esc] - 1 - over, (lo[esc] + L[esc] - 3) + 1 + over)
    if _crc(v) != crc:
        raise BitstreamError(source, f"decoded values fail their checksum: {_MISMATCH}")
    return v
