"""Find a dataset folder's format and load it with the matching loader."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np

from evalkit.data.dnerf import is_dnerf, load_dnerf
from evalkit.data.hypernerf import is_hypernerf, load_hypernerf
from evalkit.data.neu3d import is_neu3d, load_neu3d
from evalkit.data.scene import DatasetError, Scene

FORMATS = ("dnerf", "hypernerf", "neu3d")
EXPECTED = {
    "dnerf": "transforms_train.json (+ transforms_test.json, PNG images)",
    "hypernerf": "dataset.json + camera/ (+ metadata.json, scene.json, rgb/<k>x/)",
    "neu3d": "poses_bounds.npy + cam*.mp4",
}


LAYOUT_TESTS = {"dnerf": is_dnerf, "hypernerf": is_hypernerf, "neu3d": is_neu3d}


def is_layout(path: Path, format: str) -> bool:
    """Whether the folder has the files of ``format``'s layout (False for a format without a test)."""
    test = LAYOUT_TESTS.get(format)
    return bool(test and test(path))


def detect_format(path: Path | str) -> str:
    """'dnerf' | 'hypernerf' | 'neu3d', judged from the files in the folder."""
    root = Path(path)
    if not root.is_dir():
        raise DatasetError(root, "dataset folder is missing")
    found = [name for name, test in LAYOUT_TESTS.items() if test(root)]
    if len(found) == 1:
        return found[0]
    if not found:
        listing = "; ".join(f"{k}: {v}" for k, v in EXPECTED.items())
        raise DatasetError(root, f"not a recognised dataset folder; expected one of {listing}")
    raise DatasetError(root, f"ambiguous dataset folder: matches {found}; pass format= explicitly")


def load_scene(path: Path | str, format: str | None = None, resolution_scale: float | None = None,
               background: Sequence[float] | np.ndarray | str | None = None,
               cache_dir: Path | str | None = None, **options: Any) -> Scene:
    """Load any supported dataset folder into a :class:`Scene`.

    ``resolution_scale`` None means the format's default: D-NeRF 1.0 (800x800 as in the
    papers), HyperNeRF 0.5 (``rgb/2x``), Neu3D 1.0 for videos up to 1600 px, else 0.5.
    ``background`` None means white for D-NeRF, black otherwise. ``cache_dir`` (Neu3D only)
    is the root of the decoded-frame cache. Other ``options`` go to the format's loader
    (e.g. ``prefetch=False`` for Neu3D, ``init_points``, ``seed``, ``image_cache``).
    """
    fmt = format or detect_format(path)
    if fmt == "dnerf":
        return load_dnerf(path, resolution_scale=resolution_scale, background=background, **options)
    if fmt == "hypernerf":
        return load_hypernerf(path, resolution_scale=resolution_scale, background=background, **options)
    if fmt == "neu3d":
        return load_neu3d(path, resolution_scale=resolution_scale, background=background,
                          cache_dir=cache_dir, **options)
    raise ValueError(f"unknown dataset format {fmt!r}; expected one of {FORMATS}")
