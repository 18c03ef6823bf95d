"""``evalkit view RESULT.evk`` (or a record): the decoded model in the browser, through viser.

The bitstream is decoded into a fresh model (as ``evalkit run`` evaluates it), and a viser server
renders it for each connected browser: the frame is drawn on the server with ``Model.render`` (gsplat
on CUDA, the PyTorch reference rasteriser on CPU, fine for small scenes) and sent as the viewer's
background image (PNG, lossless), so what the browser shows is exactly what the metrics score.

Controls: a time slider over [0, 1], play / pause with a speed, and the dataset's test cameras as
presets (when the scene data is at hand; otherwise the browser's own orbit camera only).

Camera convention: viser reports a camera-to-world pose in OpenCV axes (+Z forward, +Y down), the
vertical field of view and the canvas size in pixels; ``camera_from_viser`` turns that into an evalkit
``Camera`` (pinhole, principal point at the image centre, square pixels) and ``viser_pose`` goes back.
``render_frame(model, camera, t)`` is the frame-producing function (tested apart, and timed by
``python -m evalkit.bench.viewer``).
"""
from __future__ import annotations

import math
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from evalkit.data.scene import Camera


class ViewerError(RuntimeError):
    """Bad input for the viewer: the message names the file and the problem."""


@dataclass
class Preset:
    name: str
    camera: Camera
    time: float


# -- cameras ------------------------------------------------------------------------------
def _quat_to_matrix(wxyz: np.ndarray) -> np.ndarray:
    w, x, y, z = np.asarray(wxyz, dtype=np.float64) / np.linalg.norm(wxyz)
    return np.array([[1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)],
                     [2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)],
                     [2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)]])


def _matrix_to_quat(R: np.ndarray) -> np.ndarray:
    """Rotation matrix -> unit quaternion (w, x, y, z), w >= 0 (Shepperd's method)."""
    m = np.asarray(R, dtype=np.float64)
    t = np.trace(m)
    if t > 0:
        s = 2.0 * math.sqrt(t + 1.0)
        q = [0.25 * s, (m[2, 1] - m[1, 2]) / s, (m[0, 2] - m[2, 0]) / s, (m[1, 0] - m[0, 1]) / s]
    else:
        i = int(np.argmax(np.diag(m)))
        j, k = (i + 1) % 3, (i + 2) % 3
        s = 2.0 * math.sqrt(1.0 + m[i, i] - m[j, j] - m[k, k])
        q = [0.0] * 4
        q[0] = (m[k, j] - m[j, k]) / s
        q[1 + i] = 0.25 * s
        q[1 + j] = (m[j, i] + m[i, j]) / s
        q[1 + k] = (m[k, i] + m[i, k]) / s
    q = np.array(q)
    return (q if q[0] >= 0 else -q) / np.linalg.norm(q)


def camera_from_viser(wxyz: Any, position: Any, fov_y: float, width: int, height: int) -> Camera:
    """An evalkit camera from a viser camera (camera-to-world quaternion and position, OpenCV axes,
    vertical field of view in radians, image size in pixels)."""
    c2w = np.eye(4)
    c2w[:3, :3] = _quat_to_matrix(np.asarray(wxyz))
    c2w[:3, 3] = np.asarray(position, dtype=np.float64)
    f = 0.5 * height / math.tan(0.5 * fov_y)
    K = np.array([[f, 0.0, 0.5 * width], [0.0, f, 0.5 * height], [0.0, 0.0, 1.0]])
    return Camera(K=K, w2c=np.linalg.inv(c2w), width=int(width), height=int(height))


def viser_pose(camera: Camera) -> tuple[np.ndarray, np.ndarray, float]:
    """(wxyz, position, vertical fov) of an evalkit camera, for viser (exact for a centred principal
    point and square pixels; otherwise the nearest such camera)."""
    c2w = camera.c2w
    fov_y = 2.0 * math.atan(0.5 * camera.height / float(camera.K[1, 1]))
    return _matrix_to_quat(c2w[:3, :3]), c2w[:3, 3].copy(), fov_y


def fit_size(width: int, height: int, max_side: int) -> tuple[int, int]:
    """The size to render at: the canvas size, shrunk to ``max_side`` on its longer side."""
    s = min(1.0, max_side / max(width, height, 1))
    return max(1, round(width * s)), max(1, round(height * s))


# -- frames -------------------------------------------------------------------------------
def render_frame(model: Any, camera: Camera, t: float) -> np.ndarray:
    """The model's render at time ``t`` as the 8-bit image the metrics score, (H, W, 3) uint8."""
    from evalkit.views import image_u8

    with torch.no_grad():
        return image_u8(model.render(camera, float(t)))


# -- loading ------------------------------------------------------------------------------
def load_model(path: Path, device: torch.device) -> tuple[Any, Path, Path | None]:
    """Decode a .evk (or the .evk beside a record .json); returns (model, bitstream, record or None)."""
    from evalkit.codec.container import Bitstream, BitstreamError
    from evalkit.methods.base import ContractError
    from evalkit.methods.registry import UnknownMethod, get_method

    path = Path(path)
    record = path if path.suffix == ".json" else (path.with_suffix(".json") if path.with_suffix(".json").is_file()
                                                  else None)
    bits_path = path.with_suffix(".evk")
    if not bits_path.is_file():
        raise ViewerError(f"{bits_path}: no bitstream to view (records kept without their .evk cannot be viewed)")
    try:
        bits = Bitstream.read(bits_path)
        model = get_method(bits.header.get("method", "?")).decode(bits, device, source=str(bits_path))
    except (BitstreamError, UnknownMethod, ContractError) as exc:
        raise ViewerError(str(exc)) from None
    return model, bits_path, record


def dataset_presets(record: Path | None, data_root: Path | None) -> tuple[list[Preset], str | None]:
    """The dataset's test cameras of the record's scene, or ([], why not)."""
    if record is None:
        return [], "no record beside the bitstream: no dataset cameras"
    from evalkit.results import RecordError, read_record
    from evalkit.specs import SpecError
    from evalkit.views import ViewsError, record_scene

    try:
        scene = record_scene(read_record(record), data_root)
    except (RecordError, ViewsError, SpecError) as exc:
        return [], str(exc)
    return [Preset(f.image_name, f.camera, float(f.time)) for f in scene.test], None


# -- the server ---------------------------------------------------------------------------
class ModelViewer:
    """A viser server showing ``model``: time slider, play / pause, presets. ``frame_for(camera, t)``
    is what each client is sent (``render_frame`` at the camera, shrunk to ``max_side``)."""

    def __init__(self, model: Any, presets: list[Preset] | None = None, *, host: str = "127.0.0.1",
                 port: int = 8080, max_side: int = 800, title: str = "evalkit") -> None:
        import viser

        self.model = model
        self.presets = list(presets or [])
        self.max_side = max_side
        self._lock = threading.Lock()  # one render at a time (the model is not thread-safe)
        self._stop = threading.Event()
        self.frames_sent = 0
        self.server = viser.ViserServer(host=host, port=port, label=title, verbose=False)
        gui = self.server.gui
        self.time = gui.add_slider("time", min=0.0, max=1.0, step=0.001,
                                   initial_value=self.presets[0].time if self.presets else 0.0)
        self.playing = gui.add_checkbox("play", initial_value=False)
        self.speed = gui.add_number("speed (time / s)", initial_value=0.2, min=0.0, max=10.0, step=0.05)
        self.preset = gui.add_dropdown("test camera", [p.name for p in self.presets] or ["(none)"])
        self.go = gui.add_button("go to test camera", disabled=not self.presets)
        self.info = gui.add_markdown("")
        self.time.on_update(lambda _: self._refresh_all())
        self.go.on_click(lambda ev: self._apply_preset(ev.client))
        self.server.on_client_connect(self._connected)
        self._player = threading.Thread(target=self._play_loop, daemon=True)
        self._player.start()

    @property
    def port(self) -> int:
        return self.server.get_port()

    # frames
    def frame_for(self, camera: Camera, t: float) -> np.ndarray:
        with self._lock:
            return render_frame(self.model, camera, t)

    def client_camera(self, client) -> Camera:
        cam = client.camera
        w, h = fit_size(cam.image_width, cam.image_height, self.max_side)
        return camera_from_viser(cam.wxyz, cam.position, cam.fov, w, h)

    def _send(self, client) -> None:
        t0 = time.perf_counter()
        img = self.frame_for(self.client_camera(client), self.time.value)
        client.scene.set_background_image(img, format="png")
        self.frames_sent += 1
        self.info.content = f"{img.shape[1]}x{img.shape[0]}, t = {self.time.value:.3f}, " \
                            f"{1000 * (time.perf_counter() - t0):.0f} ms / frame"

    def _refresh_all(self) -> None:
        for client in self.server.get_clients().values():
            self._send(client)

    # controls
    def _connected(self, client) -> None:
        client.camera.on_update(lambda _: self._send(client))
        if self.presets:
            self._apply_preset(client)
        else:
            self._send(client)

    def _apply_preset(self, client) -> None:
        if client is None or not self.presets:
            return
        p = next((p for p in self.presets if p.name == self.preset.value), self.presets[0])
        wxyz, position, fov = viser_pose(p.camera)
        with client.atomic():
            client.camera.fov = fov
            client.camera.position = position
            client.camera.wxyz = wxyz
        self.time.value = p.time

    def _play_loop(self) -> None:
        last = time.perf_counter()
        while not self._stop.wait(0.03):
            now = time.perf_counter()
            if self.playing.value and self.server.get_clients():
                self.time.value = (self.time.value + (now - last) * self.speed.value) % 1.0
            last = now

    def stop(self) -> None:
        self._stop.set()
        self.server.stop()


def serve(path: Path, *, data_root: Path | None = None, device: torch.device | None = None,
          host: str = "127.0.0.1", port: int = 8080, max_side: int = 800,
          on_ready: Callable[[ModelViewer, str | None], None] | None = None) -> ModelViewer:
    """Decode ``path`` and start the viewer (returns at once; the server runs in its threads)."""
    device = device or torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model, bits_path, record = load_model(path, device)
    presets, why = dataset_presets(record, data_root)
    viewer = ModelViewer(model, presets, host=host, port=port, max_side=max_side, title=bits_path.name)
    if on_ready is not None:
        on_ready(viewer, why)
    return viewer


__all__ = ["ModelViewer", "Preset", "ViewerError", "camera_from_viser", "fit_size", "load_model", "render_frame",
           "dataset_presets", "serve", "viser_pose"]
