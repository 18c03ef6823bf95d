"""Bad dataset folders raise DatasetError naming the offending file and the problem."""
from __future__ import annotations

import json
import shutil
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
from PIL import Image

from evalkit.data import DatasetError, detect_format, load_scene
from evalkit.data.dnerf import load_dnerf
from evalkit.data.hypernerf import load_hypernerf
from evalkit.data.neu3d import load_neu3d


@pytest.fixture
def copy_of(synth_scene_dir, tmp_path):
    def make(fmt: str) -> Path:
        dst = tmp_path / fmt
        shutil.copytree(synth_scene_dir(fmt), dst)
        return dst
    return make


def _raises(fn, path: Path, *words: str) -> DatasetError:
    with pytest.raises(DatasetError) as info:
        fn()
    err = info.value
    assert err.path == path, f"error names {err.path}, expected {path}"
    for w in words:
        assert w in err.problem, f"{w!r} not in {err.problem!r}"
    assert str(path) in str(err)
    return err


def _write_video(path: Path, frames: int, size: tuple[int, int]) -> None:
    W, H = size
    with av.open(str(path), "w") as c:
        s = c.add_stream("libx264", rate=Fraction(30, 1))
        s.width, s.height, s.pix_fmt = W, H, "yuv420p"
        for i in range(frames):
            img = np.full((H, W, 3), 20 * i % 255, np.uint8)
            for p in s.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                c.mux(p)
        for p in s.encode():
            c.mux(p)


# ---------------------------------------------------------------- folders and detection
def test_missing_folder(tmp_path):
    missing = tmp_path / "nope"
    _raises(lambda: load_scene(missing), missing, "missing")
    for loader in (load_dnerf, load_hypernerf, load_neu3d):
        _raises(lambda: loader(missing), missing, "missing")


def test_unknown_folder_lists_expected_files(tmp_path):
    (tmp_path / "readme.txt").write_text("hello")
    err = _raises(lambda: detect_format(tmp_path), tmp_path, "transforms_train.json",
                  "dataset.json", "poses_bounds.npy")
    assert "not a recognised" in err.problem


def test_detects_each_format(synth_scene_dir):
    for fmt in ("dnerf", "hypernerf", "neu3d"):
        assert detect_format(synth_scene_dir(fmt)) == fmt


# ---------------------------------------------------------------- D-NeRF
def test_dnerf_missing_split_file(copy_of):
    root = copy_of("dnerf")
    (root / "transforms_test.json").unlink()
    _raises(lambda: load_scene(root), root / "transforms_test.json", "missing")


def test_dnerf_malformed_json(copy_of):
    root = copy_of("dnerf")
    p = root / "transforms_train.json"
    p.write_text(p.read_text()[:200])
    _raises(lambda: load_scene(root), p, "malformed JSON")


def test_dnerf_bad_matrix_and_missing_key(copy_of):
    root = copy_of("dnerf")
    p = root / "transforms_train.json"
    meta = json.loads(p.read_text())
    meta["frames"][3]["transform_matrix"] = [[1, 0, 0], [0, 1, 0], [0, 0, 1]]
    p.write_text(json.dumps(meta))
    _raises(lambda: load_scene(root), p, "frames[3].transform_matrix", "shape")
    del meta["camera_angle_x"]
    p.write_text(json.dumps(meta))
    _raises(lambda: load_scene(root), p, "camera_angle_x")


def test_dnerf_missing_and_corrupt_image(copy_of):
    root = copy_of("dnerf")
    img = root / "train" / "r_005.png"
    img.unlink()
    _raises(lambda: load_scene(root), img, "missing")
    img.write_bytes(b"not a png at all")
    _raises(lambda: load_scene(root), img, "not a readable image")


def test_dnerf_mismatched_image_size(copy_of):
    root = copy_of("dnerf")
    img = root / "test" / "r_002.png"
    Image.open(img).resize((80, 96)).save(img)
    _raises(lambda: load_scene(root), img, "80x96", "96x96")


# ---------------------------------------------------------------- HyperNeRF
def test_hypernerf_missing_files(copy_of):
    root = copy_of("hypernerf")
    cam = root / "camera" / "right1_000007.json"
    cam.unlink()
    _raises(lambda: load_scene(root), cam, "missing")
    (root / "metadata.json").unlink()
    _raises(lambda: load_scene(root), root / "metadata.json", "missing")


def test_hypernerf_malformed_json_and_bad_fields(copy_of):
    root = copy_of("hypernerf")
    sc = root / "scene.json"
    sc.write_text("{ 'scale': 1.0 ")
    _raises(lambda: load_scene(root), sc, "malformed JSON")
    sc.write_text(json.dumps({"scale": 1.0, "center": [0, 0]}))
    _raises(lambda: load_scene(root), sc, "center", "shape")


def test_hypernerf_distortion_rejected(copy_of):
    root = copy_of("hypernerf")
    p = root / "camera" / "left1_000003.json"
    cam = json.loads(p.read_text())
    cam["radial_distortion"] = [0.01, 0.0, 0.0]
    p.write_text(json.dumps(cam))
    _raises(lambda: load_scene(root), p, "distortion")


def test_hypernerf_image_size_must_match_camera(copy_of):
    root = copy_of("hypernerf")
    img = root / "rgb" / "2x" / "left1_000010.png"
    Image.open(img).resize((60, 48)).save(img)
    _raises(lambda: load_scene(root), img, "60x48", "64x48")


def test_hypernerf_missing_ratio_folder(copy_of):
    root = copy_of("hypernerf")
    _raises(lambda: load_scene(root, resolution_scale=0.125), root / "rgb" / "8x", "1x", "2x", "4x")


def test_hypernerf_unknown_metadata_id(copy_of):
    root = copy_of("hypernerf")
    p = root / "metadata.json"
    meta = json.loads(p.read_text())
    del meta["right1_000004"]
    p.write_text(json.dumps(meta))
    _raises(lambda: load_scene(root), p, "right1_000004")


# ---------------------------------------------------------------- Neu3D
def test_neu3d_poses_bounds_wrong_shape(copy_of, tmp_path):
    root = copy_of("neu3d")
    pb = root / "poses_bounds.npy"
    arr = np.load(pb)
    np.save(pb, arr[:, :15])
    _raises(lambda: load_scene(root, cache_dir=tmp_path / "c"), pb, "(N_cams, 17)", "(5, 15)")
    np.save(pb, arr[:4])
    _raises(lambda: load_scene(root, cache_dir=tmp_path / "c"), pb, "4 rows", "5 cam*.mp4")
    pb.unlink()
    _raises(lambda: load_neu3d(root, cache_dir=tmp_path / "c"), pb, "missing")


def test_neu3d_video_with_too_few_frames(copy_of, tmp_path):
    root = copy_of("neu3d")
    bad = root / "cam02.mp4"
    _write_video(bad, frames=7, size=(96, 64))
    _raises(lambda: load_scene(root, cache_dir=tmp_path / "c"), bad, "7 frames", "12")


def test_neu3d_video_of_other_size(copy_of, tmp_path):
    root = copy_of("neu3d")
    bad = root / "cam03.mp4"
    _write_video(bad, frames=12, size=(64, 48))
    _raises(lambda: load_scene(root, cache_dir=tmp_path / "c"), bad, "64x48", "96x64")


def test_neu3d_unreadable_video(copy_of, tmp_path):
    root = copy_of("neu3d")
    bad = root / "cam04.mp4"
    bad.write_bytes(b"\x00" * 1000)
    _raises(lambda: load_scene(root, cache_dir=tmp_path / "c"), bad, "not a readable video")


def test_neu3d_hwf_must_match_video_aspect(copy_of, tmp_path):
    root = copy_of("neu3d")
    pb = root / "poses_bounds.npy"
    arr = np.load(pb)
    arr[1, 4] = 80.0  # H of cam01 no longer matches the 96x64 video's aspect ratio
    np.save(pb, arr)
    _raises(lambda: load_scene(root, cache_dir=tmp_path / "c"), root / "cam01.mp4", "aspect")
