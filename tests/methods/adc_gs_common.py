"""Small ADC-GS models for the CPU tests (no training: random features and networks)."""
from __future__ import annotations

import numpy as np
import torch

from evalkit.data.scene import Camera
from evalkit.methods.adc_gs.config import ADCConfig
from evalkit.methods.adc_gs.model import ADCModel
from evalkit.render.synthetic import look_at_w2c


def small_config(**kw) -> ADCConfig:
    # exact anchor counts in the graphed units: the unit tests compare them with the model's own
    # computation; the padded units (graph_capacity_growth) have tests of their own
    base = dict(iterations=100, deform_from=10, quant_from=20, rate_from=30, refine_from=5, refine_until=80,
                refine_interval=10, time_rows=4, graph_capacity_growth=0.0)
    base.update(kw)
    return ADCConfig(**base)


def random_model(n: int = 64, seed: int = 0, cfg: ADCConfig | None = None, spread: float = 1.0) -> ADCModel:
    """Anchors on a 0.001 grid (some negative), features of realistic magnitude, random networks."""
    g = torch.Generator().manual_seed(seed)
    cfg = cfg or small_config()
    xyz = torch.round((torch.rand(n, 3, generator=g) - 0.5) * spread / cfg.snap_grid) * cfg.snap_grid
    color = torch.rand(n, 3, generator=g)
    sigma = torch.full((n, 6), -3.0) + 0.1 * torch.randn(n, 6, generator=g)
    torch.manual_seed(seed)
    model = ADCModel(cfg, xyz, color, sigma, cfg.rows_for(10), with_mem=True)
    with torch.no_grad():
        model.fv.copy_(0.5 * torch.randn(n, cfg.fv_dim, generator=g))
        model.fg.copy_(0.3 * torch.randn(n, cfg.k, cfg.fg_dim, generator=g))
        for p in model.deform.parameters():  # non-zero deformation heads
            p.add_(0.01 * torch.randn(p.shape, generator=g))
        model.deform.table.weight.copy_(torch.randn(model.deform.table.weight.shape, generator=g))
    return model


def look_at_camera(eye, target=(0.0, 0.0, 0.0), size: int = 32, focal: float = 40.0) -> Camera:
    K = np.array([[focal, 0, size / 2], [0, focal, size / 2], [0, 0, 1.0]])
    return Camera(K=K, w2c=look_at_w2c(np.asarray(eye, float), np.asarray(target, float), up=np.array([0.0, 0.0, 1.0])),
                  width=size, height=size)
