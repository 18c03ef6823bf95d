"""measure_fps: call pattern, labels and consistency of the numbers (timings not asserted tightly)."""
from __future__ import annotations

import time

import pytest
import torch

from evalkit.metrics.fps import measure_fps


class CountingRenderer:
    def __init__(self, device: str, sleep_s: float = 0.0) -> None:
        self.calls: list[int] = []
        self.device = device
        self.sleep_s = sleep_s

    def __call__(self, i: int) -> torch.Tensor:
        self.calls.append(i)
        if self.sleep_s:
            time.sleep(self.sleep_s)
        return torch.full((24, 32, 3), float(i), device=self.device)


def test_cpu_fps_is_labelled_and_consistent():
    render = CountingRenderer("cpu", sleep_s=0.002)
    result = measure_fps(render, num_views=4, warmup=3, repeats=2, device="cpu", resolution=(32, 24))
    assert render.calls == [0, 1, 2] + [0, 1, 2, 3] * 2  # warm-up, then every view per repeat
    assert result.frames == 8 and result.repeats == 2 and result.warmup == 3
    assert result.device_kind == "cpu"
    assert result.label == "CPU (not comparable to GPU FPS)"
    assert result.device_name
    assert result.resolution == (32, 24)
    assert result.ms_per_frame >= 2.0  # each frame sleeps 2 ms
    assert result.fps == pytest.approx(1000.0 / result.ms_per_frame)
    assert len(result.ms_per_frame_by_repeat) == 2
    lo, hi = result.ms_per_frame_spread
    assert lo <= result.ms_per_frame <= hi


def test_rejects_bad_render_fn_and_arguments():
    with pytest.raises(TypeError, match="torch.Tensor"):
        measure_fps(lambda i: [i], num_views=1, warmup=1, repeats=1, device="cpu", resolution=(1, 1))
    with pytest.raises(ValueError, match="warmup"):
        measure_fps(CountingRenderer("cpu"), num_views=1, warmup=0, repeats=1, device="cpu", resolution=(1, 1))
    with pytest.raises(ValueError, match="num_views"):
        measure_fps(CountingRenderer("cpu"), num_views=0, warmup=1, repeats=1, device="cpu", resolution=(1, 1))


@pytest.mark.gpu
def test_cuda_fps_uses_events_and_names_the_gpu():
    a = torch.randn(2048, 2048, device="cuda")
    result = measure_fps(lambda i: a @ a, num_views=5, warmup=3, repeats=3, device="cuda", resolution=(2048, 2048))
    assert result.device_kind == "cuda"
    assert result.label == f"GPU {torch.cuda.get_device_name()}"
    assert result.ms_per_frame > 0 and result.fps == pytest.approx(1000.0 / result.ms_per_frame)
    with pytest.raises(ValueError, match="device-to-host"):
        measure_fps(lambda i: (a @ a).cpu(), num_views=1, warmup=1, repeats=1, device="cuda", resolution=(1, 1))
