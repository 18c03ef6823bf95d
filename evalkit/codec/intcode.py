"""Lossless codes for plain integer arrays (canonical attributes, VQ run lengths, raw symbols).

* ``encode_fixed``: every value in ``bits`` raw bits (what "stored directly" means).
* ``encode_histogram``: two-pass static arithmetic coding: the value histogram is sent first
  (uvarints, then zlib/lzma, whichever is smaller), then the values are arithmetic coded with
  it. Near the empirical entropy for i.i.d. symbols; the histogram costs a few hundred bytes.
* ``encode_unsigned``: values of any size as (bit-length m, low m bits): m is histogram coded,
  the mantissa bits are raw (an adaptive Elias-gamma code; run lengths are heavy-tailed).
* ``encode_auto``: fixed-length or histogram, whichever is smaller (a one-byte tag says which;
  values of more than 8 bits code their top 8 bits with the histogram and the rest raw).

Every stream is self-delimiting given the number of values, which the caller stores.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from evalkit.codec import arith
from evalkit.codec.bitpack import pack_bits, packed_size, unpack_bits
from evalkit.codec.container import BitstreamError
from evalkit.codec.serialize import compress_bytes, decompress_bytes, read_uvarint, write_uvarint

_TAG_FIXED, _TAG_HIST = 0, 1


def join_streams(streams: list[bytes]) -> bytes:
    """Concatenate byte strings with uvarint length prefixes."""
    return b"".join(write_uvarint(len(s)) + s for s in streams)


def split_streams(data: bytes, count: int, source: str | Path) -> list[bytes]:
    out, pos = [], 0
    for _ in range(count):
        n, pos = read_uvarint(data, pos, source)
        if pos + n > len(data):
            raise BitstreamError(source, "truncated inside a sub-stream")
        out.append(bytes(data[pos:pos + n]))
        pos += n
    if pos != len(data):
        raise BitstreamError(source, f"{len(data) - pos} trailing bytes after {count} sub-streams")
    return out


def _as_ints(values, what: str = "values") -> np.ndarray:
    a = np.asarray(values)
    if a.dtype.kind not in "iu":
        raise TypeError(f"{what} must be integers, got {a.dtype}")
    return a.astype(np.int64).ravel()


# -- fixed length ----------------------------------------------------------------------
def encode_fixed(values, bits: int) -> bytes:
    v = _as_ints(values)
    if v.size and (v.min() < 0 or v.max() >= (1 << bits)):
        raise ValueError(f"values outside [0, 2**{bits})")
    return pack_bits(v.astype(np.uint64), bits)


def decode_fixed(data: bytes, n: int, bits: int, source: str | Path) -> np.ndarray:
    if len(data) != packed_size(np.full(n, bits)):
        raise BitstreamError(source, f"fixed-length stream has {len(data)} bytes, expected "
                                     f"{packed_size(np.full(n, bits))} for {n} values of {bits} bits")
    return unpack_bits(data, np.full(n, bits), source).astype(np.int64)


# -- histogram (two-pass static arithmetic coding) -------------------------------------------
def encode_histogram(values) -> bytes:
    """Non-negative-or-not ints; the table covers [min, max] (escapes past 8k values)."""
    v = _as_ints(values)
    if v.size == 0:
        return b""
    lo = int(v.min())
    span = min(int(v.max()) - lo + 1, arith.MAX_TABLE_SYMBOLS - 2)
    counts = np.bincount(np.clip(v - lo, 0, span), minlength=span + 1)  # last bin: escapes
    hist = compress_bytes(b"".join(write_uvarint(int(c)) for c in counts))
    pmf = np.concatenate([[0.0], counts[:span].astype(np.float64), [float(counts[span])]])
    tables = arith.CdfTables.from_pmf(pmf[None, :], np.array([span + 2]), np.array([lo]))
    head = write_uvarint(2 * lo if lo >= 0 else -2 * lo - 1) + write_uvarint(span) + write_uvarint(len(hist))
    return head + hist + arith.encode(v, np.zeros(v.size, np.int64), tables)


def decode_histogram(data: bytes, n: int, source: str | Path) -> np.ndarray:
    if n == 0:
        if data:
            raise BitstreamError(source, "bytes for an empty histogram stream")
        return np.zeros(0, np.int64)
    z, pos = read_uvarint(data, 0, source)
    lo = z >> 1 if z % 2 == 0 else -((z + 1) >> 1)
    span, pos = read_uvarint(data, pos, source)
    hlen, pos = read_uvarint(data, pos, source)
    if not 1 <= span <= arith.MAX_TABLE_SYMBOLS - 2 or pos + hlen > len(data):
        raise BitstreamError(source, "corrupt histogram stream header")
    hist = decompress_bytes(data[pos:pos + hlen], source)
    pos += hlen
    counts, hp = [], 0
    for _ in range(span + 1):
        c, hp = read_uvarint(hist, hp, source)
        counts.append(c)
    if hp != len(hist):
        raise BitstreamError(source, "corrupt histogram (trailing bytes)")
    pmf = np.concatenate([[0.0], np.asarray(counts[:span], np.float64), [float(counts[span])]])
    tables = arith.CdfTables.from_pmf(pmf[None, :], np.array([span + 2]), np.array([lo]))
    return arith.decode(data[pos:], np.zeros(n, np.int64), tables, source)


# -- unbounded non-negative ints (run lengths) -----------------------------------------------
def encode_unsigned(values) -> bytes:
    v = _as_ints(values)
    if v.size and v.min() < 0:
        raise ValueError("encode_unsigned needs non-negative values")
    x = (v + 1).astype(np.uint64)
    m = np.floor(np.log2(x.astype(np.float64))).astype(np.int64)
    m = np.where((x >> m.astype(np.uint64)) == 0, m - 1, m)          # exact bit length - 1
    m = np.where((x >> (m + 1).astype(np.uint64)) != 0, m + 1, m)
    mantissa = x - (np.uint64(1) << m.astype(np.uint64))
    head = encode_histogram(m)
    return write_uvarint(len(head)) + head + pack_bits(mantissa, m)


def decode_unsigned(data: bytes, n: int, source: str | Path) -> np.ndarray:
    hlen, pos = read_uvarint(data, 0, source)
    if pos + hlen > len(data):
        raise BitstreamError(source, "truncated unsigned-int stream")
    m = decode_histogram(data[pos:pos + hlen], n, source)
    if m.size and (m.min() < 0 or m.max() > 62):
        raise BitstreamError(source, "corrupt unsigned-int stream (bit length out of range)")
    rest = data[pos + hlen:]
    if len(rest) != packed_size(m):
        raise BitstreamError(source, "corrupt unsigned-int stream (mantissa size)")
    x = unpack_bits(rest, m, source) + (np.uint64(1) << m.astype(np.uint64))
    return x.astype(np.int64) - 1


# -- fixed length or histogram, whichever is smaller -----------------------------------------
def encode_auto(values, bits: int, entropy: bool = True) -> bytes:
    """Values in [0, 2**bits): a tag byte, then fixed-length bits or the histogram code."""
    v = _as_ints(values)
    fixed = bytes([_TAG_FIXED]) + encode_fixed(v, bits)
    if not entropy or v.size == 0:
        return fixed
    low_bits = max(0, bits - 8)
    hi = v >> low_bits
    body = encode_histogram(hi)
    if low_bits:
        body += encode_fixed(v & ((1 << low_bits) - 1), low_bits)
    coded = bytes([_TAG_HIST]) + body
    return coded if len(coded) < len(fixed) else fixed


def decode_auto(data: bytes, n: int, bits: int, source: str | Path) -> np.ndarray:
    if not data:
        raise BitstreamError(source, "empty integer stream (no tag)")
    tag, body = data[0], data[1:]
    if tag == _TAG_FIXED:
        return decode_fixed(body, n, bits, source)
    if tag != _TAG_HIST:
        raise BitstreamError(source, f"unknown integer-stream tag {tag}")
    low_bits = max(0, bits - 8)
    low_len = packed_size(np.full(n, low_bits)) if low_bits else 0
    if low_len > len(body):
        raise BitstreamError(source, "truncated integer stream")
    hi = decode_histogram(body[:len(body) - low_len], n, source)
    if not low_bits:
        return hi
    return (hi << low_bits) | decode_fixed(body[len(body) - low_len:], n, low_bits, source)
