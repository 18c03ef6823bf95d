"""Sweeps that scale (evalkit.sweep): claims, crash isolation, the local / SLURM (submitit) / Ray
executors, shared stages and ``evalkit status``, on the toy method of tests/test_runner.py (its
child workers import tests/sweep_toy.py, which registers it there)."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from evalkit.results import read_records
from evalkit.runner import RunOptions, run
from evalkit.sweep import claims
from evalkit.sweep.dispatch import SweepOptions
from tests.test_runner import ALL_JOBS, ToyBench, toy_bench  # noqa: F401  (fixture)

REPO = Path(__file__).resolve().parents[1]
PLUGIN = "tests.sweep_toy"


@pytest.fixture
def bench(toy_bench: ToyBench, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> ToyBench:
    """The toy bench, with the environment child workers need (import path, plugin, train log)."""
    import tests.sweep_toy  # noqa: F401  registers the sweep toy here too

    monkeypatch.setenv("PYTHONPATH", str(REPO))
    monkeypatch.setenv("EVALKIT_PLUGINS", PLUGIN)
    monkeypatch.setenv("EVALKIT_TOY_TRAIN_LOG", str(tmp_path / "train.log"))
    return toy_bench


def trained(tmp_path: Path) -> list[str]:
    log = tmp_path / "train.log"
    return sorted(line.split()[0] for line in log.read_text().splitlines()) if log.is_file() else []


def sweep_opts(bench: ToyBench, **kw) -> RunOptions:
    return bench.opts(sweep=SweepOptions(**{"plugins": [PLUGIN], **kw}))


def cli_run(bench: ToyBench, *extra: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "evalkit.cli", "run", "--method", "toy", "--dataset", "toy",
                             "--data-root", str(bench.data_root), "--out", str(bench.out), "--device", "cpu",
                             *extra], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True, env={**os.environ, "COLUMNS": "200"})


def comparable(rec) -> dict:
    """A record without what legitimately differs between executors: times, FPS, host samples,
    creation time, the executor itself."""
    d = rec.to_dict()
    for k in ("timings", "fps", "created", "env"):
        d.pop(k)
    return d


# -- claims ---------------------------------------------------------------------------------
def test_a_claim_is_exclusive_and_stale_claims_are_taken_over(tmp_path: Path) -> None:
    path = tmp_path / "a" / "low.claim"
    mine, holder = claims.try_claim(path, time_limit_s=3600)
    assert mine is not None and holder is None
    again, holder = claims.try_claim(path, time_limit_s=3600)
    assert again is None and holder.pid == os.getpid() and holder.host == socket.gethostname()
    mine.release()
    assert not path.exists()
    # a dead process on this host
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    path.write_text(json.dumps({"host": socket.gethostname(), "pid": dead.pid, "started": time.time(),
                                "time_limit_s": 3600, "token": "x"}))
    taken, _ = claims.try_claim(path, time_limit_s=3600)
    assert taken is not None and "is gone" in taken.took_over
    # another host's claim older than its time limit
    path.write_text(json.dumps({"host": "elsewhere", "pid": 1, "started": time.time() - 100,
                                "time_limit_s": 10, "token": "y"}))
    taken, _ = claims.try_claim(path, time_limit_s=3600)
    assert taken is not None and "time limit" in taken.took_over
    # a live one elsewhere is respected
    path.write_text(json.dumps({"host": "elsewhere", "pid": 1, "started": time.time(), "time_limit_s": 3600,
                                "token": "z"}))
    assert claims.try_claim(path, time_limit_s=3600)[0] is None
    taken.release()  # no longer ours: left alone
    assert path.exists()


def test_two_runs_on_one_folder_at_once_split_the_work(bench: ToyBench, tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """Plain ``evalkit run`` (the local executor, one worker); ``--executor inline`` goes through the
    same ``worker.run_claimed``."""
    monkeypatch.setenv("EVALKIT_TOY_SLEEP", "2")
    procs = [cli_run(bench, "--scene", "alpha") for _ in range(2)]
    outs = [p.communicate(timeout=120)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    assert trained(tmp_path) == ["alpha/high", "alpha/low"]  # each job trained once
    assert {(r.scene, r.rate): r.status for r in read_records(bench.out)} == {("alpha", "high"): "ok",
                                                                             ("alpha", "low"): "ok"}
    assert any("claimed by" in o for o in outs), outs  # a run said it left a job to the other
    assert not list(bench.out.glob("*/*/*/*.claim"))


# -- crash isolation -------------------------------------------------------------------------
def test_a_segfaulting_job_is_a_failed_record_naming_the_signal_and_the_sweep_goes_on(
        bench: ToyBench, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EVALKIT_TOY_CRASH", "alpha/low")
    res = run("toy", "toy", data_root=bench.data_root, scenes=["alpha"], opts=sweep_opts(bench, workers=1))
    status = {(o.job.scene, o.job.rate.name): o.status for o in res.outcomes}
    assert status == {("alpha", "low"): "failed", ("alpha", "high"): "ok"}  # the next job still ran
    rec = bench.record("alpha", "low")
    assert rec.status == "failed" and "SIGSEGV" in rec.error.splitlines()[0]
    assert "about to crash" in rec.error  # the tail of the job's log
    assert rec.env["executor"]["name"] == "local"
    assert trained(tmp_path).count("alpha/low") == 1  # not retried within the sweep
    assert not list(bench.out.glob("*/*/*/*.claim"))


def started_mid_job(bench: ToyBench, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> subprocess.Popen:
    """``evalkit run`` on scene alpha, returned once its first (30 s) training has started."""
    monkeypatch.setenv("EVALKIT_TOY_SLEEP", "30")
    proc = cli_run(bench, "--scene", "alpha")
    deadline = time.time() + 60
    while not (tmp_path / "train.log").is_file() and time.time() < deadline:
        time.sleep(0.2)
    assert list(bench.out.glob("*/*/*/*.claim"))
    return proc


def test_killing_a_sweep_mid_job_then_rerunning_loses_nothing(bench: ToyBench, tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    proc = started_mid_job(bench, tmp_path, monkeypatch)
    os.killpg(proc.pid, signal.SIGKILL)  # the runner and its workers, mid-job: claims left behind
    proc.wait()
    assert list(bench.out.glob("*/*/*/*.claim")) and not list(bench.out.glob("*/*/*/*.json"))
    monkeypatch.setenv("EVALKIT_TOY_SLEEP", "0")
    rerun = cli_run(bench, "--scene", "alpha")
    out = rerun.communicate(timeout=120)[0]
    assert rerun.returncode == 0, out
    assert {(r.scene, r.rate): r.status for r in read_records(bench.out)} == {("alpha", "high"): "ok",
                                                                             ("alpha", "low"): "ok"}
    assert not list(bench.out.glob("*/*/*/*.claim"))


def test_ctrl_c_stops_cleanly_with_no_record_and_no_claim_left(bench: ToyBench, tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    proc = started_mid_job(bench, tmp_path, monkeypatch)
    os.killpg(proc.pid, signal.SIGINT)  # what a terminal's Ctrl-C does: the runner and its workers
    out = proc.communicate(timeout=60)[0]
    assert proc.returncode == 130, out
    assert "stopped" in out
    assert not list(bench.out.glob("*/*/*/*.claim")) and not list(bench.out.glob("*/*/*/*.json"))
    assert not list(bench.out.rglob("*.tmp"))  # no half-written record or bitstream either


def test_a_worker_interrupted_alone_stops_the_sweep_as_ctrl_c_does(bench: ToyBench, tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """The Ctrl-C race seen in CI: the worker handles its SIGINT and exits before the supervisor
    process acts on its own. Sending SIGINT to the worker alone makes that order certain; the sweep
    must still stop as on Ctrl-C (exit 130, "stopped", nothing left behind), not end with exit 0
    calling its jobs "left to other workers"."""
    proc = started_mid_job(bench, tmp_path, monkeypatch)
    claim = next(bench.out.glob("*/*/*/*.claim"))
    worker_pid = json.loads(claim.read_text())["pid"]
    assert worker_pid != proc.pid
    os.kill(worker_pid, signal.SIGINT)
    out = proc.communicate(timeout=60)[0]
    assert proc.returncode == 130, out
    assert "stopped" in out
    assert not list(bench.out.glob("*/*/*/*.claim")) and not list(bench.out.glob("*/*/*/*.json"))


def test_one_worker_interrupted_alone_stops_every_worker(bench: ToyBench, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """Two workers, each mid-job (30 s): SIGINT to one of them stops the sweep at once, the other
    worker's job included (no record), instead of letting it run on and then discarding its outcome."""
    monkeypatch.setenv("EVALKIT_TOY_SLEEP", "30")
    proc = cli_run(bench, "--workers", "2")
    deadline, pids = time.time() + 60, set()
    while len(pids) < 2 and time.time() < deadline:
        time.sleep(0.2)
        pids = {info.pid for c in bench.out.glob("*/*/*/*.claim") if (info := claims.read_claim(c))}
    assert len(pids) == 2
    os.kill(min(pids), signal.SIGINT)
    out = proc.communicate(timeout=60)[0]
    assert proc.returncode == 130 and "stopped" in out, out
    assert not read_records(bench.out) and not list(bench.out.glob("*/*/*/*.claim"))


def test_local_workers_one_per_gpu_or_several_sharing_one() -> None:
    from evalkit.results import Record
    from evalkit.sweep.local import plan_slots, rotated, scene_groups

    assert plan_slots(["0", "1", "3"]) == [("gpu0", "0"), ("gpu1", "1"), ("gpu3", "3")]
    assert plan_slots(["0"], jobs_per_gpu=2) == [("gpu0.0", "0"), ("gpu0.1", "0")]
    assert plan_slots(None, workers=2) == [("cpu0", None), ("cpu1", None)]
    groups = scene_groups([type("J", (), {"dataset": "d", "scene": s, "n": i})() for i, s in enumerate("aabb")])
    assert [j.n for j in rotated(groups, 1)] == [2, 3, 0, 1]  # the second worker starts on the second scene
    shared = Record("m", "d", "s", "r", env={"executor": {"name": "local", "gpu_shared_by_design": True}})
    assert shared.timings_contended  # reports leave its times out even if no sample saw the other job


# -- executors --------------------------------------------------------------------------------
def same_records_as(local: dict, out: Path, executor: str) -> None:
    """``out``'s records equal ``local``'s but for timings and executor fields."""
    recs = read_records(out)
    assert recs
    for r in recs:
        assert r.env["executor"]["name"] == executor and r.env["executor"]["sweep"]
        want, got = comparable(local[r.key]), comparable(r)
        want["reused"] = got["reused"] = None  # which rate point found the shared stage first may differ
        assert got == want, executor


def cluster_run(bench: ToyBench, out: Path, executor: str, **kw):
    opts = RunOptions(out=out, device="cpu", fps_warmup=1, fps_repeats=1,
                      sweep=SweepOptions(executor=executor, plugins=[PLUGIN], **kw))
    res = run("toy", "toy", data_root=bench.data_root, scenes=["alpha"], opts=opts)
    assert sorted(o.status for o in res.outcomes) == ["ok"] * 2, [(o.status, o.error) for o in res.outcomes]


def test_local_executor_two_workers_and_submitit_write_the_same_records(bench: ToyBench, tmp_path: Path) -> None:
    res = run("toy", "toy", data_root=bench.data_root, opts=sweep_opts(bench, workers=2))
    assert sorted(o.status for o in res.outcomes) == ["ok"] * 4
    assert trained(tmp_path) == sorted(f"{s}/{r}" for s, r in ALL_JOBS)  # no job twice
    local = {r.key: r for r in read_records(bench.out)}
    assert all(r.status == "ok" and r.size and r.metrics["psnr"] and r.fps for r in local.values())
    assert {r.env["executor"]["worker"] for r in local.values()} == {"cpu0", "cpu1"}
    assert all(r.env["executor"]["threads"] >= 1 and r.env["executor"]["sweep"] for r in local.values())
    # the shared stage: stored once per scene beside the records, named by the rate point reusing it
    for scene in ("alpha", "beta"):
        assert (bench.out / "toy" / scene / "_shared" / "toy_stage.pt").is_file()
    assert sum(r.reused is not None for r in local.values()) == 2
    assert not list(bench.out.glob("*/*/*/*.claim"))

    pytest.importorskip("submitit")
    cluster_run(bench, tmp_path / "slurm", "slurm", slurm_cluster="local")  # submitit.LocalExecutor
    same_records_as(local, tmp_path / "slurm", "slurm")
    assert list((tmp_path / "slurm" / ".sweep" / "slurm").glob("*/*_log.out"))  # logs beside the records


def test_ray_executor_writes_the_same_records(bench: ToyBench, tmp_path: Path) -> None:
    try:
        import ray  # noqa: F401
    except ImportError:
        pytest.skip("ray is not installed: it is in the [cluster] extra, not the test extra (a 79 MB wheel "
                    "and ~20 s to start a local Ray on CI's 2 cores); pip install 'evalkit[cluster]' to run this")
    run("toy", "toy", data_root=bench.data_root, scenes=["alpha"], opts=sweep_opts(bench))
    local = {r.key: r for r in read_records(bench.out)}
    cluster_run(bench, tmp_path / "ray", "ray")
    same_records_as(local, tmp_path / "ray", "ray")


# -- shared stages and status -----------------------------------------------------------------
def test_shared_stages_are_stored_beside_the_records_and_a_lost_one_is_recomputed(tmp_path: Path) -> None:
    from evalkit.sweep.shared import SceneCache

    opts = RunOptions(out=tmp_path, device="cpu")
    first = SceneCache(opts)
    first[("ds", "sc")] = {"scene": None, "shared": {}}
    cache = first[("ds", "sc")]["shared"]
    assert cache.get("m/stage") is None  # a miss claims the stage for this worker...
    assert (tmp_path / "ds" / "sc" / "_shared" / "m_stage.pt.claim").is_file()
    cache["m/stage"] = {"value": 3}  # ...until it stores it
    assert not (tmp_path / "ds" / "sc" / "_shared" / "m_stage.pt.claim").exists()
    second = SceneCache(opts)  # another worker, another process
    second[("ds", "sc")] = {"scene": None, "shared": {}}
    assert second[("ds", "sc")]["shared"].get("m/stage") == {"value": 3, "artefact": "ds/sc/_shared/m_stage.pt"}
    (tmp_path / "ds" / "sc" / "_shared" / "m_stage.pt").unlink()  # lost: a miss, computed again
    third = SceneCache(opts)
    third[("ds", "sc")] = {"scene": None, "shared": {}}
    assert third[("ds", "sc")]["shared"].get("m/stage") is None
    third.release_claims()
    assert not list((tmp_path / "ds" / "sc" / "_shared").iterdir())


def test_status_lists_done_running_failed_and_pending(bench: ToyBench, monkeypatch: pytest.MonkeyPatch) -> None:
    from typer.testing import CliRunner

    from evalkit import cli
    from evalkit.sweep.dispatch import write_manifest
    from evalkit.runner import plan_jobs

    from evalkit.sweep.isolation import record_crash

    run("toy", "toy", data_root=bench.data_root, scenes=["alpha"], rates=["low"], opts=bench.opts())
    jobs, _ = plan_jobs("toy", "toy", bench.data_root)
    write_manifest(bench.out, "later", jobs, SweepOptions())
    record_crash(next(j for j in jobs if (j.scene, j.rate.name) == ("alpha", "high")), bench.opts(), "cpu0",
                 "killed by signal SIGSEGV (Segmentation fault)", bench.out / "nolog", time.time())
    claim, _ = claims.try_claim(claims.claim_path(bench.out, "toy", "beta", "toy", "low"), time_limit_s=3600,
                                worker="w7")
    claims.try_claim(bench.out / "toy" / "beta" / "_shared" / "toy_stage.pt.claim", time_limit_s=60)  # not a job
    res = CliRunner().invoke(cli.app, ["status", str(bench.out)], env={"COLUMNS": "250"})
    claim.release()
    assert res.exit_code == 0, res.output
    lines = {tuple(line.split("│")[1:6]): line for line in res.output.splitlines() if line.count("│") >= 6}

    def state(scene: str, rate: str) -> str:
        hits = [ln for k, ln in lines.items() if k[2].strip() == scene and k[3].strip() == rate]
        assert len(hits) == 1, res.output
        return hits[0]

    assert "failed" in state("alpha", "high") and "SIGSEGV" in state("alpha", "high")
    assert "running" in state("beta", "low") and "w7" in state("beta", "low")
    assert "pending" in state("beta", "high")
    assert "1 done" in res.output and "1 running" in res.output and "1 pending" in res.output


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")
def test_gpus_without_cuda_is_refused_before_any_job_runs(bench: ToyBench, tmp_path: Path) -> None:
    """`--gpus 0` on a machine without CUDA is the request's error (one line naming --gpus), not a
    crash inside the dispatcher, and no job starts."""
    from evalkit.runner import RunError

    with pytest.raises(RunError, match=r"--gpus 0: CUDA is not available"):
        run("toy", "toy", data_root=bench.data_root, opts=sweep_opts(bench, gpus=["0"]))
    assert trained(tmp_path) == [] and not read_records(bench.out)
