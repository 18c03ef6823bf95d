"""Bitstream container: exact round trips, clear errors on damaged files, atomic writes."""
from __future__ import annotations

import os
import struct
import zlib
from pathlib import Path

import pytest

from evalkit.codec import container
from evalkit.codec.container import MAGIC, Bitstream, BitstreamError, atomic_write_bytes


def _sample() -> Bitstream:
    return Bitstream(
        header={"method": "4dgs", "n_gaussians": 1234, "nested": {"bits": [16, 8]}, "ünï": "ok"},
        components={"xyz": bytes(range(256)) * 3, "empty": b"", "mlp": b"\x00\xff" * 17, "näme": b"x"},
    )


def test_round_trip_bytes_and_file(tmp_path: Path) -> None:
    bs = _sample()
    back = Bitstream.from_bytes(bs.to_bytes())
    assert back.header == bs.header and back.components == bs.components
    assert list(back.components) == list(bs.components)  # file order is kept

    path = tmp_path / "scene.evk"
    n = bs.write(path)
    assert n == path.stat().st_size
    again = Bitstream.read(path)
    assert again.header == bs.header and again.components == bs.components


def test_sizes_sum_to_file_size(tmp_path: Path) -> None:
    bs = _sample()
    sizes = bs.sizes()
    path = tmp_path / "s.evk"
    bs.write(path)
    assert sizes["total"] == path.stat().st_size == len(bs.to_bytes())
    assert sum(v for k, v in sizes.items() if k != "total") == sizes["total"]
    assert sizes["xyz"] == 768 and sizes["empty"] == 0


def _file(tmp_path: Path, data: bytes) -> Path:
    p = tmp_path / "damaged.evk"
    p.write_bytes(data)
    return p


def _raises(path: Path, fragment: str) -> None:
    with pytest.raises(BitstreamError) as exc:
        Bitstream.read(path)
    assert str(path) in str(exc.value) and fragment in str(exc.value), str(exc.value)


@pytest.mark.parametrize("keep", [0, 5, 13, 20, -1, -300, -768 - 10])
def test_truncated_file(tmp_path: Path, keep: int) -> None:
    data = _sample().to_bytes()
    _raises(_file(tmp_path, data[:keep] if keep >= 0 else data[:len(data) + keep]), "truncated")


def test_wrong_magic_and_version(tmp_path: Path) -> None:
    data = bytearray(_sample().to_bytes())
    bad_magic = b"NOTEVALK" + bytes(data[8:])
    _raises(_file(tmp_path, bad_magic), "not an evalkit bitstream")
    data[8:10] = struct.pack("<H", container.FORMAT_VERSION + 1)
    _raises(_file(tmp_path, bytes(data)), f"unsupported format version {container.FORMAT_VERSION + 1}")


def test_corrupt_component_fails_crc(tmp_path: Path) -> None:
    bs = _sample()
    data = bytearray(bs.to_bytes())
    i = bytes(data).index(bytes(range(256)))  # inside the 'xyz' payload
    data[i + 100] ^= 0x01
    _raises(_file(tmp_path, bytes(data)), "'xyz' is corrupt (CRC mismatch)")


def test_corrupt_header_json(tmp_path: Path) -> None:
    data = bytearray(_sample().to_bytes())
    data[18] = ord("#")  # first byte of the JSON header (after the 4-byte header CRC)
    _raises(_file(tmp_path, bytes(data)), "header is corrupt (CRC mismatch)")
    # a version-1 file (no header CRC) is still read, and a damaged JSON header still named
    v1 = bytearray(_sample().to_bytes(version=1))
    assert Bitstream.from_bytes(bytes(v1)).header == _sample().header
    v1[14] = ord("#")
    _raises(_file(tmp_path, bytes(v1)), "corrupt header")
    hdr = b"[1, 2]"
    _raises(_file(tmp_path, struct.pack("<8sHI", MAGIC, 1, len(hdr)) + hdr), "corrupt header")


def test_header_digit_change_fails_crc_and_framing_is_checked(tmp_path: Path) -> None:
    data = _sample().to_bytes()
    i = data.index(b"1234")
    _raises(_file(tmp_path, data[:i] + b"1235" + data[i + 4:]), "header is corrupt")
    _raises(_file(tmp_path, data + b"\x00" * 9), "unexpected component")  # appended data
    j = data.rindex(b"mlp")  # the framed name, not the header's list
    _raises(_file(tmp_path, data[:j] + b"mlq" + data[j + 3:]), "unexpected component 'mlq'")


def test_header_value_checks_type_and_range() -> None:
    from evalkit.codec.container import header_value

    h = {"sh_degree": 3, "bg": [1.0, 0, 0.5], "config": {"near_plane": 0.2}, "flag": True}
    assert header_value(h, "sh_degree", int, "f.evk", low=0, high=3) == 3
    assert header_value(h, "config.near_plane", float, "f.evk", low=0) == 0.2
    assert header_value(h, "bg", list, "f.evk", item=float, length=3, low=0, high=1) == [1.0, 0.0, 0.5]
    assert header_value(h, "absent", int, "f.evk", default=None) is None
    for key, kw, words in (("sh_degree", dict(kind=int, high=2), "outside"),
                           ("flag", dict(kind=int), "should be int"),
                           ("bg", dict(kind=list, item=float, length=4), "3 entries"),
                           ("bg", dict(kind=list, item=float, high=0.9), "bg[0]"),
                           ("config.far", dict(kind=float), "missing")):
        with pytest.raises(BitstreamError, match="f.evk") as exc:
            header_value(h, key, source="f.evk", **kw)
        assert words in str(exc.value) and key.split(".")[0] in str(exc.value)
    with pytest.raises(BitstreamError, match="finite"):
        header_value({"x": float("nan")}, "x", float, "f.evk")


def test_missing_component(tmp_path: Path) -> None:
    bs = Bitstream(header={}, components={"a": b"aaaa", "b": b"bbbbbb"})
    data = bs.to_bytes()
    # drop the whole framed 'b' component: the header still lists it, the file ends cleanly
    framed_b = struct.pack("<H", 1) + b"b" + struct.pack("<QI", 6, zlib.crc32(b"bbbbbb")) + b"bbbbbb"
    assert data.endswith(framed_b)
    _raises(_file(tmp_path, data[:-len(framed_b)]), "missing component(s) ['b']")
    with pytest.raises(BitstreamError, match="missing component 'zz'"):
        bs.component("zz")


def test_no_such_file(tmp_path: Path) -> None:
    _raises(tmp_path / "nope.evk", "no such bitstream file")


def test_reserved_header_key() -> None:
    with pytest.raises(ValueError, match="reserved"):
        Bitstream(header={"components": 1}, components={}).to_bytes()


def test_atomic_write_leaves_no_temp_and_normal_mode(tmp_path: Path) -> None:
    path = tmp_path / "out" / "s.evk"
    _sample().write(path)
    assert sorted(p.name for p in path.parent.iterdir()) == ["s.evk"]
    umask = os.umask(0)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask


@pytest.mark.parametrize("fail_at", ["write", "replace"])
def test_failed_write_keeps_old_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fail_at: str) -> None:
    path = tmp_path / "s.evk"
    old = b"old complete file"
    atomic_write_bytes(path, old)

    class Boom(RuntimeError):
        pass

    def boom(*args, **kwargs):
        raise Boom("simulated failure")

    if fail_at == "write":  # dies after part of the data reached the temp file
        real_fsync = os.fsync

        def fsync_then_die(fd: int) -> None:
            real_fsync(fd)
            raise Boom("disk died")

        monkeypatch.setattr(container.os, "fsync", fsync_then_die)
    else:
        monkeypatch.setattr(container.os, "replace", boom)
    with pytest.raises(Boom):
        _sample().write(path)
    assert path.read_bytes() == old
    assert [p.name for p in tmp_path.iterdir()] == ["s.evk"]
