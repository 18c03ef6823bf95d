"""Shared pytest fixtures.

* ``shared_data``: the real test data folder (``$EVALKIT_SHARED_DATA``, else ``shared/data``
  beside the repository checkout), or a skip with the reason.
* Tests marked ``gpu`` are skipped where CUDA is missing (``pytest_runtest_setup``).
* ``synth_scene_dir(format, **kwargs)``: a small synthetic scene generated once per session
  (``evalkit.data.synth.generate``) and cached by its arguments. Treat it as read-only; copy
  it (``shutil.copytree``) before modifying files.
"""
from __future__ import annotations

import os

# numpy's OpenBLAS spawns one thread per core for tiny (N, 3) @ (3, 3) products; on a busy
# 2-core CI runner that makes them 10x slower than single-threaded. Must precede numpy import.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import torch  # noqa: E402

# Likewise torch's intra-op threads make tiny CPU ops slower on a loaded 2-core runner; tests
# use one thread (the render tests' own conftest also pins it).
torch.set_num_threads(1)

from pathlib import Path  # noqa: E402
from typing import Any, Callable  # noqa: E402

import pytest  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parents[1]


def shared_data_root() -> Path:
    return Path(os.environ.get("EVALKIT_SHARED_DATA", REPO_ROOT.parent / "shared" / "data"))


def pytest_runtest_setup(item: pytest.Item) -> None:
    """Tests marked ``gpu`` skip themselves on machines without CUDA (CI's CPU runner)."""
    if item.get_closest_marker("gpu") is not None and not torch.cuda.is_available():
        pytest.skip("needs CUDA")


@pytest.fixture(scope="session")
def shared_data() -> Path:
    root = shared_data_root()
    if not root.is_dir():
        pytest.skip(f"real test data not found at {root} (set EVALKIT_SHARED_DATA)")
    return root


@pytest.fixture(scope="session")
def synth_scene_dir(tmp_path_factory: pytest.TempPathFactory) -> Callable[..., Path]:
    from evalkit.data.synth import generate

    made: dict[tuple, Path] = {}

    def get(format: str, **kwargs: Any) -> Path:
        key = (format, tuple(sorted(kwargs.items())))
        if key not in made:
            out = tmp_path_factory.mktemp(f"synth_{format}")
            made[key] = generate(format, out, **kwargs)
        return made[key]

    return get


@pytest.fixture
def synthetic_data_root(tmp_path: Path, synth_scene_dir) -> Path:
    """A data root whose ``synthetic/spheres`` is the built-in scene (generated once per session)."""
    data = tmp_path / "data" / "synthetic"
    data.mkdir(parents=True)
    (data / "spheres").symlink_to(synth_scene_dir("dnerf"))
    return tmp_path / "data"


@pytest.fixture(autouse=True)
def _isolated_evalkit_cache(tmp_path_factory: pytest.TempPathFactory,
                            monkeypatch: pytest.MonkeyPatch) -> None:
    """Decoded-video caches go to a session temp dir, never to the user's ~/.cache."""
    if "EVALKIT_CACHE" not in os.environ:
        monkeypatch.setenv("EVALKIT_CACHE", str(tmp_path_factory.getbasetemp() / "evalkit_cache"))


@pytest.fixture(autouse=True)
def _no_foreign_evalkit_jobs(monkeypatch: pytest.MonkeyPatch) -> None:
    """Jobs under test do not see other people's evalkit runs or the host's load (a busy CI
    runner) as contention: records stay deterministic. ``tests/metrics/test_contention.py``
    tests that detection with its own counts and loads."""
    from evalkit.metrics import contention

    monkeypatch.setattr(contention, "other_evalkit_jobs", lambda: 0)
    monkeypatch.setattr(contention, "host_load", lambda: None)
    monkeypatch.setenv(contention.IGNORE_HOST_ENV, "1")  # sweep workers are child processes
