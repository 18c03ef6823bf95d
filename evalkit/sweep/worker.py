"""The claim loop a worker runs, in process (``run_claimed``) or as a child process
(``python -m evalkit.sweep.worker SPEC EVENT_FD``, started by ``evalkit.sweep.isolation``).

A worker walks its job list in order; for each job it claims the job (``claims.try_claim``), checks
again that no ok record appeared meanwhile, runs ``runner.run_job`` and releases the claim once the
record is written. A job another worker holds is skipped and said so; a job that failed earlier in
this same sweep (another worker's record, or a crash the supervisor recorded) is not run again.

The child reports to its supervisor through one pipe, one JSON object per line: ``started`` (after
the claim: the supervisor writes the crash record of this job if the child dies), ``phase``,
``iteration`` (at most a few per second), ``finished`` (with the outcome), ``interrupted``.
"""
from __future__ import annotations

import faulthandler
import importlib
import json
import os
import pickle
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from evalkit.results import EXECUTOR_ENV, read_record, record_path
from evalkit.sweep.claims import job_claim_path, try_claim
from evalkit.sweep.resources import job_resources

PLUGINS_ENV = "EVALKIT_PLUGINS"  # modules a child worker imports first (e.g. a test method's registration)


@dataclass
class WorkerSpec:
    """What one worker child runs: its jobs in order, the options, and who it is."""

    jobs: list
    opts: object  # runner.RunOptions
    sweep: str
    worker: str
    exclude: set[str] = field(default_factory=set)  # labels not to try (done or failed in this sweep)
    plugins: list[str] = field(default_factory=list)


def load_plugins(extra: list[str] = ()) -> None:
    """Import ``extra`` and the modules named in ``$EVALKIT_PLUGINS`` (comma-separated): e.g. one
    that registers an out-of-tree method in ``evalkit.methods.registry.METHODS``, so that the CLI
    and every child worker know it."""
    for mod in [*extra, *(m.strip() for m in os.environ.get(PLUGINS_ENV, "").split(","))]:
        if mod:
            importlib.import_module(mod)


def written_in_sweep(job, opts, sweep: str):
    """``job``'s record if this sweep wrote it (another worker of it, or a crash its supervisor
    recorded), else None: such a job is not run again by this sweep, ``--force`` or not."""
    if not sweep:
        return None
    path = record_path(opts.out, job.dataset, job.scene, job.method, job.rate.name)
    try:
        rec = read_record(path) if path.is_file() else None
    except Exception:
        return None
    return rec if rec is not None and (rec.env.get("executor") or {}).get("sweep") == sweep else None


def run_claimed(job, opts, reporter, scene_cache: dict, existing=None, *, sweep: str = "", worker: str = "",
                on_claimed: Callable[[object], None] = lambda job: None):
    """Run ``job`` under its claim (``runner.run_job`` inside). A job held by a live claim comes
    back with status "claimed" and the holder in ``error``; nothing is written for it."""
    from evalkit import runner

    if runner.still_valid(existing, opts):
        return runner.JobOutcome(job, "skipped", existing)  # nothing to claim: the record is there
    path = job_claim_path(opts.out, job)
    limits = job_resources(job.method, job.dataset).override(time_min=getattr(opts.sweep, "time_min", None))
    claim, holder = try_claim(path, time_limit_s=limits.time_limit_s, sweep=sweep, worker=worker)
    if claim is None:
        return runner.JobOutcome(job, "claimed", error=f"claimed by {holder.describe() if holder else 'another worker'}")
    try:
        if (rec := written_in_sweep(job, opts, sweep)) is not None:
            first = (rec.error or "").splitlines()[0] if rec.status == "failed" else "ok"
            return runner.JobOutcome(job, "claimed", error=f"run earlier in this sweep ({rec.status}: {first})")
        if not opts.force and existing is None:
            existing = runner._existing_ok(job, opts)  # finished by another worker meanwhile?
            if existing is not None and (diff := runner.settings_changed(existing, job, opts)):
                return runner.JobOutcome(job, "claimed", error="a record with other settings was written meanwhile: "
                                                               + "; ".join(diff))
        on_claimed(job)
        if claim.took_over:
            reporter.phase(f"took over a stale claim: {claim.took_over}")
        return runner.run_job(job, opts, reporter, scene_cache, existing)
    finally:
        claim.release()


def _outcome_event(outcome) -> dict:
    rec = outcome.record
    summary = None
    if rec is not None and outcome.status in ("ok", "skipped") and rec.status == "ok":
        summary = {"psnr": rec.metrics.get("psnr"), "ssim": rec.metrics.get("ssim"),
                   "bytes": rec.total_bytes, "fps": (rec.fps or {}).get("fps"),
                   "contended": rec.timings_contended}
    return {"kind": "finished", "label": outcome.job.label, "status": outcome.status,
            "error": outcome.error, "summary": summary}


def work(spec: WorkerSpec, emit: Callable[[dict], None]) -> None:
    """Run ``spec``'s jobs in this process, reporting through ``emit``."""
    from evalkit import runner
    from evalkit.runner import Reporter
    from evalkit.sweep.shared import SceneCache

    last = [0.0]

    def iteration(it: int, total: int, stats: dict) -> None:
        now = time.monotonic()
        if now - last[0] >= 0.25 or it == total:
            last[0] = now
            emit({"kind": "iteration", "it": it, "total": total})

    reporter = Reporter(phase=lambda msg: emit({"kind": "phase", "msg": msg}), iteration=iteration)
    scene_cache = SceneCache(spec.opts)
    for job in spec.jobs:
        if job.label in spec.exclude:
            continue
        try:
            outcome = run_claimed(job, spec.opts, reporter, scene_cache, sweep=spec.sweep, worker=spec.worker,
                                  on_claimed=lambda j: emit({"kind": "started", "label": j.label}))
        except Exception as exc:  # outside run_job's own record (e.g. the device): no record, said here
            outcome = runner.JobOutcome(job, "failed", error=f"{type(exc).__name__}: {exc}")
        scene_cache.release_claims()
        emit(_outcome_event(outcome))


def main(argv: list[str]) -> int:
    spec_path, fd = Path(argv[0]), int(argv[1])
    faulthandler.enable()  # a native crash dumps the Python stack into the worker's log
    spec: WorkerSpec = pickle.loads(spec_path.read_bytes())
    load_plugins(spec.plugins)
    events = os.fdopen(fd, "w", buffering=1, encoding="utf-8")

    def emit(ev: dict) -> None:
        events.write(json.dumps(ev, default=str) + "\n")

    import torch

    if spec.opts.threads:
        torch.set_num_threads(spec.opts.threads)
    info = json.loads(os.environ.get(EXECUTOR_ENV) or "{}")
    if info.get("gpu") is not None and torch.cuda.is_available():  # the records name the GPU that ran them
        info["gpu_name"] = torch.cuda.get_device_name(0)
        os.environ[EXECUTOR_ENV] = json.dumps(info)
    # Ctrl-C (the terminal's, then the supervisor's) or SIGTERM: one KeyboardInterrupt, then no
    # other, so the unwinding (claim release) is not itself interrupted.
    def interrupt(signum, frame) -> None:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        raise KeyboardInterrupt

    signal.signal(signal.SIGINT, interrupt)
    signal.signal(signal.SIGTERM, interrupt)
    try:
        work(spec, emit)
    except KeyboardInterrupt:
        emit({"kind": "interrupted"})
        return 130
    return 0


def executor_env(info: dict) -> dict[str, str]:
    """Environment entries that make a child's records name their executor (``env.executor``)."""
    return {EXECUTOR_ENV: json.dumps(info)}


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
