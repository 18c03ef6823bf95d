"""The evalkit bitstream container: one file per encoded scene.

Layout (all integers little-endian)::

    magic      8 bytes  b"EVALKIT\\x00"
    version    u16      FORMAT_VERSION
    hdr_len    u32      length of the JSON header
    hdr_crc    u32      (version 2) CRC-32 of magic, version, hdr_len and the header bytes
    header     hdr_len bytes of UTF-8 JSON; its "components" key lists the names in file order
    then per component:
        name_len u16, name (UTF-8), data_len u64, crc32 u32, data

Integrity: the header (version 2) and each component carry a CRC-32, and the components must be
exactly those the header lists, in its order, with nothing after the last. Version 1 files (no
header CRC) are still read; their header is only as trustworthy as the methods' value checks
(``header_value``), which every decoder applies to the header values it reads.

The size of an encoded scene is the size of this file: the decoder reads nothing else.
``Bitstream.sizes()`` breaks it down per component; framing bytes (magic, lengths, CRCs,
names) are counted under "header" so the breakdown always sums to the file size.
"""
from __future__ import annotations

import json
import math
import os
import struct
import tempfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

MAGIC = b"EVALKIT\x00"
FORMAT_VERSION = 2
READABLE_VERSIONS = (1, 2)  # 1: no header CRC
_PRE = struct.Struct("<8sHI")
_HCRC = struct.Struct("<I")
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
    version: int = FORMAT_VERSION  # of the file it was read from; writing uses it too

    # -- serialisation -------------------------------------------------------------
    def _header_bytes(self) -> bytes:
        if "components" in self.header:
            raise ValueError("header key 'components' is reserved for the component list")
        hdr = dict(self.header)
        hdr["components"] = list(self.components)
        return json.dumps(hdr, sort_keys=True, separators=(",", ":")).encode("utf-8")

    def to_bytes(self, version: int | None = None) -> bytes:
        """The file's bytes in ``version`` (None: ``self.version``)."""
        version = self.version if version is None else version
        if version not in READABLE_VERSIONS:
            raise ValueError(f"cannot write format version {version}")
        hdr = self._header_bytes()
        pre = _PRE.pack(MAGIC, version, len(hdr))
        out = [pre, _HCRC.pack(zlib.crc32(pre + hdr)), hdr] if version >= 2 else [pre, hdr]
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
        if version not in READABLE_VERSIONS:
            raise BitstreamError(source, f"unsupported format version {version} (this evalkit reads versions "
                                         f"{', '.join(map(str, READABLE_VERSIONS))})")
        pos = _PRE.size
        if version >= 2:
            if pos + _HCRC.size > len(buf):
                raise BitstreamError(source, "truncated inside the header checksum")
            (hcrc,) = _HCRC.unpack_from(buf, pos)
            pos += _HCRC.size
        if pos + hlen > len(buf):
            raise BitstreamError(source, f"truncated inside the header (or a corrupt header length {hlen})")
        if version >= 2 and zlib.crc32(bytes(buf[:_PRE.size]) + bytes(buf[pos:pos + hlen])) != hcrc:
            raise BitstreamError(source, "header is corrupt (CRC mismatch)")
        try:
            header = json.loads(buf[pos:pos + hlen].decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise BitstreamError(source, f"corrupt header: {exc}") from None
        if not isinstance(header, dict):
            raise BitstreamError(source, f"corrupt header: a JSON {type(header).__name__}, not an object")
        pos += hlen
        names = header.pop("components", None)
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise BitstreamError(source, "corrupt header: no component list")
        comps: dict[str, bytes] = {}
        while pos < len(buf):
            if pos + _NAME.size > len(buf):
                raise BitstreamError(source, "truncated inside a component name")
            (nlen,) = _NAME.unpack_from(buf, pos)
            pos += _NAME.size
            name = bytes(buf[pos:pos + nlen]).decode("utf-8", errors="replace")
            pos += nlen
            if len(comps) >= len(names) or name != names[len(comps)]:
                raise BitstreamError(source, f"unexpected component {name!r} at byte {pos - nlen} (the header "
                                             f"lists {names}): corrupt framing or appended data")
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
        return cls(header=header, components=comps, version=version)

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
        framing = _PRE.size + (_HCRC.size if self.version >= 2 else 0) + len(self._header_bytes()) + sum(
            _NAME.size + len(n.encode("utf-8")) + _DATA.size for n in self.components)
        out["header"] = framing
        out["total"] = framing + sum(len(d) for d in self.components.values())
        return out

    def component(self, name: str, source: str | Path = "<bitstream>") -> bytes:
        """A component's bytes, or ``BitstreamError`` naming ``source``."""
        try:
            return self.components[name]
        except KeyError:
            raise BitstreamError(source, f"missing component {name!r}") from None


_MISSING = object()


def header_value(header: dict[str, Any], key: str, kind: type, source: str | Path, *,
                 low: float | None = None, high: float | None = None, length: int | None = None,
                 item: type | None = None, choices: tuple | None = None, default: Any = _MISSING) -> Any:
    """``header[key]`` (``key`` may be dotted: ``"config.near_plane"``) checked for type and range,
    else ``BitstreamError`` naming ``source`` and the key.

    ``kind``: int (a bool is not an int), float (ints accepted, returned as float; NaN and
    infinities refused), bool, str, list or dict. For a list: ``length`` and ``item`` (the type of
    each element, checked like ``kind`` with ``low`` / ``high``). ``low`` / ``high`` are inclusive;
    ``choices`` lists the allowed values. ``default`` is returned when the key is absent.
    """
    node: Any = header
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            if default is not _MISSING:
                return default
            raise BitstreamError(source, f"header key {key!r} is missing")
        node = node[part]

    def one(v: Any, t: type, what: str) -> Any:
        ok = (isinstance(v, int) and not isinstance(v, bool) if t is int else
              isinstance(v, (int, float)) and not isinstance(v, bool) if t is float else isinstance(v, t))
        if not ok:
            raise BitstreamError(source, f"header key {what!r} should be {t.__name__}, got {type(v).__name__}")
        if t in (int, float):
            if t is float and not math.isfinite(v):
                raise BitstreamError(source, f"header key {what!r} is {v} (must be finite)")
            if (low is not None and v < low) or (high is not None and v > high):
                raise BitstreamError(source, f"header key {what!r} = {v!r} is outside [{low}, {high}]")
            v = float(v) if t is float else v
        if choices is not None and v not in choices:
            raise BitstreamError(source, f"header key {what!r} = {v!r:.60} is not one of {list(choices)}")
        return v

    if kind is list:
        if not isinstance(node, list):
            raise BitstreamError(source, f"header key {key!r} should be a list, got {type(node).__name__}")
        if length is not None and len(node) != length:
            raise BitstreamError(source, f"header key {key!r} has {len(node)} entries, expected {length}")
        return [one(v, item, f"{key}[{i}]") for i, v in enumerate(node)] if item is not None else node
    return one(node, kind, key)


def _json_kind(v: Any) -> str:
    if isinstance(v, bool):
        return "bool"
    if isinstance(v, (int, float)):
        return "number"
    return type(v).__name__


def header_like(header: dict[str, Any], key: str, template: dict[str, Any], source: str | Path) -> dict[str, Any]:
    """``header[key]``, a dict whose entries have the JSON types of ``template``'s (a method's
    default configuration as a dict: numbers, bools, strings, lists), numbers finite and lists of
    the template's element types. Keys the template lacks are left to the method (e.g. an
    unknown-option error). ``BitstreamError`` naming ``source`` and the key otherwise."""
    d = header_value(header, key, dict, source)
    for k, want in template.items():
        if k not in d or want is None:
            continue
        v, what = d[k], f"{key}.{k}"
        if _json_kind(v) != _json_kind(want):
            raise BitstreamError(source, f"header key {what!r} should be {_json_kind(want)}, got {_json_kind(v)}")
        if isinstance(want, int) and not isinstance(want, bool) and isinstance(v, float):
            raise BitstreamError(source, f"header key {what!r} should be an integer, got {v!r}")
        if isinstance(v, (int, float)) and not isinstance(v, bool) and not math.isfinite(v):
            raise BitstreamError(source, f"header key {what!r} is {v} (must be finite)")
        if isinstance(want, list) and want:
            kinds = {_json_kind(x) for x in want}
            if any(_json_kind(x) not in kinds or (isinstance(x, float) and not math.isfinite(x)) for x in v):
                raise BitstreamError(source, f"header key {what!r} has entries of the wrong type")
    return d


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
