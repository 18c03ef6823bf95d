"""Pack named float tensors into one byte string (raw little-endian, no compression).

Used where a format stores parameters as they are (the 4DGS baseline, network weights).
The layout (names, shapes, dtypes) goes in the bitstream's JSON header, so the bytes are
exactly the parameters: decode(encode(x)) is bit-exact.
"""
from __future__ import annotations

import numpy as np
import torch

_DTYPES = {"float32": "<f4", "float16": "<f2", "int32": "<i4", "uint8": "u1", "int16": "<i2", "uint16": "<u2"}


def pack_tensors(tensors: dict[str, torch.Tensor], dtype: str = "float32") -> tuple[bytes, list[dict]]:
    np_dtype = np.dtype(_DTYPES[dtype])
    layout, chunks = [], []
    for name, t in tensors.items():
        a = t.detach().cpu().numpy().astype(np_dtype, copy=False)
        layout.append({"name": name, "shape": list(a.shape), "dtype": dtype})
        chunks.append(np.ascontiguousarray(a).tobytes())
    return b"".join(chunks), layout


def unpack_tensors(data: bytes, layout: list[dict], device: torch.device | str = "cpu") -> dict[str, torch.Tensor]:
    out, pos = {}, 0
    for entry in layout:
        np_dtype = np.dtype(_DTYPES[entry["dtype"]])
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
