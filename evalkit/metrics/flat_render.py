"""Spot a model that draws nothing: every test render one flat colour, usually the background.

A collapsed training (all Gaussians pruned or transparent) still yields finite PSNR / SSIM, the
scores of an empty image, which read like a weak model. The check runs on the 8-bit renders the
metrics see, so a colour within rounding of flat counts as flat.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from evalkit.metrics.image import to_uint8_quantised
from evalkit.results import DRAWS_NOTHING


def flat_colour(renders: Sequence[torch.Tensor]) -> list[float] | None:
    """The one colour (RGB in [0, 1], as k/255) every pixel of every render has after 8-bit
    quantisation, or None when any two pixels differ (or there are no renders)."""
    colour: torch.Tensor | None = None
    for img in renders:
        q = to_uint8_quantised(img.detach().float()).reshape(-1, 3)
        first = q[0] if colour is None else colour
        if not bool((q == first).all()):
            return None
        colour = first
    return None if colour is None else [float(c) for c in colour.cpu()]


def render_check(renders: Sequence[torch.Tensor], background: Sequence[float] | np.ndarray) -> dict | None:
    """None for renders with any structure; else ``{"flat_colour", "background", "empty"}``, where
    ``empty`` says the flat colour is the scene's background (within one 8-bit level)."""
    colour = flat_colour(renders)
    if colour is None:
        return None
    bg = [float(c) for c in np.asarray(background, dtype=np.float64).reshape(-1)[:3]]
    empty = all(abs(c - b) <= 1.0 / 255 + 1e-9 for c, b in zip(colour, bg))
    return {"flat_colour": [round(c, 6) for c in colour], "background": [round(b, 6) for b in bg], "empty": empty}


def render_check_note(check: dict) -> str:
    rgb = ", ".join(f"{c:.3f}" for c in check["flat_colour"])
    if check["empty"]:
        return f"the model {DRAWS_NOTHING}; the background is ({rgb}) and the metrics are those of an empty image"
    return f"every test render is one flat colour ({rgb}): the model draws no structure"
