"""gsplat's DefaultStrategy (densification) driven by the torch backend's info dict, on CPU."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from evalkit.render import rasterize
from evalkit.render.synthetic import look_at_w2c

strategy_mod = pytest.importorskip(
    "gsplat.strategy", reason="gsplat is not installed (pip install gsplat==1.5.3); "
    "its pure-python strategy module is what this test exercises")
DefaultStrategy = strategy_mod.DefaultStrategy

W = H = 32
K = np.array([[30.0, 0, 16.0], [0, 30.0, 16.0], [0, 0, 1.0]])


def _params(n_small: int, n_large: int) -> torch.nn.ParameterDict:
    g = torch.Generator().manual_seed(0)
    n = n_small + n_large
    log_scales = torch.cat([torch.full((n_small, 3), np.log(0.005)), torch.full((n_large, 3), np.log(0.08))])
    return torch.nn.ParameterDict({
        "means": torch.nn.Parameter((torch.rand(n, 3, generator=g) - 0.5) * 0.8),
        "scales": torch.nn.Parameter(log_scales),
        "quats": torch.nn.Parameter(torch.randn(n, 4, generator=g)),
        "opacities": torch.nn.Parameter(torch.logit(torch.full((n,), 0.6))),
        "colors": torch.nn.Parameter(torch.rand(n, 3, generator=g)),
    })


@pytest.mark.parametrize("packed", [False, True])
def test_default_strategy_duplicates_and_splits_with_torch_backend(packed):
    params = _params(n_small=6, n_large=6)
    optimizers = {k: torch.optim.Adam([p], lr=1e-3) for k, p in params.items()}
    strategy = DefaultStrategy(refine_start_iter=2, refine_every=3, refine_stop_iter=100,
                               reset_every=1000, grow_grad2d=1e-9, prune_opa=0.001,
                               refine_scale2d_stop_iter=100, grow_scale2d=0.5, verbose=False)
    strategy.check_sanity(params, optimizers)
    state = strategy.initialize_state(scene_scale=1.0)
    target = torch.rand(H, W, 3, generator=torch.Generator().manual_seed(1))
    viewmat = look_at_w2c(np.array([0.2, 0.1, -2.5]))
    counts = []
    for step in range(8):  # refinement at steps 3 and 6; step 7 refills the running state
        out = rasterize(params["means"], params["quats"], torch.exp(params["scales"]),
                        torch.sigmoid(params["opacities"]), params["colors"], viewmat, K, W, H,
                        packed=packed, backend="torch")
        assert out.backend == "torch"
        strategy.step_pre_backward(params, optimizers, state, step, out.info)
        ((out.image - target) ** 2).mean().backward()
        assert out.info["means2d"].grad is not None and out.info["means2d"].grad.abs().sum() > 0
        n_before = len(params["means"])
        strategy.step_post_backward(params, optimizers, state, step, out.info, packed=packed)
        counts.append((n_before, len(params["means"])))
        for opt in optimizers.values():
            opt.step()
            opt.zero_grad(set_to_none=True)
    # Refinement at steps 3 and 6: the 6 small ones are duplicated (+6), the 6 large are split
    # (each replaced by two, +6) -- provided every Gaussian was seen, which the state records.
    assert counts[3] == (12, 24), counts
    assert counts[6][1] > counts[6][0], counts
    assert all(b == a for i, (a, b) in enumerate(counts) if i not in (3, 6))
    assert state["radii"] is not None and state["radii"].max() > 0  # radii path used as well
