"""Exact byte encodings (tensors, arrays, state dicts, varints, bit packing) and the lossless fallback."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from evalkit.codec.bitpack import pack_bits, unpack_bits
from evalkit.codec.container import BitstreamError
from evalkit.codec.serialize import (array_from_bytes, array_to_bytes, compress_bytes, decompress_bytes,
                                     read_uvarint, state_dict_from_bytes, state_dict_to_bytes, tensor_from_bytes,
                                     tensor_to_bytes, unzigzag, write_uvarint, zigzag)


def _bits_equal(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Bitwise equality (NaN payloads and -0.0 included)."""
    if a.dtype != b.dtype or a.shape != b.shape:
        return False
    if a.is_floating_point():
        ints = {2: torch.int16, 4: torch.int32, 8: torch.int64}[a.element_size()]
        return torch.equal(a.view(ints), b.view(ints))
    return torch.equal(a, b)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.float64, torch.int8,
                                   torch.int16, torch.int32, torch.int64, torch.uint8, torch.bool])
@pytest.mark.parametrize("shape", [(), (0,), (5,), (3, 0, 2), (4, 7, 3)])
def test_tensor_round_trip_is_bit_exact(dtype: torch.dtype, shape: tuple[int, ...]) -> None:
    g = torch.Generator().manual_seed(1)
    if dtype.is_floating_point:
        t = (torch.randn(shape, generator=g, dtype=torch.float64) * 1e3).to(dtype)
        if t.numel() >= 4:
            t.view(-1)[:4] = torch.tensor([float("nan"), -0.0, float("inf"), 1e-40]).to(dtype)
    elif dtype == torch.bool:
        t = torch.rand(shape, generator=g) > 0.5
    else:
        info = torch.iinfo(dtype)
        t = torch.randint(info.min, info.max, shape, generator=g, dtype=torch.int64).to(dtype)
    assert _bits_equal(tensor_from_bytes(tensor_to_bytes(t)), t)


def test_tensor_from_noncontiguous_view() -> None:
    t = torch.arange(24, dtype=torch.float32).reshape(4, 6).t()[1:, ::2]
    assert torch.equal(tensor_from_bytes(tensor_to_bytes(t)), t.contiguous())


@pytest.mark.parametrize("dtype", ["<f4", ">f4", "<f2", "<u2", "<u4", "<u8", ">i8", "i1", "u1", "?"])
def test_array_round_trip(dtype: str) -> None:
    a = (np.arange(30) * 7 % 13).astype(dtype).reshape(5, 6)
    back = array_from_bytes(array_to_bytes(a))
    assert back.shape == a.shape and np.array_equal(back, a) and back.dtype.kind == a.dtype.kind


def test_state_dict_round_trip_reproduces_network_bitwise() -> None:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(7, 16), nn.ReLU(), nn.Linear(16, 3), nn.LayerNorm(3))
    data = state_dict_to_bytes(net.state_dict())
    # raw float32 payload + small framing: nothing lossy, nothing bloated
    n_bytes = sum(p.numel() * 4 for p in net.state_dict().values())
    assert n_bytes < len(data) < n_bytes + 200
    clone = nn.Sequential(nn.Linear(7, 16), nn.ReLU(), nn.Linear(16, 3), nn.LayerNorm(3))
    clone.load_state_dict(state_dict_from_bytes(data))
    assert list(state_dict_from_bytes(data)) == list(net.state_dict())
    x = torch.randn(64, 7)
    assert _bits_equal(clone(x), net(x))


@pytest.mark.parametrize("decoder,blob", [
    (tensor_from_bytes, tensor_to_bytes(torch.ones(10))),
    (array_from_bytes, array_to_bytes(np.ones(10))),
    (state_dict_from_bytes, state_dict_to_bytes({"w": torch.ones(3, 3), "b": torch.zeros(3)})),
])
def test_truncated_or_padded_blobs_raise(decoder, blob: bytes) -> None:
    for bad in (blob[:-1], blob[:3], blob + b"\x00"):
        with pytest.raises(BitstreamError, match="my.evk"):
            decoder(bad, source="my.evk")


@pytest.mark.parametrize("method", ["none", "zlib", "lzma", "best"])
def test_lossless_fallback(method: str) -> None:
    data = (b"gaussian splatting " * 500) + bytes(range(256))
    packed = compress_bytes(data, method)
    assert decompress_bytes(packed) == data
    if method != "none":
        assert len(packed) < len(data) / 5
    if method == "best":
        assert len(packed) == min(len(compress_bytes(data, m)) for m in ("none", "zlib", "lzma"))
    # incompressible input: "best" falls back to storing it with a 1-byte tag
    noise = np.random.default_rng(0).bytes(4096)
    assert len(compress_bytes(noise, "best")) == 4097


def test_lossless_fallback_errors() -> None:
    with pytest.raises(BitstreamError, match="corrupt lzma"):
        decompress_bytes(compress_bytes(b"x" * 1000, "lzma")[:-5], source="f.evk")
    with pytest.raises(BitstreamError, match="unknown compression tag 9"):
        decompress_bytes(b"\x09abc")
    with pytest.raises(BitstreamError, match="empty"):
        decompress_bytes(b"")


def test_varints_and_zigzag() -> None:
    vals = [0, 1, 127, 128, 255, 300, 2**31, 2**63 - 1, 2**64 + 5]
    buf = b"".join(write_uvarint(v) for v in vals)
    pos, out = 0, []
    for _ in vals:
        v, pos = read_uvarint(buf, pos)
        out.append(v)
    assert out == vals and pos == len(buf)
    assert len(write_uvarint(127)) == 1 and len(write_uvarint(128)) == 2
    for v in [0, -1, 1, -2**62, 2**62, 12345, -12345]:
        assert unzigzag(zigzag(v)) == v and zigzag(v) >= 0
    assert [zigzag(v) for v in (0, -1, 1, -2, 2)] == [0, 1, 2, 3, 4]
    with pytest.raises(BitstreamError, match="truncated inside a varint"):
        read_uvarint(b"\x80\x80", 0)


def test_bitpack_round_trip_mixed_widths() -> None:
    rng = np.random.default_rng(3)
    widths = rng.integers(0, 65, 5000)
    vals = np.array([int(rng.integers(0, 2**63)) * 2 + int(rng.integers(0, 2)) for _ in widths], dtype=np.uint64)
    vals = np.where(widths == 64, vals, vals & ((np.uint64(1) << widths.astype(np.uint64)) - np.uint64(1)))
    vals[widths == 0] = 0
    data = pack_bits(vals, widths)
    assert len(data) == (widths.sum() + 7) // 8
    assert np.array_equal(unpack_bits(data, widths), vals)
    # MSB-first layout, checked by hand: 0b101 in 3 bits then 0b1 in 1 bit -> 1011 0000
    assert pack_bits(np.array([5, 1], np.uint64), np.array([3, 1])) == bytes([0b10110000])
    with pytest.raises(ValueError, match="does not fit"):
        pack_bits(np.array([8], np.uint64), 3)
    with pytest.raises(BitstreamError, match="expected"):
        unpack_bits(data[:-1], widths)
