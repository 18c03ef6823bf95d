"""Table-driven malformed datasets over the three formats: each case edits a copy of a tiny
synthetic scene (``evalkit datasets synth``) and must either raise a ``DatasetError`` naming the
file it expects (and a word of the problem), or load, by design, for the reason stated in the
table (``ACCEPT``). ``evalkit datasets info`` runs the same loaders."""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from evalkit.data import DatasetError, load_scene

NAN, INF = float("nan"), float("inf")


# ----------------------------------------------------------------- edit helpers
def jset(rel: str, keys: tuple, value):
    """Set ``value`` at ``keys`` in the JSON file ``rel`` (NaN / inf written as JSON NaN / Infinity)."""
    def edit(root: Path) -> None:
        p = root / rel
        d = json.loads(p.read_text())
        node = d
        for k in keys[:-1]:
            node = node[k]
        if value is DELETE:
            del node[keys[-1]]
        else:
            node[keys[-1]] = value
        p.write_text(json.dumps(d))
    return edit


DELETE = object()


def write(rel: str, data: bytes | str):
    def edit(root: Path) -> None:
        p = root / rel
        p.write_bytes(data if isinstance(data, bytes) else data.encode())
    return edit


def truncate(rel: str, keep: float = 0.5):
    def edit(root: Path) -> None:
        p = root / rel
        b = p.read_bytes()
        p.write_bytes(b[:int(len(b) * keep)])
    return edit


def remove(rel: str):
    return lambda root: (root / rel).unlink()


def symlink_loop(rel: str):
    def edit(root: Path) -> None:
        p = root / rel
        p.unlink()
        os.symlink(p.name, p)  # points at itself
    return edit


def npy_set(rel: str, index, value):
    def edit(root: Path) -> None:
        p = root / rel
        a = np.load(p)
        a = a.astype(np.float64)
        a[index] = value
        np.save(p, a)
    return edit


def npy_write(rel: str, arr):
    return lambda root: np.save(root / rel, arr)


TR, TE = "transforms_train.json", "transforms_test.json"
F0 = ("frames", 0)
CAM = "camera/left1_000003.json"
PB = "poses_bounds.npy"
PTS = "points.npy"

# (id, format, edit, file the error must name (None: the loader accepts it), word in the problem or reason)
CASES = [
    # --- D-NeRF: times
    ("dn-time-nan", "dnerf", jset(TR, F0 + ("time",), NAN), TR, "time"),
    ("dn-time-inf", "dnerf", jset(TR, F0 + ("time",), INF), TR, "finite"),
    ("dn-time-negative", "dnerf", jset(TR, F0 + ("time",), -0.1), TR, ">= 0"),
    ("dn-time-string", "dnerf", jset(TR, F0 + ("time",), "0.5"), TR, "number"),
    ("dn-time-bool", "dnerf", jset(TR, F0 + ("time",), True), TR, "number"),
    ("dn-time-missing", "dnerf", jset(TR, F0 + ("time",), DELETE), TR, "time"),
    ("dn-time-null", "dnerf", jset(TR, F0 + ("time",), None), TR, "number"),
    ("dn-test-time-nan", "dnerf", jset(TE, F0 + ("time",), NAN), TE, "time"),
    # --- D-NeRF: field of view
    ("dn-fov-pi", "dnerf", jset(TR, ("camera_angle_x",), 3.14), TR, "field of view"),
    ("dn-fov-tiny", "dnerf", jset(TR, ("camera_angle_x",), 1e-9), TR, "field of view"),
    ("dn-fov-nan", "dnerf", jset(TR, ("camera_angle_x",), NAN), TR, "finite"),
    ("dn-fov-negative", "dnerf", jset(TR, ("camera_angle_x",), -0.7), TR, "field of view"),
    ("dn-fov-string", "dnerf", jset(TR, ("camera_angle_x",), "wide"), TR, "number"),
    ("dn-fov-missing", "dnerf", jset(TR, ("camera_angle_x",), DELETE), TR, "camera_angle_x"),
    # --- D-NeRF: poses
    ("dn-pose-nan", "dnerf", jset(TR, F0 + ("transform_matrix", 0, 3), NAN), TR, "NaN"),
    ("dn-pose-inf", "dnerf", jset(TR, F0 + ("transform_matrix", 1, 1), INF), TR, "NaN or infinite"),
    ("dn-pose-scaled", "dnerf", jset(TR, F0 + ("transform_matrix", 0, 0), 2.0), TR, "rotation"),
    ("dn-pose-last-row", "dnerf", jset(TR, F0 + ("transform_matrix", 3, 0), 1.0), TR, "last row"),
    ("dn-pose-string", "dnerf", jset(TR, F0 + ("transform_matrix",), "eye"), TR, "numeric"),
    ("dn-pose-ragged", "dnerf", jset(TR, F0 + ("transform_matrix", 2), [0, 1]), TR, "transform_matrix"),
    # --- D-NeRF: files
    ("dn-frames-empty", "dnerf", jset(TR, ("frames",), []), TR, "empty"),
    ("dn-frames-not-list", "dnerf", jset(TR, ("frames",), {"a": 1}), TR, "frames"),
    ("dn-frame-not-object", "dnerf", jset(TR, ("frames", 0), 7), TR, "frames[0]"),
    ("dn-json-empty", "dnerf", write(TR, ""), TR, "empty"),
    ("dn-json-truncated", "dnerf", truncate(TR), TR, "malformed JSON"),
    ("dn-json-binary", "dnerf", write(TR, b"\xff\xfe\x00garbage"), TR, "malformed JSON"),
    ("dn-json-list", "dnerf", write(TR, "[1, 2]"), TR, "camera_angle_x"),
    ("dn-json-symlink-loop", "dnerf", symlink_loop(TE), TE, "symlink"),
    ("dn-image-missing", "dnerf", remove("train/r_001.png"), "train/r_001.png", "missing"),
    ("dn-image-empty", "dnerf", write("train/r_001.png", b""), "train/r_001.png", "not a readable image"),
    ("dn-image-truncated", "dnerf", truncate("train/r_001.png", 0.1), "train/r_001.png", "image"),
    ("dn-image-symlink-loop", "dnerf", symlink_loop("train/r_002.png"), "train/r_002.png", "image"),
    ("dn-file-path-int", "dnerf", jset(TR, F0 + ("file_path",), 3), TR, "file_path"),
    ("dn-val-missing", "dnerf", remove("transforms_val.json"), None, "val split is optional (D-NeRF: not used by the protocol)"),
    ("dn-time-above-one", "dnerf", jset(TR, F0 + ("time",), 2.0), None,
     "times are normalised by their maximum over train + test (D-NeRF loader rule)"),
    # --- HyperNeRF: scene.json
    ("hn-scale-nan", "hypernerf", jset("scene.json", ("scale",), NAN), "scene.json", "scale"),
    ("hn-scale-zero", "hypernerf", jset("scene.json", ("scale",), 0.0), "scene.json", "scale"),
    ("hn-scale-string", "hypernerf", jset("scene.json", ("scale",), "1"), "scene.json", "number"),
    ("hn-center-inf", "hypernerf", jset("scene.json", ("center", 1), INF), "scene.json", "center"),
    ("hn-near-negative", "hypernerf", jset("scene.json", ("near",), -0.1), "scene.json", "near"),
    ("hn-far-nan", "hypernerf", jset("scene.json", ("far",), NAN), "scene.json", "far"),
    ("hn-near-above-far", "hypernerf", jset("scene.json", ("near",), 1e6), "scene.json", "less than far"),
    ("hn-near-missing", "hypernerf", jset("scene.json", ("near",), DELETE), None,
     "near/far are optional (initial points then use defaults)"),
    ("hn-scene-truncated", "hypernerf", truncate("scene.json"), "scene.json", "malformed JSON"),
    # --- HyperNeRF: cameras
    ("hn-focal-nan", "hypernerf", jset(CAM, ("focal_length",), NAN), CAM, "focal_length"),
    ("hn-focal-tiny", "hypernerf", jset(CAM, ("focal_length",), 1e-6), CAM, "field"),
    ("hn-focal-huge", "hypernerf", jset(CAM, ("focal_length",), 1e12), CAM, "field"),
    ("hn-focal-negative", "hypernerf", jset(CAM, ("focal_length",), -100.0), CAM, "focal_length"),
    ("hn-pp-nan", "hypernerf", jset(CAM, ("principal_point", 0), NAN), CAM, "principal_point"),
    ("hn-pp-far-away", "hypernerf", jset(CAM, ("principal_point", 0), 1e5), CAM, "principal point"),
    ("hn-position-inf", "hypernerf", jset(CAM, ("position", 2), -INF), CAM, "position"),
    ("hn-orientation-nan", "hypernerf", jset(CAM, ("orientation", 0, 0), NAN), CAM, "orientation"),
    ("hn-aspect-nan", "hypernerf", jset(CAM, ("pixel_aspect_ratio",), NAN), CAM, "pixel_aspect_ratio"),
    ("hn-skew-inf", "hypernerf", jset(CAM, ("skew",), INF), CAM, "skew"),
    ("hn-image-size-zero", "hypernerf", jset(CAM, ("image_size", 0), 0), CAM, "image_size"),
    ("hn-distortion-nan", "hypernerf", jset(CAM, ("radial_distortion",), [NAN, 0, 0]), CAM, "radial_distortion"),
    ("hn-camera-empty", "hypernerf", write(CAM, ""), CAM, "empty"),
    ("hn-camera-symlink-loop", "hypernerf", symlink_loop(CAM), CAM, "symlink"),
    # --- HyperNeRF: dataset.json / metadata.json / points
    ("hn-val-empty", "hypernerf", jset("dataset.json", ("val_ids",), []), "dataset.json", "val_ids"),
    ("hn-val-absent", "hypernerf", jset("dataset.json", ("val_ids",), DELETE), "dataset.json", "val_ids"),
    ("hn-ids-empty", "hypernerf", jset("dataset.json", ("ids",), []), "dataset.json", "ids"),
    ("hn-train-ids-string", "hypernerf", jset("dataset.json", ("train_ids",), "left1_000000"), "dataset.json", "train_ids"),
    ("hn-warp-negative", "hypernerf", jset("metadata.json", ("left1_000003", "warp_id"), -1), "metadata.json", "warp_id"),
    ("hn-warp-float", "hypernerf", jset("metadata.json", ("left1_000003", "warp_id"), 1.5), "metadata.json", "warp_id"),
    ("hn-warp-nan", "hypernerf", jset("metadata.json", ("left1_000003", "warp_id"), NAN), "metadata.json", "warp_id"),
    ("hn-warp-bool", "hypernerf", jset("metadata.json", ("left1_000003", "warp_id"), True), "metadata.json", "integer"),
    ("hn-points-nan", "hypernerf", npy_write(PTS, np.array([[0, 0, 0], [NAN, 1, 2]])), PTS, "points"),
    ("hn-points-inf", "hypernerf", npy_write(PTS, np.array([[INF, 0, 0]])), PTS, "points"),
    ("hn-points-shape", "hypernerf", npy_write(PTS, np.zeros((4, 2))), PTS, "shape"),
    ("hn-points-empty", "hypernerf", npy_write(PTS, np.zeros((0, 3))), PTS, "N > 0"),
    ("hn-points-strings", "hypernerf", npy_write(PTS, np.array([["a", "b", "c"]])), PTS, "numbers"),
    ("hn-points-corrupt", "hypernerf", write(PTS, b"\x93NUMPY garbage"), PTS, "readable"),
    ("hn-image-corrupt", "hypernerf", write("rgb/1x/left1_000003.png", b"\x89PNG\r\n\x1a\nxx"),
     "rgb/1x/left1_000003.png", "image"),
    # --- Neu3D: poses_bounds.npy
    ("n3-pose-nan", "neu3d", npy_set(PB, (1, 3), NAN), PB, "NaN"),
    ("n3-pose-inf", "neu3d", npy_set(PB, (2, 0), INF), PB, "NaN or infinite"),
    ("n3-focal-tiny", "neu3d", npy_set(PB, (1, 14), 1e-6), PB, "field of view"),
    ("n3-focal-huge", "neu3d", npy_set(PB, (1, 14), 1e12), PB, "field of view"),
    ("n3-focal-zero", "neu3d", npy_set(PB, (1, 14), 0.0), PB, "positive"),
    ("n3-near-negative", "neu3d", npy_set(PB, (0, 15), -1.0), PB, "near"),
    ("n3-far-negative", "neu3d", npy_set(PB, (3, 16), -5.0), PB, "far"),
    ("n3-near-above-far", "neu3d", npy_set(PB, (2, 15), 1e6), PB, "less than far"),
    ("n3-bounds-nan", "neu3d", npy_set(PB, (2, 16), NAN), PB, "NaN"),
    ("n3-rotation-scaled", "neu3d", npy_set(PB, (1, 0), 3.0), PB, "orthonormal"),
    ("n3-pb-empty-file", "neu3d", write(PB, b""), PB, "readable"),
    ("n3-pb-truncated", "neu3d", truncate(PB), PB, "readable"),
    ("n3-pb-strings", "neu3d", npy_write(PB, np.array([["x"] * 17] * 5)), PB, "N_cams"),
    ("n3-video-empty", "neu3d", write("cam02.mp4", b""), "cam02.mp4", "video"),
    ("n3-video-truncated", "neu3d", truncate("cam03.mp4", 0.3), "cam03.mp4", ""),
    ("n3-video-symlink-loop", "neu3d", symlink_loop("cam01.mp4"), "cam01.mp4", "video"),
    ("n3-ply-corrupt", "neu3d", write("points3D_downsample2.ply", b"ply\nformat nonsense\n"),
     "points3D_downsample2.ply", "PLY"),
]


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    from evalkit.data.synth import generate

    out = {}
    for fmt, kw in (("dnerf", dict(size=(24, 24), num_frames=6)), ("hypernerf", dict(size=(32, 24), num_frames=4)),
                    ("neu3d", dict(size=(32, 24), num_frames=4, num_cameras=4))):
        out[fmt] = generate(fmt, tmp_path_factory.mktemp(f"src_{fmt}"), **kw)
    # points.npy for the HyperNeRF cases (the generator writes a PLY)
    np.save(out["hypernerf"] / PTS, np.zeros((8, 3)))
    return out


def test_table_is_big_enough():
    assert len(CASES) >= 60 and len({c[0] for c in CASES}) == len(CASES)


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_malformed_dataset(case, sources, tmp_path):
    name, fmt, edit, expected, word = case
    root = tmp_path / fmt
    shutil.copytree(sources[fmt], root, symlinks=True)
    edit(root)
    load = lambda: load_scene(root, format=fmt, cache_dir=tmp_path / "cache", **(
        {"resolution_scale": 1.0} if fmt == "hypernerf" else {}))
    if expected is None:  # accepted by design: ``word`` is the reason
        scene = load()
        assert scene.frames and all(0.0 <= f.time <= 1.0 for f in scene.frames), word
        return
    with pytest.raises(DatasetError) as info:
        scene = load()
        for f in scene.frames:  # errors found only when pixels are read (images) still name the file
            f.load()
    err = info.value
    assert err.path == root / expected, f"{name}: names {err.path}, expected {root / expected}: {err}"
    assert word in err.problem, f"{name}: {word!r} not in {err.problem!r}"
