"""Run a Triton check script in Triton's CPU interpreter (``TRITON_INTERPRET=1`` must be set before
Triton compiles anything, hence a subprocess); the repository root is put on ``PYTHONPATH`` so the
script imports evalkit also where it is not installed."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def run_in_interpreter(script_name: str) -> str:
    """Run ``tests/methods/<script_name>``; assert it exits 0 and return its stdout."""
    pytest.importorskip("triton")
    script = Path(__file__).with_name(script_name)
    env = {**os.environ, "TRITON_INTERPRET": "1",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    proc = subprocess.run([sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout
