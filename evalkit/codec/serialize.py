"""Weights and tensors as bytes: the one place evalkit turns them into bytes and back.

Two layouts share one dtype table:

* Raw (``pack_tensors`` / ``unpack_tensors``, ``module_to_bytes`` / ``module_from_bytes``): the
  values alone, little-endian, in order; names, shapes and dtype live outside the bytes (in the
  bitstream's JSON header, or in the module the decoder rebuilds from its configuration). What a
  format stores as it is: 4DGS's Gaussians and networks, 4DGS-CC's entropy models.
* Self-describing (``tensor_to_bytes``, ``array_to_bytes``, ``state_dict_to_bytes``): dtype code and
  shape before the data, for small states whose shapes the decoder cannot know (a factorized
  prior's filters, quantiser ranges).

Plus varints and a lossless byte fallback (zlib / lzma). Every decoder here raises on malformed
input naming ``source`` (``BitstreamError``; ``unpack_tensors``: ``ValueError``) instead of a deep
traceback. decode(encode(x)) is bit-exact in the stored dtype.
"""
from __future__ import annotations

import lzma
import zlib
from collections import OrderedDict
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from evalkit.codec.container import BitstreamError

# dtype codes are part of the format: append only, never renumber
_CODES: dict[int, tuple[torch.dtype, str]] = {
    1: (torch.float32, "<f4"), 2: (torch.float16, "<f2"), 3: (torch.float64, "<f8"),
    4: (torch.bfloat16, "<u2"),  # stored as its raw 16-bit pattern
    5: (torch.int8, "i1"), 6: (torch.int16, "<i2"), 7: (torch.int32, "<i4"), 8: (torch.int64, "<i8"),
    9: (torch.uint8, "u1"), 10: (torch.bool, "?"),
}
_BY_TORCH = {t: c for c, (t, _) in _CODES.items()}
_BY_NUMPY = {np.dtype(n).newbyteorder("<") if np.dtype(n).itemsize > 1 else np.dtype(n): c
             for c, (t, n) in _CODES.items() if t != torch.bfloat16}
_NP_EXTRA = {np.dtype("<u2"): 11, np.dtype("<u4"): 12, np.dtype("<u8"): 13}  # numpy-only unsigned types
_NP_EXTRA_BACK = {c: d for d, c in _NP_EXTRA.items()}


# -- varints -------------------------------------------------------------------------
def write_uvarint(value: int) -> bytes:
    """LEB128 encoding of a non-negative int."""
    if value < 0:
        raise ValueError(f"uvarint needs a non-negative value, got {value}")
    out = bytearray()
    while True:
        b = value & 0x7F
        value >>= 7
        if value:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def read_uvarint(buf: bytes, pos: int, source: str | Path = "<stream>") -> tuple[int, int]:
    """Returns (value, new position)."""
    value = shift = 0
    while True:
        if pos >= len(buf):
            raise BitstreamError(source, "truncated inside a varint")
        b = buf[pos]
        pos += 1
        value |= (b & 0x7F) << shift
        if not b & 0x80:
            return value, pos
        shift += 7
        if shift > 70:
            raise BitstreamError(source, "corrupt varint (too long)")


def zigzag(value: int) -> int:
    return 2 * value if value >= 0 else -2 * value - 1


def unzigzag(value: int) -> int:
    return value >> 1 if value % 2 == 0 else -((value + 1) >> 1)


# -- arrays and tensors --------------------------------------------------------------
def _shape_bytes(code: int, shape: tuple[int, ...]) -> bytes:
    return bytes([code, len(shape)]) + b"".join(write_uvarint(int(s)) for s in shape)


def _read_shape(buf: bytes, pos: int, source) -> tuple[int, tuple[int, ...], int]:
    if pos + 2 > len(buf):
        raise BitstreamError(source, "truncated inside an array header")
    code, ndim = buf[pos], buf[pos + 1]
    pos += 2
    shape = []
    for _ in range(ndim):
        s, pos = read_uvarint(buf, pos, source)
        shape.append(s)
    return code, tuple(shape), pos


def array_to_bytes(a: np.ndarray) -> bytes:
    """dtype code, ndim, shape (varints), then the raw little-endian data."""
    a = np.asarray(a)
    dt = a.dtype.newbyteorder("<") if a.dtype.itemsize > 1 else a.dtype
    code = _BY_NUMPY.get(dt, _NP_EXTRA.get(dt))
    if code is None:
        raise TypeError(f"unsupported array dtype {a.dtype}")
    return _shape_bytes(code, a.shape) + np.ascontiguousarray(a, dtype=dt).tobytes()


def _read_array(buf: bytes, pos: int, source) -> tuple[np.ndarray, int]:
    code, shape, pos = _read_shape(buf, pos, source)
    if code in _CODES:
        dt = np.dtype(_CODES[code][1])
    elif code in _NP_EXTRA_BACK:
        dt = _NP_EXTRA_BACK[code]
    else:
        raise BitstreamError(source, f"unknown dtype code {code}")
    nbytes = int(np.prod(shape, dtype=np.int64)) * dt.itemsize
    if pos + nbytes > len(buf):
        raise BitstreamError(source, f"truncated array data ({len(buf) - pos} of {nbytes} bytes present)")
    a = np.frombuffer(buf, dtype=dt, count=nbytes // dt.itemsize, offset=pos).reshape(shape)
    return a.astype(dt.newbyteorder("="), copy=True), pos + nbytes


def array_from_bytes(buf: bytes, source: str | Path = "<array>") -> np.ndarray:
    a, pos = _read_array(buf, 0, source)
    if pos != len(buf):
        raise BitstreamError(source, f"{len(buf) - pos} trailing bytes after the array")
    return a


def tensor_to_bytes(t: torch.Tensor) -> bytes:
    """Exact bytes of a CPU or GPU tensor (float16/bfloat16/float32/float64/int*/uint8/bool)."""
    code = _BY_TORCH.get(t.dtype)
    if code is None:
        raise TypeError(f"unsupported tensor dtype {t.dtype}")
    t = t.detach().cpu().contiguous()
    raw = t.view(torch.int16) if t.dtype == torch.bfloat16 else t
    return _shape_bytes(code, tuple(t.shape)) + np.ascontiguousarray(
        raw.numpy(), dtype=np.dtype(_CODES[code][1])).tobytes()


def read_tensor_at(buf: bytes, pos: int, source: str | Path = "<tensor>") -> tuple[torch.Tensor, int]:
    """Read one ``tensor_to_bytes`` record starting at ``pos``; returns (tensor, next position)."""
    code = buf[pos] if pos < len(buf) else None
    if code not in _CODES:
        raise BitstreamError(source, f"unknown tensor dtype code {code}")
    a, pos = _read_array(buf, pos, source)
    dtype = _CODES[code][0]
    if dtype == torch.bfloat16:
        return torch.from_numpy(a.view(np.int16)).view(torch.bfloat16), pos
    return torch.from_numpy(a), pos


def tensor_from_bytes(buf: bytes, source: str | Path = "<tensor>") -> torch.Tensor:
    t, pos = read_tensor_at(buf, 0, source)
    if pos != len(buf):
        raise BitstreamError(source, f"{len(buf) - pos} trailing bytes after the tensor")
    return t


def state_dict_to_bytes(state: dict[str, torch.Tensor]) -> bytes:
    """Exact bytes of a (small) state dict: count, then per entry name + tensor."""
    out = [write_uvarint(len(state))]
    for name, t in state.items():
        nb = name.encode("utf-8")
        tb = tensor_to_bytes(t)
        out += [write_uvarint(len(nb)), nb, write_uvarint(len(tb)), tb]
    return b"".join(out)


def state_dict_from_bytes(buf: bytes, source: str | Path = "<state dict>") -> "OrderedDict[str, torch.Tensor]":
    n, pos = read_uvarint(buf, 0, source)
    out: OrderedDict[str, torch.Tensor] = OrderedDict()
    for _ in range(n):
        ln, pos = read_uvarint(buf, pos, source)
        if pos + ln > len(buf):
            raise BitstreamError(source, "truncated inside a state-dict key")
        name = buf[pos:pos + ln].decode("utf-8", errors="replace")
        pos += ln
        lt, pos = read_uvarint(buf, pos, source)
        if pos + lt > len(buf):
            raise BitstreamError(source, f"truncated inside state-dict entry {name!r}")
        out[name] = tensor_from_bytes(buf[pos:pos + lt], source)
        pos += lt
    if pos != len(buf):
        raise BitstreamError(source, f"{len(buf) - pos} trailing bytes after the state dict")
    return out


# -- raw tensors, layout stored elsewhere ---------------------------------------------------
_RAW = {"float32": "<f4", "float16": "<f2", "int32": "<i4", "uint8": "u1", "int16": "<i2", "uint16": "<u2"}


def pack_tensors(tensors: dict[str, torch.Tensor], dtype: str = "float32") -> tuple[bytes, list[dict]]:
    """The tensors' values in ``dtype``, concatenated; and their layout (name, shape, dtype) for
    ``unpack_tensors``."""
    np_dtype = np.dtype(_RAW[dtype])
    layout, chunks = [], []
    for name, t in tensors.items():
        a = t.detach().cpu().numpy().astype(np_dtype, copy=False)
        layout.append({"name": name, "shape": list(a.shape), "dtype": dtype})
        chunks.append(np.ascontiguousarray(a).tobytes())
    return b"".join(chunks), layout


def unpack_tensors(data: bytes, layout: list[dict], device: torch.device | str = "cpu") -> dict[str, torch.Tensor]:
    """The tensors ``pack_tensors`` packed, given its layout. ``ValueError`` when the bytes do not
    fit the layout."""
    out, pos = {}, 0
    for entry in layout:
        np_dtype = np.dtype(_RAW[entry["dtype"]])
        count = int(np.prod(entry["shape"])) if entry["shape"] else 1
        nbytes = count * np_dtype.itemsize
        if pos + nbytes > len(data):
            raise ValueError(f"tensor {entry['name']!r} needs {nbytes} bytes at offset {pos}, "
                             f"only {len(data) - pos} left")
        a = np.frombuffer(data, dtype=np_dtype, count=count, offset=pos).reshape(entry["shape"])
        out[entry["name"]] = torch.from_numpy(a.astype(a.dtype.newbyteorder("="))).to(device)
        pos += nbytes
    if pos != len(data):
        raise ValueError(f"{len(data) - pos} unexpected trailing bytes after the last tensor")
    return out


def module_to_bytes(module: torch.nn.Module, dtype: str = "float32") -> bytes:
    """A module's weights (``state_dict`` order) in ``dtype``; the decoder builds the same module
    from the stored configuration, so names and shapes are not stored."""
    return pack_tensors(module.state_dict(), dtype)[0]


def module_from_bytes(module: torch.nn.Module, data: bytes, dtype: str, source: str | Path = "<module>",
                      what: str = "module") -> torch.nn.Module:
    """Load ``module_to_bytes`` output into ``module`` (built from the same configuration); returns
    it in eval mode. ``BitstreamError`` when the bytes do not fit the module."""
    layout = [{"name": k, "shape": list(v.shape), "dtype": dtype} for k, v in module.state_dict().items()]
    try:
        state = unpack_tensors(data, layout)
    except ValueError as exc:
        raise BitstreamError(source, f"{what} weights do not fit its configuration: {exc}") from None
    module.load_state_dict({k: v.float() for k, v in state.items()}, strict=True)
    return module.eval()


# -- generic lossless fallback -------------------------------------------------------
_METHODS = {b"\x00": "none", b"\x01": "zlib", b"\x02": "lzma"}
Method = Literal["none", "zlib", "lzma", "best"]


def compress_bytes(data: bytes, method: Method = "best") -> bytes:
    """One tag byte + payload. 'best' keeps the smallest of none/zlib/lzma."""
    cands = {
        "none": lambda: b"\x00" + data,
        "zlib": lambda: b"\x01" + zlib.compress(data, 9),
        "lzma": lambda: b"\x02" + lzma.compress(data, preset=9 | lzma.PRESET_EXTREME),
    }
    if method == "best":
        return min((f() for f in cands.values()), key=len)
    if method not in cands:
        raise ValueError(f"unknown compression method {method!r}")
    return cands[method]()


def decompress_bytes(buf: bytes, source: str | Path = "<compressed bytes>") -> bytes:
    if not buf:
        raise BitstreamError(source, "empty compressed payload (no method tag)")
    tag, body = buf[:1], buf[1:]
    try:
        if tag == b"\x00":
            return bytes(body)
        if tag == b"\x01":
            return zlib.decompress(body)
        if tag == b"\x02":
            return lzma.decompress(body, format=lzma.FORMAT_XZ)
    except (zlib.error, lzma.LZMAError) as exc:
        raise BitstreamError(source, f"corrupt {_METHODS[tag]} payload: {exc}") from None
    raise BitstreamError(source, f"unknown compression tag {tag[0]}")
