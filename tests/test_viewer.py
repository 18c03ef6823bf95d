"""`evalkit view`: the viser viewer of a decoded model, started headless on localhost and driven by a
websocket client speaking viser's wire protocol (as the browser does): it sends a camera, gets the
rendered frame, moves the time slider, gets the next frame; the frames must be the model's render()."""
from __future__ import annotations

import io
import time

import numpy as np
import pytest
import torch
from PIL import Image

from evalkit.codec.container import Bitstream
from evalkit.data.detect import load_scene
from evalkit.methods.fourdgs import FourDGS, codec
from evalkit.models.fourdgs.config import FourDGSConfig
from evalkit.models.fourdgs.trainer import build_model
from evalkit.viewer import camera_from_viser, fit_size, render_frame, serve, viser_pose
from tests.test_runner import toy_bench  # noqa: F401  (fixture)

pytestmark = pytest.mark.filterwarnings("ignore:Queued a:UserWarning")  # frames queued as the test client leaves
TINY = dict(feature_dim=8, resolution=[16, 16, 16, 8], multires=[1, 2], net_width=32)


@pytest.fixture(scope="module")
def model_file(synth_scene_dir, tmp_path_factory):
    """An untrained 4DGS model of the tiny synthetic scene, its deformation field perturbed so the
    render changes with time, written as a bitstream."""
    scene = load_scene(synth_scene_dir("dnerf"), resolution_scale=0.5)
    cfg = FourDGSConfig(**TINY)
    torch.manual_seed(0)
    model = build_model(scene, cfg, torch.device("cpu"))
    with torch.no_grad():
        for p in model.deformation.parameters():
            p.add_(0.3 * torch.randn_like(p))
    path = tmp_path_factory.mktemp("viewer") / "m.evk"
    codec.encode(model, cfg).write(path)
    return path, scene


def test_camera_round_trip_through_viser_pose() -> None:
    rng = np.random.default_rng(1)
    for _ in range(20):
        q = rng.normal(size=4)
        w2c = np.eye(4)
        from evalkit.viewer import _quat_to_matrix

        w2c[:3, :3] = _quat_to_matrix(q)
        w2c[:3, 3] = rng.normal(size=3)
        from evalkit.data.scene import Camera

        cam = Camera(K=np.array([[70.0, 0, 40], [0, 70.0, 30], [0, 0, 1]]), w2c=w2c, width=80, height=60)
        back = camera_from_viser(*viser_pose(cam), cam.width, cam.height)
        np.testing.assert_allclose(back.w2c, cam.w2c, atol=1e-12)
        np.testing.assert_allclose(back.K, cam.K, atol=1e-12)
    assert fit_size(1600, 900, 800) == (800, 450) and fit_size(300, 200, 800) == (300, 200)


# -- a minimal viser client (the wire format of viser.infra._infra._message_producer) -------------
def _decode(raw: bytes) -> list[dict]:
    import msgspec
    import zstandard

    n_inner, n_comp = int.from_bytes(raw[:8], "little"), int.from_bytes(raw[8:16], "little")
    payload = msgspec.msgpack.decode(zstandard.ZstdDecompressor().decompress(raw[16:16 + n_comp],
                                                                           max_output_size=n_inner))
    off, bufs = 16 + n_comp, []
    for n in payload["binaryBufferLengths"]:
        off += (8 - off % 8) % 8
        bufs.append(raw[off:off + n])
        off += n

    def resolve(v):
        if isinstance(v, dict) and "__binary_index" in v:
            return bufs[v["__binary_index"]]
        return v

    return [{k: resolve(v) for k, v in m.items()} for m in payload["messages"]]


def _find_uuid(messages: list[dict], label: str) -> str | None:
    for m in messages:
        if "uuid" in m and label in repr(m.get("props", m)):
            if (m.get("props") or {}).get("label") == label:
                return m["uuid"]
    return None


class Client:
    def __init__(self, port: int) -> None:
        import viser
        from websockets.sync.client import connect

        self.ws = connect(f"ws://127.0.0.1:{port}", subprotocols=[f"viser-v{viser.__version__}"], max_size=None)
        self.seen: list[dict] = []

    def send(self, message: dict) -> None:
        import msgspec

        self.ws.send(msgspec.msgpack.encode(message))

    def next_frame(self, timeout: float = 60.0) -> np.ndarray:
        end = time.time() + timeout
        while time.time() < end:
            msgs = _decode(self.ws.recv(timeout=max(end - time.time(), 0.1)))
            self.seen += msgs
            for m in msgs:
                if m["type"] == "BackgroundImageMessage" and m.get("rgb_data"):
                    assert m["format"] == "png"
                    return np.asarray(Image.open(io.BytesIO(bytes(m["rgb_data"]))).convert("RGB"))
        raise TimeoutError("no frame from the viewer")


def test_viewer_serves_the_models_render_at_the_requested_times(model_file) -> None:
    path, scene = model_file
    cam = scene.test[0].camera
    viewer = serve(path, device=torch.device("cpu"), port=0)
    try:
        assert viewer.presets == []  # no record beside the bitstream: the browser's own camera only
        client = Client(viewer.port)
        wxyz, position, fov = viser_pose(cam)
        floats = lambda v: [float(x) for x in v]  # noqa: E731
        client.send({"type": "ViewerCameraMessage", "wxyz": floats(wxyz), "position": floats(position),
                     "fov": float(fov), "near": 0.01, "far": 100.0, "image_height": cam.height,
                     "image_width": cam.width, "look_at": floats(position + viewer_dir(wxyz)),
                     "up_direction": [0.0, -1.0, 0.0]})
        first = client.next_frame()  # at the slider's initial time, 0
        slider = _find_uuid(client.seen, "time")
        assert slider is not None
        client.send({"type": "GuiUpdateMessage", "uuid": slider, "updates": {"value": 0.7}})
        second = client.next_frame()
        while np.array_equal(second, first):  # frames at t = 0 still queued (connect, camera) come first
            second = client.next_frame()
        client.ws.close()
    finally:
        viewer.stop()

    decoded = FourDGS().decode(Bitstream.read(path), torch.device("cpu"))
    seen_cam = camera_from_viser(wxyz, position, fov, cam.width, cam.height)
    np.testing.assert_allclose(seen_cam.w2c, cam.w2c, atol=1e-9)
    assert first.shape == (cam.height, cam.width, 3)
    assert np.array_equal(first, render_frame(decoded, seen_cam, 0.0))
    assert np.array_equal(second, render_frame(decoded, seen_cam, 0.7))
    assert np.abs(first.astype(int) - second.astype(int)).max() > 10  # time moved the scene
    # and it is the test view: within one level of the render at the dataset's own camera
    direct = render_frame(decoded, cam, 0.7)
    assert np.abs(second.astype(int) - direct.astype(int)).max() <= 1


def viewer_dir(wxyz) -> np.ndarray:
    from evalkit.viewer import _quat_to_matrix

    return _quat_to_matrix(np.asarray(wxyz))[:, 2]  # +Z forward


def test_viewer_of_a_record_without_bitstream_says_so(tmp_path) -> None:
    from evalkit.viewer import ViewerError

    (tmp_path / "high.json").write_text("{}")
    with pytest.raises(ViewerError, match="no bitstream"):
        serve(tmp_path / "high.json", port=0)


def test_bench_prints_frame_time(model_file, capsys) -> None:
    from evalkit.bench.viewer import main

    path, _ = model_file
    main([str(path), "--device", "cpu", "--frames", "2", "--warmup", "1", "--max-side", "32"])
    out = capsys.readouterr().out
    assert "device=cpu" in out and "resolution=32x32" in out and "frame_ms=" in out and "cameras=orbit" in out


def test_presets_are_the_record_scenes_test_cameras(toy_bench) -> None:
    from evalkit.results import record_path
    from evalkit.runner import run
    from evalkit.viewer import dataset_presets
    from tests.test_runner import SCENES

    assert not run(["toy"], "toy", scenes=[SCENES[0]], rates=["high"], data_root=toy_bench.data_root,
                   opts=toy_bench.opts()).failed
    rec = record_path(toy_bench.out, "toy", SCENES[0], "toy", "high")
    presets, why = dataset_presets(rec, toy_bench.data_root)
    scene = load_scene(toy_bench.data_root / "toyset" / SCENES[0])
    assert why is None and [p.name for p in presets] == [f.image_name for f in scene.test]
    assert all(np.array_equal(p.camera.w2c, f.camera.w2c) and p.time == f.time for p, f in zip(presets, scene.test))
    presets, why = dataset_presets(rec, toy_bench.data_root / "nowhere")
    assert presets == [] and "scene folder not found" in why


def test_frame_bytes_are_the_metrics_quantisation():
    """The viewer's 8-bit frame (quantised where the render lives) holds the same levels the metrics
    score: round half up of the clamped value, checked at every level, every half-level and out of range."""
    from evalkit.metrics.image import to_uint8_quantised
    from evalkit.views import image_u8

    k = torch.arange(256, dtype=torch.float64)
    x = torch.cat([k / 255, (k + 0.5) / 255, (k + 0.4999) / 255, torch.tensor([-0.3, 1.7]),
                   torch.rand(3000, dtype=torch.float64)]).float()
    expected = (to_uint8_quantised(x.double()) * 255).round().to(torch.uint8).numpy()
    got = image_u8(x)
    assert got.dtype == np.uint8 and (got == expected).all()
    assert got[:256].tolist() == list(range(256))
