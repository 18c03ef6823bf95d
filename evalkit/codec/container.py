"""The evalkit bitstream container: one file per encoded scene.

Layout (all integers little-endian)::

    magic      8 bytes  b"EVALKIT\\x00"
    version    u16      FORMAT_VERSION
    hdr_len    u32      length of the JSON header
    header     hdr_len bytes of UTF-8 JSON; its "components" key lists the names in file order
    then per component:
        name_len u16, name (UTF-8), data_len u64, crc32 u32, data

The size of an encoded scene is the size of this file: the decoder reads nothing else.
``Bitstream.sizes()`` breaks it down per component; framing bytes (magic, lengths, CRCs,
names) are counted under "header" so the breakdown always sums to the file size.
"""
from __future__ import annotations

import json
import os
import struct
import tempfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

MAGIC = b"EVALKIT\x00"
FORMAT_VERSION = 1
_PRE = struct.Struct("<8sHI")
_NAME = struct.Struct("<H")
_DATA = struct.Struct("<QI")


class BitstreamError(Exception):
    """A bitstream file is unreadable. The message names the file and the problem."""

    def __init__(self, source: str | Path, problem: str) -> None:
        self.source = str(source)
        self.problem = problem
        super().__init__(f"{source}: {problem}")


@dataclass
class Bitstream:
    header: dict[str, Any] = field(default_factory=dict)
    components: dict[str, bytes] = field(default_factory=dict)

    # -- serialisation -------------------------------------------------------------
    def _header_bytes(self) -> bytes:
        if "components" in self.header:
            raise ValueError("header key 'components' is reserved for the component list")
        hdr = dict(self.header)
        hdr["components"] = list(self.components)
        return json.dumps(hdr, sort_keys=True, separators=(",", ":")).encode("utf-8")

    def to_bytes(self) -> bytes:
        hdr = self._header_bytes()
        out = [_PRE.pack(MAGIC, FORMAT_VERSION, len(hdr)), hdr]
        for name, data in self.components.items():
            if not isinstance(data, (bytes, bytearray)):
                raise TypeError(f"component {name!r} must be bytes, got {type(data).__name__}")
            nb = name.encode("utf-8")
            out += [_NAME.pack(len(nb)), nb, _DATA.pack(len(data), zlib.crc32(data)), bytes(data)]
        return b"".join(out)

    @classmethod
    def from_bytes(cls, buf: bytes, source: str | Path = "<memory>") -> "Bitstream":
        if len(buf) < _PRE.size:
            raise BitstreamError(source, f"truncated: {len(buf)} bytes is shorter than the {_PRE.size}-byte preamble")
        magic, version, hlen = _PRE.unpack_from(buf, 0)
        if magic != MAGIC:
            raise BitstreamError(source, f"not an evalkit bitstream (magic {magic!r}, expected {MAGIC!r})")
        if version != FORMAT_VERSION:
            raise BitstreamError(source, f"unsupported format version {version} (this evalkit reads version {FORMAT_VERSION})")
        pos = _PRE.size
        if pos + hlen > len(buf):
            raise BitstreamError(source, "truncated inside the header")
        try:
            header = json.loads(buf[pos:pos + hlen].decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise BitstreamError(source, f"corrupt header: {exc}") from None
        if not isinstance(header, dict):
            raise BitstreamError(source, f"corrupt header: a JSON {type(header).__name__}, not an object")
        pos += hlen
        names = header.pop("components", None)
        if not isinstance(names, list):
            raise BitstreamError(source, "corrupt header: no component list")
        comps: dict[str, bytes] = {}
        while pos < len(buf):
            if pos + _NAME.size > len(buf):
                raise BitstreamError(source, "truncated inside a component name")
            (nlen,) = _NAME.unpack_from(buf, pos)
            pos += _NAME.size
            name = buf[pos:pos + nlen].decode("utf-8", errors="replace")
            pos += nlen
            if pos + _DATA.size > len(buf):
                raise BitstreamError(source, f"truncated inside component {name!r}")
            dlen, crc = _DATA.unpack_from(buf, pos)
            pos += _DATA.size
            if pos + dlen > len(buf):
                raise BitstreamError(source, f"truncated inside component {name!r} "
                                             f"({len(buf) - pos} of {dlen} bytes present)")
            data = bytes(buf[pos:pos + dlen])
            pos += dlen
            if zlib.crc32(data) != crc:
                raise BitstreamError(source, f"component {name!r} is corrupt (CRC mismatch)")
            comps[name] = data
        missing = [n for n in names if n not in comps]
        if missing:
            raise BitstreamError(source, f"missing component(s) {missing} listed in the header")
        return cls(header=header, components=comps)

    def write(self, path: str | Path) -> int:
        """Write atomically (temp file + rename). Returns the number of bytes written."""
        path = Path(path)
        data = self.to_bytes()
        atomic_write_bytes(path, data)
        return len(data)

    @classmethod
    def read(cls, path: str | Path) -> "Bitstream":
        path = Path(path)
        if not path.is_file():
            raise BitstreamError(path, "no such bitstream file")
        return cls.from_bytes(path.read_bytes(), source=path)

    # -- accounting ----------------------------------------------------------------
    def sizes(self) -> dict[str, int]:
        """Bytes per component plus 'header' (JSON + framing) and 'total' (= file size)."""
        out = {name: len(data) for name, data in self.components.items()}
        framing = _PRE.size + len(self._header_bytes()) + sum(
            _NAME.size + len(n.encode("utf-8")) + _DATA.size for n in self.components)
        out["header"] = framing
        out["total"] = framing + sum(len(d) for d in self.components.values())
        return out

    def component(self, name: str, source: str | Path = "<bitstream>") -> bytes:
        try:
            return self.components[name]
        except KeyError:
            raise BitstreamError(source, f"missing component {name!r}") from None


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so readers see either the old file or the whole new one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            umask = os.umask(0)
            os.umask(umask)
            os.fchmod(fh.fileno(), 0o666 & ~umask)  # mkstemp creates 0600; use the usual mode
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
