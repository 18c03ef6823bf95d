"""PLY round trips, RGBA compositing, the bounded image cache, dataset info."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from evalkit.data import DatasetError, load_scene
from evalkit.data.images import ImageCache, read_rgb
from evalkit.data.info import describe_text, summarize
from evalkit.data.ply import read_ply, write_ply


def test_ply_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    xyz = rng.normal(size=(100, 3)).astype(np.float32)
    rgb = rng.uniform(size=(100, 3)).astype(np.float32)
    write_ply(tmp_path / "a.ply", xyz, rgb)
    pc = read_ply(tmp_path / "a.ply")
    np.testing.assert_array_equal(pc.xyz, xyz)
    np.testing.assert_allclose(pc.rgb, np.round(rgb * 255) / 255, atol=1e-7)
    assert pc.source == str(tmp_path / "a.ply")
    write_ply(tmp_path / "b.ply", xyz)
    assert read_ply(tmp_path / "b.ply").rgb is None


def test_ply_errors(tmp_path):
    with pytest.raises(DatasetError, match="missing"):
        read_ply(tmp_path / "none.ply")
    (tmp_path / "bad.ply").write_bytes(b"ply\nformat nonsense\n")
    with pytest.raises(DatasetError, match="not a readable PLY"):
        read_ply(tmp_path / "bad.ply")


def test_rgba_composited_on_background(tmp_path):
    rng = np.random.default_rng(1)
    rgba = rng.integers(0, 256, size=(8, 10, 4), dtype=np.uint8)
    Image.fromarray(rgba, "RGBA").save(tmp_path / "x.png")
    bg = np.array([0.2, 0.5, 1.0], np.float32)
    got = read_rgb(tmp_path / "x.png", bg)
    a = rgba[..., 3:4] / 255.0
    want = rgba[..., :3] / 255.0 * a + bg * (1 - a)
    np.testing.assert_allclose(got, want, atol=1e-6)
    assert got.dtype == np.float32 and got.shape == (8, 10, 3)


def test_image_cache_is_bounded_lru_and_returns_copies():
    calls: list[int] = []

    def loader(k):
        def load():
            calls.append(k)
            return np.full((2, 2, 3), float(k), np.float32)
        return load

    cache = ImageCache(max_items=2)
    a = cache.get(1, loader(1))
    a[:] = -1  # must not corrupt the cached copy
    assert cache.get(1, loader(1))[0, 0, 0] == 1.0
    cache.get(2, loader(2))
    cache.get(1, loader(1))  # 1 is now most recent
    cache.get(3, loader(3))  # evicts 2
    assert len(cache) == 2
    cache.get(1, loader(1))
    cache.get(2, loader(2))
    assert calls == [1, 2, 3, 2]


def test_frames_load_lazily_through_a_small_cache(synth_scene_dir):
    scene = load_scene(synth_scene_dir("dnerf"), image_cache=3)
    cache = scene.extra["image_cache"]
    assert len(cache) == 0  # nothing decoded at load time
    imgs = [f.load() for f in scene.train[:6]]
    assert all(i.shape == (96, 96, 3) for i in imgs)
    assert len(cache) == 3
    np.testing.assert_array_equal(scene.train[5].load(), imgs[5])


def test_info_summary(synth_scene_dir):
    s = summarize(load_scene(synth_scene_dir("hypernerf")))
    assert s["format"] == "hypernerf"
    assert s["splits"]["train"]["frames"] == 24 and s["splits"]["test"]["frames"] == 24
    assert s["resolution"] == (64, 48) and s["time_range"] == (0.0, 1.0)
    assert s["points"] == len(np.load(synth_scene_dir("hypernerf") / "points.npy"))
    text = describe_text(synth_scene_dir("neu3d"))
    assert "neu3d" in text and "48 frames, 4 cameras, 96x64" in text and "12 frames, 1 cameras" in text
