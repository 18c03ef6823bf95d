"""The local executor: one worker per GPU (``--gpus 0,1,3`` or all), ``--jobs-per-gpu N`` workers
sharing a GPU, or ``--workers N`` CPU workers; each worker a supervised child process
(``isolation.Supervisor``) pinned with ``CUDA_VISIBLE_DEVICES`` and a share of the CPU threads.

Workers take jobs through claims, so several ``evalkit run`` processes (or other executors) on one
results folder split the work. Each worker starts on another scene and runs a scene's rate points
one after another, so they share its loaded scene and its shared stages. Ctrl-C stops every worker
(the job in flight is abandoned, its claim released, no record half-written: records and
bitstreams are written atomically) and starts no other job.
"""
from __future__ import annotations

import os
import socket
import threading
import time
from dataclasses import replace
from typing import Callable

from evalkit.sweep.isolation import Supervisor
from evalkit.sweep.worker import executor_env

STOP_GRACE_S = 30.0


def visible_gpus() -> list[str]:
    """Every GPU this process may use (``$CUDA_VISIBLE_DEVICES`` respected)."""
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is not None:
        return [g.strip() for g in env.split(",") if g.strip()]
    import torch

    return [str(i) for i in range(torch.cuda.device_count())]


def plan_slots(gpus: list[str] | None, jobs_per_gpu: int = 1, workers: int | None = None) -> list[tuple[str, str | None]]:
    """(worker name, GPU or None) per worker: ``jobs_per_gpu`` per GPU, or ``workers`` CPU workers."""
    if jobs_per_gpu < 1:
        raise ValueError(f"--jobs-per-gpu {jobs_per_gpu}: needs at least 1")
    if gpus:
        return [(f"gpu{g}" + (f".{k}" if jobs_per_gpu > 1 else ""), g) for g in gpus for k in range(jobs_per_gpu)]
    n = workers or 1
    return [(f"cpu{k}", None) for k in range(n)]


def scene_groups(jobs: list) -> list[list]:
    """Jobs grouped by (dataset, scene), in first-seen order."""
    groups: dict = {}
    for j in jobs:
        groups.setdefault((j.dataset, j.scene), []).append(j)
    return list(groups.values())


def rotated(groups: list[list], start: int) -> list:
    """The jobs of ``groups`` starting at group ``start``: workers begin on different scenes."""
    n = len(groups)
    return [j for k in range(n) for j in groups[(start + k) % n]] if n else []


def run_local(jobs: list, opts, *, sweep: str, gpus: list[str] | None, jobs_per_gpu: int = 1,
              workers: int | None = None, on_event: Callable[[str, dict], None] = lambda w, ev: None,
              plugins: list[str] | None = None) -> dict[str, tuple[str, str | None]]:
    slots = plan_slots(gpus, jobs_per_gpu, workers)
    threads = opts.threads or max(1, (os.cpu_count() or 1) // len(slots))
    groups = scene_groups(jobs)
    host = socket.gethostname()
    sups = []
    for i, (name, gpu) in enumerate(slots):
        env = {}
        info = {"name": "local", "sweep": sweep, "host": host, "worker": name, "threads": threads}
        slot_opts = replace(opts, threads=threads)
        if gpu is not None:
            env["CUDA_VISIBLE_DEVICES"] = gpu
            info.update(gpu=gpu, jobs_per_gpu=jobs_per_gpu, gpu_shared_by_design=jobs_per_gpu > 1)
            slot_opts = replace(slot_opts, device="cuda:0")
        env.update(executor_env(info))
        start = (i * len(groups)) // len(slots) if groups else 0
        sups.append(Supervisor(rotated(groups, start), slot_opts, sweep=sweep, worker=name, env=env,
                               on_event=on_event, plugins=plugins, executor=info))
    results: dict[str, tuple[str, str | None]] = {}
    ts = [threading.Thread(target=s.run, name=f"evalkit-{s.worker}", daemon=True) for s in sups]
    for t in ts:
        t.start()
    # Wait on the supervisors' own events, not Thread.join: a Ctrl-C that interrupts join() can leave
    # the thread marked as stopped while it still runs (CPython's tstate-lock wait).
    try:
        while True:
            if any(s.interrupted for s in sups):
                # a worker stopped on a Ctrl-C this process has not (yet) seen, or on a SIGTERM sent
                # to it alone: the whole sweep stops as on Ctrl-C (the other workers too) rather
                # than report that worker's jobs as left to others
                raise KeyboardInterrupt
            if all(s.done.is_set() for s in sups):
                break
            time.sleep(0.2)
    except KeyboardInterrupt:
        for s in sups:
            s.stop()
        deadline = time.monotonic() + STOP_GRACE_S
        while not all(s.done.is_set() for s in sups) and time.monotonic() < deadline:
            time.sleep(0.1)
        for s in sups:
            s.kill()
        raise
    for s in sups:
        merge_outcomes(results, s.outcomes)
    return results


_RANK = {"claimed": 0, "skipped": 1, "failed": 2, "ok": 3}


def merge_outcomes(into: dict, more: dict) -> dict:
    """One outcome per job over several workers: what ran it wins over "claimed" (another worker had it)."""
    for label, (status, err) in more.items():
        if label not in into or _RANK.get(status, 0) > _RANK.get(into[label][0], 0):
            into[label] = (status, err)
    return into
