"""Fuzz the bitstream readers: damaged copies of a tiny committed file of each method
(``tests/codec/data/tiny-*.evk``, written by ``make_fuzz_bitstreams.py``) either raise
``BitstreamError`` naming the file or decode to exactly the original model: never another
exception, a hang or a different model. 300 seeded cases per method: byte flips anywhere, bit
flips and digit substitutions in the header, truncations, appended data. And header values that
pass the CRC but are out of range (a file written by a broken encoder) are refused by key."""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch

from evalkit.codec.container import Bitstream, BitstreamError
from evalkit.methods.registry import get_method

DATA = Path(__file__).resolve().parent / "data"
FILES = {"4dgs": DATA / "tiny-4dgs.evk", "4dgs-cc": DATA / "tiny-4dgs-cc.evk", "adc-gs": DATA / "tiny-adc-gs.evk"}
SH_FILES = {k: v for k, v in FILES.items() if k != "adc-gs"}  # the header keys of the 4DGS formats
CASES_PER_FILE = 300
KINDS = ("byte", "header_bit", "header_digit", "truncate", "append")


def _fingerprint(decoded) -> dict:
    m = decoded.model
    state = {k: v.detach().cpu().clone() for k, v in m.state_dict().items()}
    near = m.near_plane if hasattr(m, "near_plane") else m.cfg.near_plane
    return {"state": state, "sh_degree": getattr(m, "sh_degree", None), "near_plane": near}


def _same(a: dict, b: dict) -> bool:
    return (a["sh_degree"] == b["sh_degree"] and a["near_plane"] == b["near_plane"]
            and a["state"].keys() == b["state"].keys()
            and all(torch.equal(a["state"][k], b["state"][k]) for k in a["state"]))


def _decode(data: bytes, path: Path):
    path.write_bytes(data)
    bits = Bitstream.read(path)
    return get_method(bits.header.get("method", "?")).decode(bits, torch.device("cpu"), source=str(path))


def _header_span(data: bytes) -> tuple[int, int]:
    hlen = int.from_bytes(data[10:14], "little")
    return 18, 18 + hlen  # version 2: 14-byte preamble + 4-byte header CRC


def _mutate(data: bytes, kind: str, rng: np.random.Generator) -> bytes:
    b = bytearray(data)
    lo, hi = _header_span(data)
    if kind == "byte":
        i = int(rng.integers(len(b)))
        b[i] ^= int(rng.integers(1, 256))
    elif kind == "header_bit":
        i = int(rng.integers(lo, hi))
        b[i] ^= 1 << int(rng.integers(8))
    elif kind == "header_digit":
        digits = [m.start() for m in re.finditer(rb"[0-9]", bytes(b[lo:hi]))]
        i = lo + digits[int(rng.integers(len(digits)))]
        b[i] = ord(str((b[i] - ord("0") + int(rng.integers(1, 10))) % 10))
    elif kind == "truncate":
        return bytes(b[:int(rng.integers(len(b)))])
    else:
        return bytes(b) + rng.integers(0, 256, int(rng.integers(1, 64)), dtype=np.uint8).tobytes()
    return bytes(b)


@pytest.mark.parametrize("method", sorted(FILES))
def test_damaged_bitstreams_fail_cleanly_or_decode_identically(method, tmp_path):
    torch.set_num_threads(1)
    data = FILES[method].read_bytes()
    assert len(data) < 16_000
    original = _fingerprint(_decode(data, tmp_path / "orig.evk"))
    rng = np.random.default_rng(2024)
    outcomes = {k: {"error": 0, "identical": 0} for k in KINDS}
    for case in range(CASES_PER_FILE):
        kind = KINDS[case % len(KINDS)]
        bad = _mutate(data, kind, rng)
        path = tmp_path / f"case{case:03d}.evk"
        try:
            decoded = _decode(bad, path)
        except BitstreamError as exc:
            assert str(path) in str(exc), f"case {case} ({kind}): error does not name the file: {exc}"
            outcomes[kind]["error"] += 1
        else:
            assert bad == data or _same(_fingerprint(decoded), original), \
                f"case {case} ({kind}) decoded into a different model"
            outcomes[kind]["identical"] += 1
        path.unlink()
    print(method, outcomes)
    assert sum(v["error"] for v in outcomes.values()) >= CASES_PER_FILE * 0.9


def _rewrite_header(path: Path, tmp: Path, edit) -> Path:
    bits = Bitstream.read(path)
    edit(bits.header)
    out = tmp / f"edited-{path.name}"
    bits.write(out)  # a valid CRC: only the value checks stand between it and the renderer
    return out


@pytest.mark.parametrize("method", sorted(SH_FILES))
@pytest.mark.parametrize("key,value", [("sh_degree", 7), ("sh_degree", "3"), ("background", [9.5, 1, 1]),
                                       ("background", [1, 1]), ("config.near_plane", -1.0),
                                       ("config.near_plane", "0.2"), ("config.feature_dim", 2.5),
                                       ("config.resolution", ["a"]), ("config.sh_degree", 0)])
def test_out_of_range_header_values_are_refused_by_key(method, key, value, tmp_path):
    def edit(h):
        node = h
        *parents, last = key.split(".")
        for p in parents:
            node = node[p]
        node[last] = value

    path = _rewrite_header(FILES[method], tmp_path, edit)
    with pytest.raises(BitstreamError) as exc:
        _decode(path.read_bytes(), path)
    assert str(path) in str(exc.value) and key.split(".")[-1] in str(exc.value), str(exc.value)


def test_version_1_files_are_still_read(tmp_path):
    for method, path in FILES.items():
        bits = Bitstream.read(path)
        v1 = bits.to_bytes(version=1)
        assert len(v1) == len(path.read_bytes()) - 4
        back = Bitstream.from_bytes(v1)
        assert back.version == 1 and back.sizes()["total"] == len(v1)
        assert _same(_fingerprint(_decode(v1, tmp_path / "v1.evk")), _fingerprint(_decode(path.read_bytes(), tmp_path / "v2.evk")))
