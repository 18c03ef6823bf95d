"""The throughput benchmark runs as a module and prints parseable numbers."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def test_bench_render_quick_cli_prints_fields():
    proc = subprocess.run([sys.executable, "-m", "evalkit.bench.render", "--quick", "--device", "cpu",
                           "--sizes", "150,400", "--res", "40"],
                          cwd=REPO, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})  # tiny ops: see conftest
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert out.startswith("device: CPU")
    lines = [ln for ln in out.splitlines() if ln.startswith("render ")]
    assert len(lines) == 2
    for n, ln in zip((150, 400), lines):
        fields = dict(kv.split("=", 1) for kv in ln.split()[1:])
        assert fields["gaussians"] == str(n) and fields["res"] == "40x40"
        assert fields["device"] == "cpu" and fields["backend"] == "torch"
        ms, fps, gps = float(fields["ms_per_frame"]), float(fields["fps"]), float(fields["gaussians_per_s"])
        assert ms > 0 and fps == pytest.approx(1000 / ms, rel=1e-2)
        assert gps == pytest.approx(n * fps, rel=1e-2)
        assert 0 < int(fields["visible"]) <= n


def test_bench_rejects_bad_sizes(capsys):
    from evalkit.bench.render import main

    with pytest.raises(SystemExit):
        main(["--quick", "--sizes", "10,abc"])
    assert "comma-separated integers" in capsys.readouterr().err
