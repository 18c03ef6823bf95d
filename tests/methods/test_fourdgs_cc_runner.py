"""4DGS-CC through the benchmark runner, and coding times at the paper's D-NeRF scale (CPU)."""
from __future__ import annotations


import pytest
import torch

from evalkit.codec.container import Bitstream
from evalkit.models.fourdgs.config import FourDGSConfig
from evalkit.models.fourdgs.trainer import build_model
from evalkit.methods.fourdgs_cc import FourDGSCC, FourDGSCCTrained
from evalkit.methods.fourdgs_cc.config import CCConfig
from evalkit.methods.fourdgs_cc.model import FourDGSCCModel
from evalkit.train.vq import nearest_code

from tests.methods.fourdgs_cc_common import single_thread_torch  # noqa: F401
from tests.methods.runner_common import run_synthetic


@pytest.mark.slow
def test_runner_records_an_ok_job(tmp_path, synthetic_data_root) -> None:
    out = tmp_path / "results"
    [rec] = run_synthetic("4dgs-cc", synthetic_data_root, out, iterations=40, resolution_scale=1 / 6, rates=["low"])
    assert rec.status == "ok" and rec.rate_params == {"lambda_e": 1e-3, "codebook_size": 256}
    comps = rec.size["components"]
    assert {"xyz", "vq_indices", "codebook_y", "hexplane_nvcc", "nvcc_model", "deformation_mlp"} <= set(comps)
    assert rec.size["total_bytes"] == sum(comps.values())
    assert rec.timings["encode_s"] > 0 and rec.timings["decode_s"] > 0
    assert rec.iterations == 40 and rec.metrics["psnr"] > 10
    bits = Bitstream.read(out / rec.bitstream)
    assert bits.header["cc"]["codebook_size"] == 256 and bits.header["config"]["feature_dim"] == 16  # 4dgs.toml


@pytest.mark.slow
def test_dnerf_scale_round_trip() -> None:
    """Encode / decode at the paper's D-NeRF scale (32 channels, 64^3 x 75 planes at multires
    [1, 2], 40k Gaussians, 8192 codes) with untrained networks: every stream decodes to what was
    encoded at full size. (How long it takes: ``python -m evalkit.bench.fourdgs_cc``.)"""
    torch.manual_seed(0)
    fcfg = FourDGSConfig(resolution=[64, 64, 64, 75])
    n = 40000
    from evalkit.data.scene import PointCloud

    pts = PointCloud(xyz=(torch.rand(n, 3) * 2 - 1).numpy(), rgb=torch.rand(n, 3).numpy())
    scene_like = type("S", (), {"points": pts, "background": [1.0, 1.0, 1.0]})
    base = build_model(scene_like, fcfg, torch.device("cpu"))
    with torch.no_grad():
        base.gaussians["shN"].normal_(0, 0.05)
        for level in base.deformation.grid.grids:  # trained-like planes: smooth-ish deviations
            for p in level:
                p.add_(0.02 * torch.randn_like(p))
    cc = CCConfig(codebook_size=8192)
    model = FourDGSCCModel(base, cc)
    with torch.no_grad():  # VQ as training leaves it (k-means itself runs during training)
        flat = model.canonical_sh().reshape(n, -1)
        model.vq.codebook.copy_(flat[torch.randperm(n)[:8192]])
        model.vq.set_assignment(nearest_code(flat, model.vq.quantized_codebook()))
        model.vq.active = True
    trained = FourDGSCCTrained(model, fcfg, cc, stats={})
    bits = trained.encode()  # its speed: python -m evalkit.bench.fourdgs_cc
    decoded = FourDGSCC().decode(Bitstream.from_bytes(bits.to_bytes()), torch.device("cpu"))
    assert decoded.num_primitives() == n
    assert torch.equal(decoded.coded.plane_symbols[1][5], trained.finalize().plane_symbols[1][5])

