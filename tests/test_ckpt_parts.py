"""tools/ckpt_parts.py: checkpoints split into parts that the device tool brings back, and joined
again byte for byte, laid out as they were."""
import os
import subprocess
import sys
from pathlib import Path

TOOL = Path(__file__).resolve().parents[1] / "tools" / "ckpt_parts.py"


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(TOOL), *args], capture_output=True, text=True)


def test_split_then_join_gives_the_checkpoints_back(tmp_path: Path) -> None:
    root = tmp_path / "res"
    files = {"cap/hypernerf/basketball/adc-gs/mid.ckpt": os.urandom(16 * 2**20 + 5),  # two parts
             "cap/hypernerf/basketball/adc-gs/low.ckpt": os.urandom(1000)}
    for rel, data in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    assert _run("split", str(root), str(tmp_path / "out")).returncode == 0
    parts = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert parts == ["cap__hypernerf__basketball__adc-gs__low.ckpt.part.000of001",
                     "cap__hypernerf__basketball__adc-gs__mid.ckpt.part.000of002",
                     "cap__hypernerf__basketball__adc-gs__mid.ckpt.part.001of002"]
    assert all((tmp_path / "out" / p).stat().st_size <= 16 * 2**20 for p in parts)
    assert _run("join", str(tmp_path / "out"), str(tmp_path / "back")).returncode == 0
    for rel, data in files.items():
        assert (tmp_path / "back" / rel).read_bytes() == data


def test_a_missing_part_or_too_much_is_refused(tmp_path: Path) -> None:
    root = tmp_path / "res"
    root.mkdir()
    for i in range(3):  # 3 x 30 MiB: 6 parts, 90 MiB, over the 60 MiB that comes back
        (root / f"r{i}.ckpt").write_bytes(b"\0" * (30 * 2**20))
    r = _run("split", str(root), str(tmp_path / "out"))
    assert r.returncode == 2 and "over what comes back" in r.stderr and not (tmp_path / "out").exists()
    (root / "r1.ckpt").unlink()
    (root / "r2.ckpt").unlink()
    assert _run("split", str(root), str(tmp_path / "out")).returncode == 0
    (tmp_path / "out" / "r0.ckpt.part.001of002").unlink()
    r = _run("join", str(tmp_path / "out"), str(tmp_path / "back"))
    assert r.returncode == 2 and "not joined" in r.stderr
