"""evalkit.bench.adc_gs_anchors: the per-anchor primitive spread and the equal-f_g count."""
from __future__ import annotations

import numpy as np
import torch

from evalkit.bench.adc_gs_anchors import equal_fg_anchors, primitive_spread
from tests.methods.adc_gs_common import random_model


def test_equal_fg_rows_give_coincident_primitives() -> None:
    model = random_model(n=16, seed=3)
    with torch.no_grad():
        model.fg[:5] = model.fg[:5, :1].clone()  # five anchors with all K rows equal
    assert equal_fg_anchors(model) == 5
    s = primitive_spread(model)
    assert s[:5].max() < 1e-5 and s[5:].min() > 1e-2  # equal up to float rounding; apart


def test_spread_matches_a_per_anchor_computation() -> None:
    model = random_model(n=12, seed=4)
    with torch.no_grad():
        prim = model.canonical()
    means, scales = prim.means.numpy(), prim.scales.numpy()
    want = []
    for a in range(means.shape[0]):
        centroid = means[a].mean(axis=0)
        far = max(np.linalg.norm(m - centroid) for m in means[a])
        # torch's median of an even count is the lower middle value
        want.append(far / np.sort(scales[a].max(axis=1))[(len(scales[a]) - 1) // 2])
    np.testing.assert_allclose(primitive_spread(model).numpy(), want, rtol=1e-5)
