"""ADC-GS through the runner, and the rate term's effect on the coded size (CPU)."""
from __future__ import annotations

import pytest
import torch

from evalkit.codec.container import Bitstream
from evalkit.methods.adc_gs import ADCGSTrained
from evalkit.methods.adc_gs.mem import bits_per_value, quantise, stream_names
from evalkit.results import read_record, record_path
from evalkit.runner import RunOptions, run

from tests.methods.adc_gs_common import random_model


def _coded_stream_bytes(lambda_e: float) -> int:
    """Features and entropy model trained for a fixed distortion proxy + lambda_e R; bytes of the MEM streams."""
    torch.manual_seed(0)
    model = random_model(n=150, seed=7)
    params = [model.fv, model.fg, model.sigma, model.color, *model.mem.parameters()]
    opt = torch.optim.Adam(params, lr=5e-3)
    target = {k: v.detach().clone() for k, v in model.features().items()}
    for _ in range(150):
        q, bits = quantise(model.mem, model.features(), "noise")
        distortion = sum(((q[k] - target[k]) ** 2).mean() for k in q)
        loss = distortion + lambda_e * bits_per_value(model.mem, bits, model.num_anchors)
        opt.zero_grad()
        loss.backward()
        opt.step()
    bits = ADCGSTrained(model, model.deform.table.weight.shape[0], [1.0] * 3, {}, None).encode()
    return sum(len(bits.components[k]) for k in stream_names(model.cfg))


def test_lower_lambda_gives_a_larger_file() -> None:
    sizes = [_coded_stream_bytes(lam) for lam in (1.0, 0.1, 0.0)]
    assert sizes[0] < sizes[1] < sizes[2], sizes


@pytest.mark.slow
def test_runner_records_adc_gs_jobs(tmp_path, synthetic_data_root) -> None:
    out = tmp_path / "results"
    result = run("adc-gs", "synthetic", rates=["low"], data_root=synthetic_data_root,
                 opts=RunOptions(out=out, iterations=30, resolution_scale=1 / 4, device="cpu",
                                 fps_warmup=1, fps_repeats=1))
    assert [o.status for o in result.outcomes] == ["ok"], [o.error for o in result.outcomes]
    rec = read_record(record_path(out, "synthetic", "spheres", "adc-gs", "low"))
    comps = rec.size["components"]
    assert {"geometry", "hyper", "fv", "fg0", "fg3", "net_theta", "net_deform", "net_entropy"} <= set(comps)
    assert rec.size["total_bytes"] == sum(comps.values()) == (out / rec.bitstream).stat().st_size
    assert rec.iterations == 30 and rec.rate_params == {"lambda_e": 5e-2}
    assert rec.num_primitives % 10 == 0 and rec.metrics["psnr"] > 8
    assert list(rec.stage_metrics) == ["unquantised features"]
    bits = Bitstream.read(out / rec.bitstream)
    assert bits.header["config"]["init_voxel"] == 0.4 and bits.header["geometry_coder"] in ("octree", "laz", "draco")


def test_rate_points_share_the_lambda_independent_steps(synth_scene_dir) -> None:
    """The second rate point resumes from the stored steps before the rate term and ends exactly
    where training it from scratch ends (CPU is deterministic)."""
    from evalkit.data.detect import load_scene
    from evalkit.methods.adc_gs.config import ADCConfig
    from evalkit.methods.adc_gs.training import train

    scene = load_scene(synth_scene_dir("dnerf"), resolution_scale=0.25)
    base = dict(iterations=14, deform_from=3, quant_from=4, rate_from=6, refine_from=2, refine_until=10,
                refine_interval=2, init_voxel=0.6, time_rows=4)
    cache: dict = {}
    cpu = torch.device("cpu")
    _, first = train(scene, ADCConfig(**base, lambda_e=1e-2), cpu, cache=cache)
    shared, second = train(scene, ADCConfig(**base, lambda_e=1e-4), cpu, cache=cache)
    alone, third = train(scene, ADCConfig(**base, lambda_e=1e-4), cpu, cache={})
    assert not first["reused_shared_steps"] and second["reused_shared_steps"] and not third["reused_shared_steps"]
    assert len(cache) == 1
    a, b = shared.state_dict(), alone.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
