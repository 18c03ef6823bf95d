"""Move training checkpoints between device sessions, within the device tool's limits on what
comes back from $OUT (8 files of at most 16 MiB, 64 MiB together, 2 folders deep).

    python3 tools/ckpt_parts.py split /tmp/res $OUT/ckpt       # on the device: parts of every *.ckpt
    python tools/ckpt_parts.py join FILES_AT/ckpt .devresume_x  # here: the checkpoints again, laid out
                                                                # as /tmp/res (carry .devresume_x, then
                                                                # `tools/device_adc.sh resume .devresume_x`)

A part's name is its checkpoint's path under the root, '/' written '__', then '.part.IIIofNNN'.
``split`` refuses (exit 2, nothing written) when the parts would not all come back; ``join`` refuses
a checkpoint with a part missing.
"""
from __future__ import annotations

import re
import sys
from pathlib import Path

PART = 15 * 2**20  # under the 16 MiB a file
MAX_FILES, MAX_TOTAL = 7, 60 * 2**20  # leave room for one more file (res.tgz) under 8 files / 64 MiB
_NAME = re.compile(r"^(?P<stem>.+\.ckpt)\.part\.(?P<i>\d{3})of(?P<n>\d{3})$")


def plan(root: Path) -> list[tuple[Path, str, int]]:
    """(checkpoint, flat name, number of parts) for every *.ckpt under root."""
    out = []
    for ck in sorted(root.rglob("*.ckpt")):
        flat = "__".join(ck.relative_to(root).parts)
        out.append((ck, flat, max(1, -(-ck.stat().st_size // PART))))
    return out


def split(root: Path, dest: Path) -> int:
    items = plan(root)
    files, total = sum(n for _, _, n in items), sum(ck.stat().st_size for ck, _, _ in items)
    if files > MAX_FILES or total > MAX_TOTAL:
        print(f"ckpt_parts: {len(items)} checkpoints, {files} parts, {total / 2**20:.1f} MiB: over what comes back "
              f"({MAX_FILES} parts, {MAX_TOTAL >> 20} MiB); split fewer (a narrower ROOT)", file=sys.stderr)
        return 2
    dest.mkdir(parents=True, exist_ok=True)
    for ck, flat, n in items:
        data = ck.read_bytes()
        for i in range(n):
            (dest / f"{flat}.part.{i:03d}of{n:03d}").write_bytes(data[i * PART:(i + 1) * PART])
        print(f"{ck}: {len(data)} bytes in {n} parts")
    return 0


def join(src: Path, dest: Path) -> int:
    groups: dict[str, dict[int, Path]] = {}
    counts: dict[str, set[int]] = {}
    for p in sorted(src.iterdir()):
        m = _NAME.match(p.name)
        if m:
            groups.setdefault(m["stem"], {})[int(m["i"])] = p
            counts.setdefault(m["stem"], set()).add(int(m["n"]))
    for stem, parts in sorted(groups.items()):
        n = counts[stem]
        if len(n) != 1 or sorted(parts) != list(range(max(n))):
            print(f"ckpt_parts: {src / stem}: parts {sorted(parts)} of {sorted(n)}: not joined", file=sys.stderr)
            return 2
        target = dest.joinpath(*stem.split("__"))
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(b"".join(parts[i].read_bytes() for i in range(len(parts))))
        print(f"{target}: {target.stat().st_size} bytes from {len(parts)} parts")
    return 0


def main(argv: list[str]) -> int:
    if len(argv) != 3 or argv[0] not in ("split", "join"):
        print(__doc__, file=sys.stderr)
        return 2
    return (split if argv[0] == "split" else join)(Path(argv[1]), Path(argv[2]))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
