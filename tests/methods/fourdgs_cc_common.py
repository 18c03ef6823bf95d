"""Shared by the 4DGS-CC tests (import the fixtures into a test module to use them): a tiny
synthetic D-NeRF scene, toy 4DGS / 4DGS-CC configurations, single-threaded torch."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from evalkit.data.detect import load_scene
from evalkit.data.scene import Scene


@pytest.fixture(autouse=True)
def single_thread_torch():
    """Tiny tensor ops: one thread avoids OpenMP hand-offs on a busy 2-core machine."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


# 4DGS at toy scale: 16x16 images, 16^3 x 8 planes with 8 channels, a narrow MLP, densification
# that stops early so that VQ has a phase of its own.
TINY_4DGS = dict(feature_dim=8, resolution=[16, 16, 16, 8], multires=[1, 2], net_width=16, coarse_iterations=20,
                 iterations=60, densify_from_iter=5, densify_until_iter=20, densification_interval=10,
                 opacity_reset_interval=100000)
TINY_CC = dict(codebook_size=128, vqcc_hidden=16, vqcc_latent=4, nvcc_hidden=16, vq_assign_interval=10,
               kmeans_iters=5, entropy_lr=1e-2)


@pytest.fixture(scope="session")
def tiny_scene(synth_scene_dir) -> Scene:
    """The synthetic D-NeRF scene at 16x16 pixels with 200 initial points."""
    scene = load_scene(synth_scene_dir("dnerf"), resolution_scale=1 / 6)
    keep = np.random.default_rng(0).choice(len(scene.points.xyz), 200, replace=False)
    pts = scene.points
    return dataclasses.replace(scene, points=dataclasses.replace(
        pts, xyz=pts.xyz[keep], rgb=None if pts.rgb is None else pts.rgb[keep]))
