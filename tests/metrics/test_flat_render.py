"""The check that spots a model drawing nothing (``evalkit.metrics.flat_render``)."""
from __future__ import annotations

import pytest
import torch

from evalkit.metrics.flat_render import flat_colour, render_check


def _flat(rgb, h=6, w=5) -> torch.Tensor:
    return torch.tensor(rgb, dtype=torch.float32).expand(h, w, 3).clone()


def test_flat_colour_is_the_common_8bit_colour_of_all_frames() -> None:
    frames = [_flat([1.0, 1.0, 1.0]), _flat([1.0, 1.0, 1.0])]
    frames[1][2, 3] = torch.tensor([0.999, 1.0, 1.0])  # within 8-bit rounding: still flat
    assert flat_colour(frames) == [1.0, 1.0, 1.0]
    assert flat_colour([_flat([0.201, 0.4, 0.6])]) == pytest.approx([51 / 255, 102 / 255, 153 / 255], abs=1e-6)


def test_one_pixel_one_level_off_or_a_different_frame_is_structure() -> None:
    img = _flat([0.0, 0.0, 0.0])
    img[0, 0, 1] = 1.0 / 255
    assert flat_colour([img]) is None
    assert flat_colour([_flat([0.0, 0.0, 0.0]), _flat([0.5, 0.5, 0.5])]) is None
    assert flat_colour([]) is None


def test_render_check_says_whether_the_flat_colour_is_the_background() -> None:
    white = [_flat([1.0, 1.0, 1.0])]
    assert render_check(white, [1.0, 1.0, 1.0])["empty"] is True
    assert render_check(white, [0.0, 0.0, 0.0])["empty"] is False
    grey = render_check([_flat([0.5, 0.5, 0.5])], [1.0, 1.0, 1.0])
    assert grey["empty"] is False and grey["flat_colour"] == [round(128 / 255, 6)] * 3
    textured = _flat([1.0, 1.0, 1.0])
    textured[1, 1] = 0.0
    assert render_check([textured], [1.0, 1.0, 1.0]) is None
