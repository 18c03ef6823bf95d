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


def test_grow_splits_to_the_target_count(synth_scene_dir):
    """The benchmarks' stand-in for late densification: every new Gaussian is a split child (a
    parent's attributes, scale / 1.6, centre within a few of the parent's sigmas)."""
    import math

    from evalkit.bench.fourdgs import grow
    from evalkit.data.detect import load_scene
    from evalkit.models.fourdgs.config import FourDGSConfig
    from evalkit.models.fourdgs.trainer import build_model

    scene = load_scene(synth_scene_dir("dnerf"), resolution_scale=0.5)
    model = build_model(scene, FourDGSConfig(), torch.device("cpu"))
    g = model.gaussians
    before = {k: g[k].detach().clone() for k in g.keys()}
    n0 = len(before["means"])
    target = 2 * n0 + 7  # two rounds: all split once, then 7 children split again
    grow(model, target)
    assert model.num_primitives() == target
    g = model.gaussians
    # every Gaussian is a parent's copy (same colour and rotation) with its log-scale lowered by
    # k log 1.6, k = 1 (split once) or 2 (the 7 split again and their children)
    n = target
    key_b = torch.cat([before["sh0"].reshape(n0, -1), before["quats"]], 1)
    key_a = torch.cat([g["sh0"].detach().reshape(n, -1), g["quats"].detach()], 1)
    same = (key_a[:, None, :] == key_b[None, :, :]).all(-1)  # (n, n0)
    k = (before["scales"][None, :, :] - g["scales"].detach()[:, None, :]) / math.log(1.6)  # (n, n0, 3)
    once = same & ((k - 1).abs() < 1e-4).all(-1)
    twice = same & ((k - 2).abs() < 1e-4).all(-1)
    assert bool((once | twice).any(1).all())
    assert int(twice.any(1).sum()) >= 14  # at least the 7 parents split again and their 7 children
