"""The 4DGS benchmarks report a bad scene folder as one line naming it, not a traceback."""
from __future__ import annotations

import pytest
import torch

from evalkit.bench.fourdgs import load_bench_scene


def test_missing_image_folder_is_a_clean_exit(tmp_path):
    scene = tmp_path / "broken"
    (scene / "rgb" / "2x").mkdir(parents=True)
    for name in ("dataset.json", "metadata.json", "scene.json"):
        (scene / name).write_text("{}")
    with pytest.raises(SystemExit) as exc:
        load_bench_scene(scene, "hypernerf", torch.device("cpu"), resolution_scale=0.25)
    msg = str(exc.value)
    assert msg.startswith("error: ") and str(scene) in msg and "Traceback" not in msg
