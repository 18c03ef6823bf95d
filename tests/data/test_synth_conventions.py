"""Camera / image conventions of the three loaders, checked on synthetic scenes whose truth
is known: the generator places marker spheres with known centres and records where its own
camera sees them; the loaded cameras must project the centres there, and the loaded images
must show the markers there (centroid of the marker colour, sub-pixel)."""
from __future__ import annotations

import numpy as np
import pytest

from evalkit.data import DatasetError, load_scene
from evalkit.data.synth import load_truth, measure_marker_centroid

CENTROID_TOL_PX = 0.2  # measured: <= 0.1 px max (PNG and H.264); a half-pixel error is 0.5 px
CASES = [
    ("dnerf", {}),
    ("dnerf", {"background": "black"}),
    ("dnerf", {"resolution_scale": 0.5}),
    ("dnerf", {"resolution_scale": 0.37}),  # non-integer factor: 96 -> 36 px
    ("hypernerf", {}),  # default ratio 0.5 = rgb/2x
    ("hypernerf", {"resolution_scale": 1.0}),
    ("neu3d", {}),
]


def _world_to_loader(truth: dict, xyz: np.ndarray) -> np.ndarray:
    """HyperNeRF loaders normalise the world with scene.json; the others keep it."""
    if "scene_center" in truth:
        return (xyz - np.asarray(truth["scene_center"])) * truth["scene_scale"]
    return xyz


def _marker_errors(scene, truth, shift=(0.0, 0.0)):
    """Per clean marker: |centroid in the loaded image - projection through the loaded camera|."""
    bg = np.asarray(truth["background"]) if truth["background"] is not None else scene.background
    errs, areas = [], []
    for f in scene.frames:
        obs = truth["by_image"].get((f.split, f.image_name))
        if obs is None:
            continue
        ratio = f.camera.width / truth["size"][0]
        img = None
        for k, m in enumerate(obs["markers"]):
            r = m["radius_px"] * ratio
            if not m["clean"] or r < 1.0:
                continue
            img = f.load() if img is None else img
            uv, _ = f.camera.project(_world_to_loader(truth, np.asarray(m["xyz"]))[None])
            uv = uv[0] + np.asarray(shift)
            c, area = measure_marker_centroid(img, bg, truth["marker_colors"][k], uv, r + 2.0)
            errs.append(np.linalg.norm(c - uv))
            areas.append(area / (np.pi * r * r))
    return np.array(errs), np.array(areas)


@pytest.mark.parametrize("fmt,opts", CASES, ids=[f"{f}-{o}" for f, o in CASES])
def test_markers_project_where_drawn(synth_scene_dir, tmp_path, fmt, opts):
    root = synth_scene_dir(fmt)
    truth = load_truth(root)
    scene = load_scene(root, cache_dir=tmp_path, **opts)
    assert scene.format == fmt

    # 1. Loaded cameras vs the generator's own cameras (written in the format's convention).
    matched = 0
    for f in scene.frames:
        obs = truth["by_image"].get((f.split, f.image_name))
        if obs is None:
            continue
        matched += 1
        assert f.time == pytest.approx(obs["time"], abs=1e-9)
        xyz = np.asarray([m["xyz"] for m in obs["markers"]])
        uv, z = f.camera.project(_world_to_loader(truth, xyz))
        ratio_x = f.camera.width / truth["size"][0]
        ratio_y = f.camera.height / truth["size"][1]
        want = np.asarray([m["pixel"] for m in obs["markers"]]) * [ratio_x, ratio_y]
        np.testing.assert_allclose(uv, want, atol=1e-6)
        depth = np.asarray([m["depth"] for m in obs["markers"]]) * truth.get("scene_scale", 1.0)
        np.testing.assert_allclose(z, depth, rtol=1e-9)
    assert matched == len(scene.frames)

    # 2. Loaded images vs loaded cameras: marker colour centroid at the projection.
    errs, areas = _marker_errors(scene, truth)
    assert len(errs) >= 20, "too few unoccluded markers to test"
    assert errs.max() < CENTROID_TOL_PX, f"max centroid error {errs.max():.3f} px"
    assert np.median(areas) == pytest.approx(1.0, abs=0.15)  # the marker really is there

    # 3. The test can fail: a half-pixel principal-point error is detected.
    shifted, _ = _marker_errors(scene, truth, shift=(0.5, 0.0))
    assert np.median(shifted) > 0.4


@pytest.mark.parametrize("fmt", ["dnerf", "hypernerf", "neu3d"])
def test_initial_points_lie_on_objects(synth_scene_dir, tmp_path, fmt):
    """The generator's t=0 surface points, loaded with the scene, land on object pixels (not
    background) in every t=0 image: points and cameras share one world frame."""
    root = synth_scene_dir(fmt)
    truth = load_truth(root)
    scene = load_scene(root, cache_dir=tmp_path)
    assert scene.points.source != "random"
    bg = np.asarray(truth["background"]) if truth["background"] is not None else scene.background
    frames = [f for f in scene.frames if f.time == 0.0 and f.split in ("train", "test")]
    assert frames
    for f in frames:
        img = f.load()
        uv, z = f.camera.project(scene.points.xyz)
        W, H = f.camera.width, f.camera.height
        ok = (z > 0) & (uv[:, 0] >= 0) & (uv[:, 0] < W) & (uv[:, 1] >= 0) & (uv[:, 1] < H)
        assert ok.mean() > 0.95
        px = img[uv[ok, 1].astype(int), uv[ok, 0].astype(int)]
        on_object = np.abs(px - bg).max(axis=1) > 0.04
        assert on_object.mean() > 0.95, f"{f.image_name}: {on_object.mean():.3f} of points on objects"


def test_dnerf_splits_and_times(synth_scene_dir):
    scene = load_scene(synth_scene_dir("dnerf"))
    assert (len(scene.train), len(scene.test), len(scene.split("val"))) == (24, 8, 4)
    assert scene.time_range == (0.0, 1.0)
    assert scene.resolution == (96, 96)
    np.testing.assert_array_equal(scene.background, [1, 1, 1])
    f = scene.train[0]
    np.testing.assert_allclose(f.camera.K[:2, 2], [48.0, 48.0])


def test_hypernerf_vrig_and_interp_splits(synth_scene_dir, tmp_path):
    import json
    import shutil

    root = synth_scene_dir("hypernerf")
    scene = load_scene(root)
    assert scene.extra["split_mode"] == "vrig"
    assert [f.image_name for f in scene.train] == [f"left1_{i:06d}" for i in range(24)]
    assert [f.image_name for f in scene.test] == [f"right1_{i:06d}" for i in range(24)]
    assert scene.resolution == (64, 48)
    assert [f.time for f in scene.train] == pytest.approx(np.arange(24) / 23)
    # pixel_aspect_ratio and the off-centre principal point reach K, scaled by the ratio
    K = scene.train[0].camera.K
    assert K[1, 1] / K[0, 0] == pytest.approx(1.04)
    np.testing.assert_allclose(K[:2, 2], [(64 + 1.7) / 2, (48 - 1.3) / 2])

    # "interp" scenes (no val_ids): every 4th image trains, +2 tests, last test dropped
    copy = tmp_path / "interp"
    shutil.copytree(root, copy)
    ds = json.loads((copy / "dataset.json").read_text())
    ds["val_ids"] = []
    (copy / "dataset.json").write_text(json.dumps(ds))
    with pytest.raises(DatasetError, match="val_ids"):  # the protocol is not switched silently
        load_scene(copy)
    interp = load_scene(copy, split="interp")
    ids = ds["ids"]
    assert interp.extra["split_mode"] == "interp"
    assert [f.image_name for f in interp.train] == ids[0::4]
    assert [f.image_name for f in interp.test] == [ids[i + 2] for i in range(0, len(ids), 4)][:-1]


def test_neu3d_splits_and_times(synth_scene_dir, tmp_path):
    scene = load_scene(synth_scene_dir("neu3d"), cache_dir=tmp_path)
    assert {f.camera_id for f in scene.test} == {"cam00"}
    assert {f.camera_id for f in scene.train} == {f"cam{i:02d}" for i in range(1, 5)}
    assert len(scene.test) == 12 and len(scene.train) == 48
    assert sorted({f.time for f in scene.test}) == pytest.approx(np.arange(12) / 12)
    assert scene.num_time_steps == 12
    assert scene.resolution == (96, 64)
    np.testing.assert_allclose(scene.test[0].camera.K[:2, 2], [48.0, 32.0])


def test_hypernerf_ratios_scale_intrinsics_and_images(synth_scene_dir):
    root = synth_scene_dir("hypernerf")
    scenes = {r: load_scene(root, resolution_scale=r) for r in (1.0, 0.5, 0.25)}
    assert [scenes[r].resolution for r in (1.0, 0.5, 0.25)] == [(128, 96), (64, 48), (32, 24)]
    for r in (0.5, 0.25):
        np.testing.assert_allclose(scenes[r].test[3].camera.K[:2], scenes[1.0].test[3].camera.K[:2] * r)
        np.testing.assert_array_equal(scenes[r].test[3].camera.w2c, scenes[1.0].test[3].camera.w2c)
    # rgb/4x is the 2x2 box average of rgb/2x (up to 8-bit rounding): same pixel grid
    half, quarter = scenes[0.5].test[3].load(), scenes[0.25].test[3].load()
    np.testing.assert_allclose(quarter, half.reshape(24, 2, 32, 2, 3).mean(axis=(1, 3)), atol=1.5 / 255)


def test_skeleton_scene_keeps_the_conventions_and_renders_the_same_in_parallel(synth_scene_dir, tmp_path):
    """The thin-bone scene (issue 27's T-Rex-like stand-in): its bones occlude, the markers still sit
    where the loaded cameras project them; rendering with worker processes writes the same files."""
    from evalkit.data.synth import generate, scene_objects

    prims, _ = scene_objects(0.5, "skeleton")
    assert len(prims) == 41 and sum(float(p.radii[1:].max()) <= 0.025 for p in prims) >= 25  # mostly thin bones
    root = synth_scene_dir("dnerf", scene="skeleton", size=(160, 160), num_frames=9)
    truth = load_truth(root)
    assert truth["scene"] == "skeleton"
    errs, areas = _marker_errors(load_scene(root, cache_dir=tmp_path), truth)
    assert len(errs) >= 8 and errs.max() < CENTROID_TOL_PX and np.median(areas) == pytest.approx(1.0, abs=0.15)

    par = generate("dnerf", tmp_path / "parallel", scene="skeleton", size=(160, 160), num_frames=9, workers=2)
    files = sorted(p.relative_to(root) for p in root.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(par) for p in par.rglob("*") if p.is_file())
    for f in files:
        assert (root / f).read_bytes() == (par / f).read_bytes(), f
