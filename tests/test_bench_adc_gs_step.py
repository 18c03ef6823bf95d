"""The adc-gs step benchmark times the trainer at a fixed, late-stage anchor count."""
from __future__ import annotations

import numpy as np
import torch
from scipy.spatial import cKDTree

from evalkit.bench.adc_gs_step import late_stage, with_anchors
from evalkit.data.detect import load_scene
from evalkit.methods.adc_gs.config import ADCConfig
from evalkit.methods.adc_gs.training import train


def test_anchors_are_distinct_jittered_copies_of_the_scene_points(synth_scene_dir):
    scene = load_scene(synth_scene_dir("dnerf"), resolution_scale=0.5)
    src = np.asarray(scene.points.xyz, dtype=np.float64)
    n = 3 * len(src) + 5
    grown = with_anchors(scene, n)
    xyz = np.asarray(grown.points.xyz, dtype=np.float64)
    assert xyz.shape == (n, 3) and len(np.unique(xyz, axis=0)) == n
    nn_src, _ = cKDTree(src).query(src, k=2)
    dist, idx = cKDTree(src).query(xyz)
    # each anchor sits near one scene point: well within that point's nearest-neighbour distance
    assert (dist < 0.6 * nn_src[idx, 1]).all()
    assert grown.points.rgb.shape == (n, 3) and len(scene.points.xyz) == len(src)  # the scene is not edited


def test_late_stage_keeps_the_count_and_freezes_positions(synth_scene_dir):
    """Every stage on from step 1 (deformation, noise, rate), no refinement: the anchor count stays
    and X_v is frozen after step 1, as in the late steps of a real run."""
    scene = with_anchors(load_scene(synth_scene_dir("dnerf"), resolution_scale=0.5), 300)
    cfg = late_stage(ADCConfig(), 4)
    assert cfg.deform_from == cfg.quant_from == cfg.rate_from == 0 and not cfg.refinement
    model, stats = train(scene, cfg, torch.device("cpu"))
    assert model.num_anchors + stats["refinement"]["merged"] == 300
    assert stats["refinement"]["grown"] == stats["refinement"]["pruned"] == 0
    assert not model.xyz.requires_grad
