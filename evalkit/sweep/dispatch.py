"""From a planned sweep to an executor: ``runner.run`` calls ``run_sweep`` when
``RunOptions.sweep`` names one (``evalkit run --executor local|slurm|ray``).

Every sweep gets an id and a manifest, ``<results>/.sweep/<id>.manifest.json`` (its jobs,
executor, host, start time), which ``evalkit status`` reads to list jobs still pending.
"""
from __future__ import annotations

import json
import os
import socket
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from evalkit.codec.container import atomic_write_bytes
from evalkit.results import read_record, record_path

EXECUTORS = ("inline", "local", "slurm", "ray")


@dataclass
class SweepOptions:
    """How a sweep's jobs are spread (``evalkit run --executor ...``)."""

    executor: str = "local"  # local | slurm | ray ("inline": runner.run's in-process loop)
    gpus: list[str] | None = None  # local: GPU ids (["all"]: every visible one); None: --workers on --device
    jobs_per_gpu: int = 1
    workers: int | None = None  # local without GPUs: CPU workers
    # per-job limits overriding the method spec's [resources] (slurm, ray; time_min also for claims)
    gpus_per_job: int | None = None
    cpus_per_job: int | None = None
    mem_gb: int | None = None
    time_min: int | None = None
    slurm_partition: str | None = None
    slurm_array_parallelism: int = 64
    slurm_extra: dict = field(default_factory=dict)  # more submitit parameters (slurm_<name> or plain)
    slurm_cluster: str | None = None  # submitit's cluster: None = auto (slurm), "local" (tests), "debug"
    ray_address: str | None = None  # ray.init(address=...); None starts a local Ray
    plugins: list[str] = field(default_factory=list)  # modules each worker imports first (tests)


def new_sweep_id() -> str:
    return f"{time.strftime('%Y%m%d-%H%M%S')}-{socket.gethostname()}-{os.getpid()}"


def manifest_dir(out: Path) -> Path:
    return Path(out) / ".sweep"


def write_manifest(out: Path, sweep: str, jobs: list, sw: SweepOptions) -> Path:
    path = manifest_dir(out) / f"{sweep}.manifest.json"
    data = {"sweep": sweep, "executor": sw.executor, "host": socket.gethostname(), "pid": os.getpid(),
            "started": time.time(),
            "jobs": [{"method": j.method, "dataset": j.dataset, "scene": j.scene, "rate": j.rate.name} for j in jobs]}
    atomic_write_bytes(path, (json.dumps(data, indent=1) + "\n").encode("utf-8"))
    return path


def read_manifests(out: Path) -> list[dict]:
    found = []
    for p in sorted(manifest_dir(out).glob("*.manifest.json")):
        try:
            found.append(json.loads(p.read_text(encoding="utf-8")))
        except (OSError, ValueError):
            continue
    return found


def run_sweep(jobs: list, opts, existing: dict, reporter) -> list:
    """Run ``jobs`` on ``opts.sweep``'s executor; one ``runner.JobOutcome`` per job, in job order.
    ``reporter.job_finished`` is called as jobs finish (from the executor's threads, one at a time);
    ``reporter.worker_event(worker, event)``, when the reporter has it, gets every worker event."""
    from evalkit.runner import JobOutcome, RunError

    sw: SweepOptions = opts.sweep
    if sw.executor not in EXECUTORS:
        raise RunError(f"--executor {sw.executor!r}: one of {', '.join(EXECUTORS[1:])}")
    sweep = new_sweep_id()
    write_manifest(opts.out, sweep, jobs, sw)
    by_label = {j.label: j for j in jobs}
    lock = threading.Lock()
    done: dict[str, JobOutcome] = {}
    claimed: dict[str, JobOutcome] = {}
    worker_event = getattr(reporter, "worker_event", None)

    def outcome_of(label: str, status: str, error: str | None) -> JobOutcome:
        job = by_label[label]
        rec = None
        if status in ("ok", "skipped", "failed"):
            try:
                rec = read_record(record_path(opts.out, job.dataset, job.scene, job.method, job.rate.name))
            except Exception:
                rec = None
        return JobOutcome(job, status, rec, error)

    def on_event(worker: str, ev: dict) -> None:
        with lock:
            if worker_event is not None:
                worker_event(worker, ev)
            if ev.get("kind") == "finished" and ev["label"] in by_label and ev["label"] not in done:
                o = outcome_of(ev["label"], ev["status"], ev.get("error"))
                if o.status == "claimed":  # reported at the end, unless a worker of ours runs it
                    claimed.setdefault(o.job.label, o)
                else:
                    done[o.job.label] = o
                    reporter.job_finished(o)

    todo = [j for j in jobs if j.label not in existing]
    for j in jobs:
        if j.label in existing:
            on_event("-", {"kind": "finished", "label": j.label, "status": "skipped", "error": None})
    if sw.executor == "local":
        import torch

        from evalkit.runner import resolve_device
        from evalkit.sweep.local import run_local, visible_gpus

        gpus = visible_gpus() if sw.gpus == ["all"] else sw.gpus  # None: one worker (or --workers) on --device
        if not gpus:
            resolve_device(opts.device)  # a bad --device is the request's error, before any worker starts
        elif sw.gpus != ["all"] and not torch.cuda.is_available():
            raise RunError(f"--gpus {','.join(gpus)}: CUDA is not available on this machine "
                           "(run without --gpus, or with --workers N for CPU workers)")
        results = run_local(todo, opts, sweep=sweep, gpus=gpus, jobs_per_gpu=sw.jobs_per_gpu, workers=sw.workers,
                            on_event=on_event, plugins=sw.plugins)
    elif sw.executor == "slurm":
        from evalkit.sweep.slurm import run_slurm

        results = run_slurm(todo, opts, sweep=sweep, sw=sw, on_event=on_event)
    elif sw.executor == "ray":
        from evalkit.sweep.ray_executor import run_ray

        results = run_ray(todo, opts, sweep=sweep, sw=sw, on_event=on_event)
    else:
        raise RunError("the inline executor runs in runner.run, not here")
    for label, (status, err) in results.items():
        on_event("-", {"kind": "finished", "label": label, "status": status, "error": err})
    for label, o in claimed.items():
        if label not in done:
            done[label] = o
            reporter.job_finished(o)
    return [done.get(j.label) or JobOutcome(j, "claimed", error="not run") for j in jobs]
