"""Write the tiny committed bitstreams the fuzz test mutates (``tests/codec/data/tiny-*.evk``):
one 4DGS, one 4DGS-CC and one ADC-GS file of a few KB, made without training (random parameters of toy
configurations), so the files exercise every component and header key of each format.

    PYTHONPATH=. python tests/codec/make_fuzz_bitstreams.py
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from evalkit.data.scene import PointCloud
from evalkit.methods.fourdgs import codec as fourdgs_codec
from evalkit.models.fourdgs.config import FourDGSConfig
from evalkit.models.fourdgs.deformation import DeformationField
from evalkit.models.fourdgs.model import FourDGSModel, init_gaussians
from evalkit.methods.fourdgs_cc import codec as cc_codec
from evalkit.methods.fourdgs_cc.coded import finalize
from evalkit.methods.fourdgs_cc.config import CCConfig
from evalkit.methods.fourdgs_cc.model import FourDGSCCModel

from evalkit.methods.adc_gs import ADCGSTrained
from evalkit.methods.adc_gs.config import ADCConfig
from evalkit.methods.adc_gs.model import ADCModel

HERE = Path(__file__).resolve().parent / "data"
TINY = dict(sh_degree=1, feature_dim=2, resolution=[4, 4, 4, 2], multires=[1], net_width=4)


def base_model(seed: int, n: int = 24) -> tuple[FourDGSModel, FourDGSConfig]:
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    cfg = FourDGSConfig.from_dict(TINY)
    pts = PointCloud(xyz=rng.uniform(-1, 1, (n, 3)).astype(np.float32), rgb=rng.uniform(0, 1, (n, 3)).astype(np.float32))
    g = init_gaussians(pts, cfg.sh_degree, torch.device("cpu"))
    with torch.no_grad():
        for p in g.values():
            p.add_(0.1 * torch.randn_like(p))
    deform = DeformationField(cfg.deformation_config(), torch.tensor([[-1.0] * 3, [1.0] * 3]))
    with torch.no_grad():
        for p in deform.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return FourDGSModel(g, deform, cfg.sh_degree, torch.ones(3), cfg.near_plane), cfg


def main() -> None:
    HERE.mkdir(exist_ok=True)
    model, cfg = base_model(0)
    n = fourdgs_codec.encode(model, cfg).write(HERE / "tiny-4dgs.evk")
    print("tiny-4dgs.evk", n, "bytes")
    base, cfg = base_model(1)
    cc = CCConfig(codebook_size=8, vqcc_hidden=4, vqcc_latent=2, nvcc_hidden=4)
    ccm = FourDGSCCModel(base, cc)
    coded = finalize(ccm, cfg, cc)
    n = cc_codec.encode(coded, ccm.nvcc, ccm.vqcc).write(HERE / "tiny-4dgs-cc.evk")
    print("tiny-4dgs-cc.evk", n, "bytes")
    adc = adc_model(2)
    n = ADCGSTrained(adc, adc.deform.table.weight.shape[0], [1.0, 1.0, 1.0], {}, None).encode().write(HERE / "tiny-adc-gs.evk")
    print("tiny-adc-gs.evk", n, "bytes")


def adc_model(seed: int, n: int = 12):
    torch.manual_seed(seed)
    cfg = ADCConfig(k=2, fv_dim=4, fg_dim=4, fg_chunks=2, hyper_dim=2, entropy_width=4, theta_width=4,
                    deform_width=4, time_dim=4, time_rows=2, pe_frequencies=2)
    xyz = torch.round(torch.rand(n, 3) * 400 - 200) * cfg.snap_grid
    model = ADCModel(cfg, xyz, torch.rand(n, 3), torch.full((n, 6), -3.0), 2, with_mem=True)
    with torch.no_grad():
        model.fv.normal_(0, 0.5)
        model.fg.normal_(0, 0.3)
    return model


if __name__ == "__main__":
    main()
