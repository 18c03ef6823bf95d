"""Resumable training of `4dgs` and `4dgs-cc`: a run killed after a checkpoint and run again ends
with the model of an uninterrupted run (CPU training is deterministic), in either stage; a
checkpoint that does not fit is set aside and training starts over."""
from __future__ import annotations

import dataclasses

import pytest
import torch

from evalkit.methods.base import Budget, TrainContext
from evalkit.methods.fourdgs_cc.config import CCConfig
from evalkit.methods.fourdgs_cc.training import train_stages
from evalkit.models.fourdgs.config import FourDGSConfig
from evalkit.models.fourdgs.trainer import train
from evalkit.train.checkpoint import TrainCheckpoint, checkpoint_key

from tests.methods.fourdgs_cc_common import TINY_4DGS, TINY_CC, single_thread_torch, tiny_scene  # noqa: F401

CPU = torch.device("cpu")


class _Killed(Exception):
    pass


def _kill_at(stage: str, step: int):
    def log(msg: str) -> None:
        if msg == f"{stage} stage: step {step}: checkpoint written":
            raise _Killed
    return log


def _assert_same_state(a: torch.nn.Module, b: torch.nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        if isinstance(sa[k], torch.Tensor):
            assert torch.equal(sa[k], sb[k]), k
        else:
            assert sa[k] == sb[k], k


@pytest.mark.parametrize("stage,step", [("coarse", 12), ("fine", 15)])
def test_a_killed_4dgs_run_resumes_and_ends_as_an_uninterrupted_one(tiny_scene, tmp_path, stage, step) -> None:
    """Killed in the coarse stage, or in the fine stage while densifying (Gaussian count, optimiser
    state and densification statistics all changed since the start)."""
    cfg = FourDGSConfig(**TINY_4DGS)
    ckpt = TrainCheckpoint(tmp_path / "job.ckpt", every_s=1e-9)
    with pytest.raises(_Killed):
        train(tiny_scene, cfg, CPU, log=_kill_at(stage, step), checkpoint=ckpt, checkpoint_key="k")
    torch.manual_seed(1234)  # as a new process: the random streams come from the checkpoint
    state = TrainCheckpoint(tmp_path / "job.ckpt").load("k")
    assert state["stage"] == stage and state["step"] == step
    lines: list[str] = []
    resumed, stats = train(tiny_scene, cfg, CPU, log=lines.append, resume=state)
    assert any(line.startswith(f"{stage} stage: resuming from the checkpoint at step {step}") for line in lines)
    alone, alone_stats = train(tiny_scene, cfg, CPU)
    _assert_same_state(resumed, alone)
    assert [s.num_gaussians for s in stats] == [s.num_gaussians for s in alone_stats]
    assert alone.num_primitives() != 200  # densification changed the count: the resize was exercised


def _cc_ctx(tmp_path) -> TrainContext:
    return TrainContext(device=CPU, budget=Budget(seed=0), config={},
                        checkpoint=TrainCheckpoint(tmp_path / "mid.ckpt", every_s=1e-9))


@pytest.mark.parametrize("stage,step", [("coarse", 10), ("fine", 35)])
def test_a_killed_4dgs_cc_run_resumes_and_ends_as_an_uninterrupted_one(tiny_scene, tmp_path, stage, step) -> None:
    """4DGS-CC: killed in the coarse stage, or in the fine stage after VQ started (step 20) and
    re-assigned its codes (step 30): the quantiser's flags, codes and indices, the entropy models
    and their optimiser are restored with the rest."""
    fcfg, cc = FourDGSConfig(**TINY_4DGS), CCConfig(**TINY_CC, lambda_e=1e-3)
    ctx = _cc_ctx(tmp_path)
    ctx.log = _kill_at(stage, step)
    with pytest.raises(_Killed):
        train_stages(tiny_scene, fcfg, cc, ctx, "k", None, lambda: None)
    torch.manual_seed(1234)
    ctx = _cc_ctx(tmp_path)
    lines: list[str] = []
    ctx.log = lines.append
    state = ctx.checkpoint.load("k")
    model, stats, _, resumed = train_stages(tiny_scene, fcfg, cc, ctx, "k", state, lambda: None)
    assert resumed["from_step"] == (step if stage == "coarse" else fcfg.coarse_iterations + step)
    assert resumed["earlier_train_s"] > 0
    assert any(f"resuming from the checkpoint at step {step}" in line for line in lines)
    alone, alone_stats, _, none = train_stages(tiny_scene, fcfg, cc, TrainContext(device=CPU, budget=Budget(seed=0),
                                                                                  config={}), "k", None, lambda: None)
    assert none is None and model.vq.active and alone.vq.active
    _assert_same_state(model, alone)
    assert stats["vq"] == alone_stats["vq"]


def test_a_checkpoint_that_does_not_fit_is_set_aside_and_training_starts_over(tiny_scene, tmp_path) -> None:
    """Through the method: a checkpoint under this job's key whose model has another shape (written
    by other code) is moved to .bad with the reason in the log, and the job trains from step 1."""
    from evalkit.methods.base import RatePoint
    from evalkit.methods.fourdgs import FourDGS

    method, rate = FourDGS(), RatePoint("default", {})
    ctx = TrainContext(device=CPU, budget=Budget(iterations=30, seed=0), config=dict(TINY_4DGS),
                       checkpoint=TrainCheckpoint(tmp_path / "default.ckpt", every_s=3600))
    cfg = method.config(rate, ctx)
    key = checkpoint_key("4dgs", cfg.to_dict(), 0, method.speed_options)
    ctx.checkpoint.save(key, {"stage": "fine", "step": 3, "global_step": 8, "seconds": 1.0, "stats": [],
                              "model": {"gaussians.means": torch.zeros(7, 3), "deformation.no_such": torch.zeros(1)}})
    lines: list[str] = []
    ctx.log = lines.append
    trained = method.train(tiny_scene, rate, ctx)
    assert trained.resumed is None and (tmp_path / "default.ckpt.bad").is_file()
    assert any("not resumed: the saved model does not fit" in line for line in lines)
    assert trained.stats["fine"]["iterations"] == cfg.iterations


def test_the_checkpoint_key_leaves_out_only_the_named_keys() -> None:
    cfg = dataclasses.asdict(CCConfig())
    base = checkpoint_key("4dgs-cc", cfg, 0, frozenset({"cuda_graphs"}))
    assert checkpoint_key("4dgs-cc", {**cfg, "cuda_graphs": not cfg["cuda_graphs"]}, 0,
                          frozenset({"cuda_graphs"})) == base
    assert checkpoint_key("4dgs-cc", {**cfg, "lambda_e": 0.5}, 0, frozenset({"cuda_graphs"})) != base
    assert checkpoint_key("4dgs-cc", cfg, 1, frozenset({"cuda_graphs"})) != base


@pytest.mark.slow
def test_runner_resumes_a_killed_4dgs_cc_job(tmp_path, synthetic_data_root, monkeypatch) -> None:
    """Through the runner: the job dies in its fine stage after a checkpoint; the same command again
    resumes it (the record says from which step, and train_s adds the earlier part) and removes
    the checkpoint."""
    from evalkit.results import read_record, record_path
    from evalkit.runner import RunOptions, run

    out = tmp_path / "results"
    opts = RunOptions(out=out, iterations=40, resolution_scale=1 / 6, device="cpu", fps_warmup=1, fps_repeats=1,
                      checkpoint_minutes=1e-9)  # a checkpoint after every step
    real_save = TrainCheckpoint.save

    def save_then_die(self, key, state):
        real_save(self, key, state)
        if state["stage"] == "fine" and state["step"] == 20:
            raise _Killed("machine lost")

    monkeypatch.setattr(TrainCheckpoint, "save", save_then_die)
    [first] = run("4dgs-cc", "synthetic", rates=["low"], data_root=synthetic_data_root, opts=opts).outcomes
    rec_path = record_path(out, "synthetic", "spheres", "4dgs-cc", "low")
    assert first.status == "failed" and "machine lost" in first.error and rec_path.with_suffix(".ckpt").is_file()
    monkeypatch.setattr(TrainCheckpoint, "save", real_save)
    [second] = run("4dgs-cc", "synthetic", rates=["low"], data_root=synthetic_data_root, opts=opts).outcomes
    rec = read_record(rec_path)
    assert second.status == "ok" and not rec_path.with_suffix(".ckpt").exists()
    coarse = rec.config["coarse_iterations"]
    assert any(n.startswith(f"training resumed from a checkpoint at step {coarse + 20}") for n in rec.notes)
    assert rec.timings["train_s"] > rec.timings["train_resumed_part_s"] > 0


@pytest.mark.gpu
def test_a_killed_4dgs_cc_run_resumes_on_cuda(tiny_scene, tmp_path) -> None:
    """On CUDA (fused Adam state on the device, CUDA random streams, graphed rate terms re-captured
    after the resume): the resumed run finishes its schedule. gsplat's backward accumulates with
    atomics, so it is not bit-equal to an uninterrupted run there; the CPU tests check equality."""
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    cuda = torch.device("cuda")
    fcfg, cc = FourDGSConfig(**TINY_4DGS), CCConfig(**TINY_CC, lambda_e=1e-3)

    def ctx_for(log) -> TrainContext:
        return TrainContext(device=cuda, budget=Budget(seed=0), config={}, log=log,
                            checkpoint=TrainCheckpoint(tmp_path / "mid.ckpt", every_s=1e-9))

    with pytest.raises(_Killed):
        train_stages(tiny_scene, fcfg, cc, ctx_for(_kill_at("fine", 35)), "k", None, lambda: None)
    lines: list[str] = []
    ctx = ctx_for(lines.append)
    model, stats, _, resumed = train_stages(tiny_scene, fcfg, cc, ctx, "k", ctx.checkpoint.load("k"), lambda: None)
    assert resumed["from_step"] == fcfg.coarse_iterations + 35 and model.vq.active
    assert stats["fine"]["iterations"] == fcfg.iterations
    assert any("resuming from the checkpoint at step 35" in line for line in lines)
