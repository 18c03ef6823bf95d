"""evalkit.train.densify refines as gsplat's DefaultStrategy does, on its public operations."""
from __future__ import annotations

import pytest
import torch
from gsplat.strategy import DefaultStrategy

from evalkit.train.densify import is_refine_step, refine
from evalkit.train.densify_stats import accumulate_stats


def _gaussians(n: int, seed: int) -> tuple[dict, dict]:
    g = torch.Generator().manual_seed(seed)
    params = torch.nn.ParameterDict({
        "means": torch.randn(n, 3, generator=g), "scales": torch.randn(n, 3, generator=g) - 3.0,
        "quats": torch.randn(n, 4, generator=g), "opacities": torch.randn(n, generator=g) * 4.0,
        "sh0": torch.randn(n, 1, 3, generator=g), "shN": torch.randn(n, 15, 3, generator=g)})
    opts = {k: torch.optim.Adam([{"params": [p], "lr": 1e-3, "name": k}]) for k, p in params.items()}
    return params, opts


@pytest.mark.parametrize("step", [300, 3100])  # before and after the first opacity reset (3000)
def test_refine_equals_gsplats_step_post_backward(step: int) -> None:
    n = 400
    strategy = DefaultStrategy(refine_start_iter=100, refine_every=100, reset_every=3000, grow_grad2d=2e-4,
                               prune_opa=0.05, prune_scale3d=0.05, refine_scale2d_stop_iter=5000, verbose=False)
    assert is_refine_step(strategy, step) and not is_refine_step(strategy, step + 1)
    g = torch.Generator().manual_seed(1)
    grad = torch.randn(1, n, 2, generator=g) * 1e-3
    radii = torch.randint(0, 30, (1, n, 2), generator=g).to(torch.int32)
    out = []
    for ours in (True, False):
        params, opts = _gaussians(n, 0)
        state = strategy.initialize_state(scene_scale=1.0)
        means2d = torch.zeros(1, n, 2, requires_grad=True)
        means2d.grad = grad.clone()
        info = {"width": 64, "height": 48, "n_cameras": 1, "radii": radii, "gaussian_ids": None, "means2d": means2d}
        torch.manual_seed(7)  # split samples new positions
        if ours:
            accumulate_stats(strategy, params, state, [info])
            assert refine(strategy, params, opts, state, step)
        else:
            strategy.step_post_backward(params, opts, state, step, info, packed=False)
        out.append((params, state))
    (ours_p, ours_s), (theirs_p, theirs_s) = out
    assert len(ours_p["means"]) != n  # something grew or went
    for k in ours_p:
        assert torch.allclose(ours_p[k], theirs_p[k], atol=1e-6), k
    for k in ("grad2d", "count", "radii"):
        assert torch.equal(ours_s[k], theirs_s[k]), k
