"""ADC-GS through the runner, and the rate term's effect on the coded size (CPU)."""
from __future__ import annotations

import pytest
import torch

from evalkit.codec.container import Bitstream
from evalkit.methods.adc_gs import ADCGSTrained
from evalkit.methods.adc_gs.mem import bits_per_value, quantise, stream_names

from tests.methods.adc_gs_common import random_model
from tests.methods.runner_common import run_synthetic


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
    [rec] = run_synthetic("adc-gs", synthetic_data_root, out, iterations=30, resolution_scale=1 / 4, rates=["low"])
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


NON_RD_VARIANTS = ("adc-gs:base", "adc-gs:coarse", "adc-gs:coarse-fine")


def test_variants_without_rate_distortion_are_planned_once_per_scene(synthetic_data_root) -> None:
    """lambda_e changes nothing without the rate term: Table 3's variants without R-D optimisation
    have one rate point ("default", no parameters), so a sweep trains them once per scene; the
    method and its R-D variants keep low / mid / high."""
    from evalkit.runner import plan_jobs

    for name in NON_RD_VARIANTS:
        jobs, _ = plan_jobs(name, "synthetic", synthetic_data_root)
        assert [(j.scene, j.rate.name, j.rate.params) for j in jobs] == [("spheres", "default", {})], name
    for name in ("adc-gs", "adc-gs:rd", "adc-gs:wo-ts"):
        jobs, _ = plan_jobs(name, "synthetic", synthetic_data_root)
        assert [j.rate.name for j in jobs] == ["low", "mid", "high"], name


def test_a_lambda_rate_point_is_refused_without_rate_distortion() -> None:
    """A rate point that sets lambda_e on a variant without the rate term would train the same model
    under another rate name: refused before training, naming the fix."""
    from evalkit.methods.adc_gs import ADCGS
    from evalkit.methods.base import Budget, RatePoint, TrainContext
    from evalkit.specs import load_method_spec

    ctx = TrainContext(device=torch.device("cpu"), budget=Budget(iterations=10),
                       config=load_method_spec("adc-gs:base").config("synthetic", "spheres"))
    mid = RatePoint("mid", {"lambda_e": 1e-3})
    with pytest.raises(ValueError, match=r"lambda_e.*rate_distortion = false.*rates\.default"):
        ADCGS().effective_config(mid, ctx)
    with pytest.raises(ValueError, match=r"lambda_e.*rate_distortion = false"):
        ADCGS().train(None, mid, ctx)  # refused before the scene is touched
    assert ADCGS().effective_config(RatePoint("default", {}), ctx)["rate_distortion"] is False
    rd = TrainContext(device=torch.device("cpu"), budget=Budget(iterations=10),
                      config=load_method_spec("adc-gs:rd").config("synthetic", "spheres"))
    assert ADCGS().effective_config(mid, rd)["lambda_e"] == 1e-3


@pytest.mark.slow
def test_variant_without_rate_distortion_trains_once_and_records_one_point(tmp_path, synthetic_data_root,
                                                                           monkeypatch) -> None:
    """`adc-gs:base` on the synthetic scene: one job, one training, one record at rate "default"
    whose decoded file is the trained model (float32 anchors, no MEM streams, no coding stages)."""
    import evalkit.methods.adc_gs as adc

    calls = []
    real_train = adc.train
    monkeypatch.setattr(adc, "train", lambda *a, **kw: calls.append(a[1].lambda_e) or real_train(*a, **kw))
    out = tmp_path / "results"
    [rec] = run_synthetic("adc-gs:base", synthetic_data_root, out, iterations=20, resolution_scale=1 / 4)
    assert len(calls) == 1
    assert rec.rate == "default" and rec.rate_params == {} and rec.reused is None
    assert rec.config["rate_distortion"] is False and rec.config["deformation"] == "none"
    assert rec.iterations == 20 and rec.stage_metrics == {} and rec.metrics["psnr"] > 8
    assert "anchors_float32" in rec.size["components"] and not {"hyper", "fv", "fg0"} & set(rec.size["components"])
    assert not (out / "synthetic" / "spheres" / "adc-gs_base" / "mid.json").exists()


class _Killed(Exception):
    pass


def test_an_interrupted_run_resumes_from_its_checkpoint_and_ends_where_one_run_ends(synth_scene_dir, tmp_path) -> None:
    """Training killed right after its checkpoint at step 9 (refinement on, before the snap), then run
    again: it continues from step 9 and ends with the model of an uninterrupted run (CPU is
    deterministic); the stats say where it resumed."""
    from evalkit.data.detect import load_scene
    from evalkit.methods.adc_gs.config import ADCConfig
    from evalkit.methods.adc_gs.training import train
    from evalkit.train.checkpoint import TrainCheckpoint

    scene = load_scene(synth_scene_dir("dnerf"), resolution_scale=0.25)
    cfg = ADCConfig(iterations=14, deform_from=3, quant_from=4, rate_from=6, refine_from=2, refine_until=10,
                    refine_interval=2, init_voxel=0.6, time_rows=4, lambda_e=1e-3)
    cpu = torch.device("cpu")
    path = tmp_path / "mid.ckpt"

    def kill_after_step_9(msg: str) -> None:
        if msg.startswith("step 9: checkpoint written"):
            raise _Killed

    with pytest.raises(_Killed):
        train(scene, cfg, cpu, log=kill_after_step_9, checkpoint=TrainCheckpoint(path, every_s=1e-9))
    assert path.is_file()
    torch.manual_seed(1234)  # as a new process would be: the random streams come from the checkpoint
    lines: list[str] = []
    resumed, stats = train(scene, cfg, cpu, log=lines.append, checkpoint=TrainCheckpoint(path, every_s=1e-9))
    assert stats["resumed"]["from_step"] == 9 and stats["resumed"]["earlier_train_s"] > 0
    assert any(line.startswith("resuming from the checkpoint at step 9") for line in lines)
    alone, one_go = train(scene, cfg, cpu)
    assert one_go["resumed"] is None and stats["refinement"] == one_go["refinement"]
    a, b = resumed.state_dict(), alone.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_a_checkpoint_of_another_rate_point_is_not_resumed(synth_scene_dir, tmp_path) -> None:
    from evalkit.data.detect import load_scene
    from evalkit.methods.adc_gs.config import ADCConfig
    from evalkit.methods.adc_gs.training import train
    from evalkit.train.checkpoint import TrainCheckpoint

    scene = load_scene(synth_scene_dir("dnerf"), resolution_scale=0.25)
    base = dict(iterations=6, deform_from=3, quant_from=4, rate_from=5, refine_from=2, refine_until=5,
                refine_interval=2, init_voxel=0.6, time_rows=4)
    path = tmp_path / "job.ckpt"
    with pytest.raises(_Killed):
        train(scene, ADCConfig(**base, lambda_e=1e-2), torch.device("cpu"),
              log=lambda m: (_ for _ in ()).throw(_Killed) if "checkpoint written" in m else None,
              checkpoint=TrainCheckpoint(path, every_s=1e-9))
    lines: list[str] = []
    _, stats = train(scene, ADCConfig(**base, lambda_e=1e-4), torch.device("cpu"), log=lines.append,
                     checkpoint=TrainCheckpoint(path, every_s=1e-9))
    assert stats["resumed"] is None
    assert any(str(path) in line and "another configuration" in line for line in lines)


@pytest.mark.slow
def test_runner_resumes_a_killed_job_from_its_checkpoint(tmp_path, synthetic_data_root, monkeypatch) -> None:
    """A job killed in training leaves a failed record and its checkpoint; the same command again
    resumes it, records that it did (train_s adds the earlier part) and removes the checkpoint."""
    from evalkit.results import read_record, record_path
    from evalkit.runner import RunOptions, run
    from evalkit.train.checkpoint import TrainCheckpoint

    out = tmp_path / "results"
    opts = RunOptions(out=out, iterations=30, resolution_scale=1 / 4, device="cpu", fps_warmup=1, fps_repeats=1,
                      checkpoint_minutes=1e-9)  # a checkpoint after every step
    real_save, saves = TrainCheckpoint.save, []

    def save_then_die(self, key, state):
        real_save(self, key, state)
        saves.append(state["step"])
        if len(saves) == 20:
            raise _Killed("machine lost")

    monkeypatch.setattr(TrainCheckpoint, "save", save_then_die)
    [first] = run("adc-gs", "synthetic", rates=["low"], data_root=synthetic_data_root, opts=opts).outcomes
    rec_path = record_path(out, "synthetic", "spheres", "adc-gs", "low")
    ckpt = rec_path.with_suffix(".ckpt")
    assert first.status == "failed" and "machine lost" in first.error and ckpt.is_file()
    monkeypatch.setattr(TrainCheckpoint, "save", real_save)
    [second] = run("adc-gs", "synthetic", rates=["low"], data_root=synthetic_data_root, opts=opts).outcomes
    rec = read_record(rec_path)
    assert second.status == "ok" and not ckpt.exists()
    assert any(n.startswith("training resumed from a checkpoint at step 20") for n in rec.notes)
    assert rec.timings["train_s"] > rec.timings["train_resumed_part_s"] > 0
    assert "resuming from the checkpoint at step 20" in rec_path.with_suffix(".log").read_text()
