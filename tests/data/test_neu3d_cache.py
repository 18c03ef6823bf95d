"""Neu3D decoded-frame cache: decoded once, outside the dataset, keyed so that a changed video
is decoded again; frames equal a direct PyAV decode; lazy decoding touches only what is used."""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import av
import numpy as np
import pytest

from evalkit.data import DatasetError, load_scene
from evalkit.data.neu3d import DecodedVideo, default_cache_root, prefetch_neu3d


def _listing(root: Path) -> dict[str, int]:
    return {str(p.relative_to(root)): p.stat().st_mtime_ns for p in root.rglob("*")}


def _decode_direct(path: Path) -> np.ndarray:
    with av.open(str(path)) as c:
        return np.stack([f.to_ndarray(format="rgb24") for f in c.decode(c.streams.video[0])])


@pytest.fixture
def neu3d_copy(synth_scene_dir, tmp_path):
    dst = tmp_path / "scene"
    shutil.copytree(synth_scene_dir("neu3d"), dst)
    return dst


def test_decoded_once_outside_dataset_and_equal_to_direct_decode(neu3d_copy, tmp_path, monkeypatch):
    before = _listing(neu3d_copy)
    cache = tmp_path / "cache"
    scene = load_scene(neu3d_copy, cache_dir=cache, progress=False)
    assert _listing(neu3d_copy) == before, "nothing may be written into the dataset folder"
    files = sorted(cache.rglob("*.npy"))
    assert [f.name.split("-")[0] for f in files] == [f"cam{i:02d}" for i in range(5)]
    assert all(Path(scene.extra["cache_dir"]) == f.parent for f in files)
    assert not list(cache.rglob("*.tmp*")), "temporary files must be gone"

    direct = _decode_direct(neu3d_copy / "cam02.mp4")
    frames = [f for f in scene.frames if f.camera_id == "cam02"]
    assert len(frames) == len(direct) == 12
    for i in (0, 5, 11):
        np.testing.assert_array_equal(np.round(frames[i].load() * 255).astype(np.uint8), direct[i])
    img = frames[3].load()
    assert img.dtype == np.float32 and img.shape == (64, 96, 3)

    # A second load reuses the cache: decoding would raise.
    def boom(self, *a, **k):
        raise AssertionError(f"{self.info.path.name} decoded again")
    monkeypatch.setattr(DecodedVideo, "_decode", boom)
    again = load_scene(neu3d_copy, cache_dir=cache, progress=False)
    np.testing.assert_array_equal(again.frames[20].load(), scene.frames[20].load())


def test_changed_video_is_decoded_again(neu3d_copy, tmp_path):
    cache = tmp_path / "cache"
    load_scene(neu3d_copy, cache_dir=cache, progress=False)
    old = {p.name for p in cache.rglob("cam01-*.npy")}
    # Replace cam01 by cam02's video (same size and frame count, other content).
    target = neu3d_copy / "cam01.mp4"
    shutil.copy(neu3d_copy / "cam02.mp4", target)
    os.utime(target, ns=(target.stat().st_atime_ns, target.stat().st_mtime_ns + 10**9))
    scene = load_scene(neu3d_copy, cache_dir=cache, progress=False)
    new = {p.name for p in cache.rglob("cam01-*.npy")}
    assert len(new) == 1 and new != old, "stale cache file must be replaced"
    cam01 = [f for f in scene.frames if f.camera_id == "cam01"][4].load()
    cam02 = [f for f in scene.frames if f.camera_id == "cam02"][4].load()
    np.testing.assert_array_equal(cam01, cam02)


def test_lazy_decoding_and_env_cache_root(neu3d_copy, tmp_path, monkeypatch):
    monkeypatch.setenv("EVALKIT_CACHE", str(tmp_path / "envcache"))
    assert default_cache_root() == tmp_path / "envcache"
    scene = load_scene(neu3d_copy, prefetch=False)
    root = tmp_path / "envcache" / "neu3d"
    assert not list(root.rglob("*.npy")) if root.exists() else True
    scene.test[2].load()
    assert [p.name.split("-")[0] for p in root.rglob("*.npy")] == ["cam00"]
    prefetch_neu3d(scene, show_progress=False)
    assert len(list(root.rglob("*.npy"))) == 5


def test_downscaled_decode(neu3d_copy, tmp_path):
    full = load_scene(neu3d_copy, cache_dir=tmp_path / "c", prefetch=False)
    half = load_scene(neu3d_copy, cache_dir=tmp_path / "c", resolution_scale=0.5, progress=False)
    assert half.resolution == (48, 32)
    np.testing.assert_allclose(half.test[0].camera.K[:2], full.test[0].camera.K[:2] * 0.5)
    img_half, img_full = half.test[0].load(), full.test[0].load()
    assert img_half.shape == (32, 48, 3)
    box = img_full.reshape(32, 2, 48, 2, 3).mean(axis=(1, 3))
    assert np.abs(img_half - box).mean() < 0.02  # a proper resize, not a crop or a shift
    assert len(list((tmp_path / "c").rglob("*.npy"))) == 6  # 5 at half size + cam00 at full size


# ---------------------------------------------------------------- decoding backends
def test_opencv_backend_decodes_the_same_frames_into_its_own_cache(neu3d_copy, tmp_path, monkeypatch):
    pytest.importorskip("cv2", reason="opencv-python-headless is in the test extra")
    cache = tmp_path / "cache"
    monkeypatch.setenv("EVALKIT_VIDEO_BACKEND", "av")
    load_scene(neu3d_copy, cache_dir=cache, progress=False)
    av_files = {p.name for p in cache.rglob("*.npy")}
    monkeypatch.setenv("EVALKIT_VIDEO_BACKEND", "opencv")
    by_cv = load_scene(neu3d_copy, cache_dir=cache, progress=False)
    # the backend is part of the cache key (their YUV->RGB rounding differs): decoded again,
    # the other backend's files replaced
    cv_files = {p.name for p in cache.rglob("*.npy")}
    assert len(cv_files) == 5 and not cv_files & av_files
    assert len(by_cv.frames) == 5 * 12
    direct = _decode_direct(neu3d_copy / "cam01.mp4").astype(np.float32) / 255
    cv_frames = np.stack([f.load() for f in by_cv.frames if f.camera_id == "cam01"])
    diff = np.abs(cv_frames - direct)
    assert diff.mean() < 1.5 / 255 and diff.max() < 12 / 255, (diff.mean() * 255, diff.max() * 255)
    # frames are in order: frame t matches the direct decode of frame t better than of t + 1
    assert np.abs(cv_frames[5] - direct[5]).mean() < np.abs(cv_frames[5] - direct[6]).mean()


def test_opencv_backend_names_an_unreadable_video(neu3d_copy, tmp_path, monkeypatch):
    pytest.importorskip("cv2", reason="opencv-python-headless is in the test extra")
    monkeypatch.setenv("EVALKIT_VIDEO_BACKEND", "opencv")
    bad = neu3d_copy / "cam04.mp4"
    bad.write_bytes(b"\x00" * 1000)
    with pytest.raises(DatasetError, match="not a readable video") as info:
        load_scene(neu3d_copy, cache_dir=tmp_path / "c", progress=False)
    assert info.value.path == bad


def test_backend_choice_errors_are_clear(neu3d_copy, tmp_path, monkeypatch):
    from evalkit.data import video
    monkeypatch.setenv("EVALKIT_VIDEO_BACKEND", "ffmpeg")
    with pytest.raises(DatasetError, match="must be one of av, opencv"):
        load_scene(neu3d_copy, cache_dir=tmp_path / "c", progress=False)
    monkeypatch.delenv("EVALKIT_VIDEO_BACKEND")
    monkeypatch.setattr(video, "_importable", lambda name: False)
    with pytest.raises(DatasetError, match="needs PyAV .* or OpenCV") as info:
        load_scene(neu3d_copy, cache_dir=tmp_path / "c", progress=False)
    assert info.value.path == neu3d_copy / "cam00.mp4"


def test_lazy_decoding_uses_the_backend_its_cache_key_names(neu3d_copy, tmp_path, monkeypatch):
    """Frames decoded long after loading (prefetch=False) come from the backend chosen at load
    time, the one named in the cache key, even if the environment changed since."""
    pytest.importorskip("cv2", reason="opencv-python-headless is in the test extra")
    from evalkit.data import neu3d, video
    used = []
    real = video.iter_frames
    monkeypatch.setattr(neu3d, "iter_frames", lambda path, backend=None, report=None: (used.append(backend), real(path, backend, report))[1])
    monkeypatch.setenv("EVALKIT_VIDEO_BACKEND", "av")
    scene = load_scene(neu3d_copy, cache_dir=tmp_path / "c", progress=False, prefetch=False)
    monkeypatch.setenv("EVALKIT_VIDEO_BACKEND", "opencv")
    scene.frames[0].load()
    assert used == ["av"]
