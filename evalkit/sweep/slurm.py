"""The SLURM executor, through ``submitit``: one job array, one array task per scene (its rate
points run one after the other in one task, sharing the loaded scene and shared stages).

Per-task GPUs / CPUs / memory / time come from the method spec's ``[resources]`` (the maximum over
the sweep's methods and datasets; ``--gpus-per-job``, ``--cpus-per-job``, ``--mem-gb``,
``--time-min`` override). Each task runs its jobs in a supervised child (crash isolation) and takes
them through claims, like a local worker. On preemption or timeout submitit calls ``checkpoint``:
the task stops its child (the job in flight is abandoned, its claim released; records are atomic)
and is requeued; the requeued task skips the jobs already recorded. submitit's logs and pickles go
beside the records, in ``<results>/.sweep/slurm/<sweep>/``.
"""
from __future__ import annotations

import dataclasses
import os
import socket
import time
from pathlib import Path

from evalkit.sweep.local import scene_groups
from evalkit.sweep.resources import sweep_resources
from evalkit.sweep.worker import executor_env

try:
    import submitit
    from submitit.helpers import Checkpointable
except ImportError:  # the [cluster] extra is not installed
    submitit = None
    Checkpointable = object

POLL_S = 2.0


class SweepTask(Checkpointable):
    """One array task: a scene's jobs under a supervised child worker."""

    def __init__(self, jobs: list, opts, sweep: str, info: dict, plugins: list[str]) -> None:
        self.jobs, self.opts, self.sweep, self.info, self.plugins = jobs, opts, sweep, info, plugins
        self._sup = None

    def __getstate__(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if k != "_sup"}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._sup = None

    def __call__(self) -> dict:
        from evalkit.sweep.isolation import Supervisor

        env = submitit.JobEnvironment()
        worker = f"slurm{env.job_id}"
        info = {**self.info, "host": socket.gethostname(), "worker": worker, "slurm_job": env.job_id,
                "gpu": os.environ.get("CUDA_VISIBLE_DEVICES")}
        self._sup = Supervisor(self.jobs, self.opts, sweep=self.sweep, worker=worker, env=executor_env(info),
                               plugins=self.plugins, executor=info)
        return self._sup.run()

    def checkpoint(self, *args, **kwargs):
        """Preempted or out of time: stop the child (claim released), then requeue this task."""
        if self._sup is not None:
            self._sup.stop()
            deadline = time.monotonic() + 20.0
            while self._sup.proc is not None and self._sup.proc.poll() is None and time.monotonic() < deadline:
                time.sleep(0.2)
            self._sup.kill()
        fresh = SweepTask(self.jobs, self.opts, self.sweep, self.info, self.plugins)
        return submitit.helpers.DelayedSubmission(fresh, *args, **kwargs)


def log_folder(out: Path, sweep: str) -> Path:
    return Path(out) / ".sweep" / "slurm" / sweep


def run_slurm(jobs: list, opts, *, sweep: str, sw, on_event) -> dict[str, tuple[str, str | None]]:
    from evalkit.runner import RunError

    if submitit is None:
        raise RunError("--executor slurm needs submitit: pip install 'evalkit[cluster]'")
    if not jobs:
        return {}
    res = sweep_resources(jobs, gpus=sw.gpus_per_job, cpus=sw.cpus_per_job, mem_gb=sw.mem_gb, time_min=sw.time_min)
    executor = submitit.AutoExecutor(folder=log_folder(opts.out, sweep), cluster=sw.slurm_cluster)
    params = {"name": f"evalkit-{sweep}", "timeout_min": res.time_min, "gpus_per_node": res.gpus,
              "cpus_per_task": res.cpus, "mem_gb": res.mem_gb, "slurm_array_parallelism": sw.slurm_array_parallelism,
              **sw.slurm_extra}
    if sw.slurm_partition:
        params["slurm_partition"] = sw.slurm_partition
    if executor.cluster == "slurm":
        params.setdefault("slurm_additional_parameters", {}).setdefault("requeue", True)
    executor.update_parameters(**params)
    task_opts = dataclasses.replace(opts, threads=opts.threads or res.cpus)
    info = {"name": "slurm", "sweep": sweep, "resources": res.to_dict(), "cluster": executor.cluster}
    groups = scene_groups(jobs)
    with executor.batch():
        submitted = [executor.submit(SweepTask(g, task_opts, sweep, info, sw.plugins)) for g in groups]
    results: dict[str, tuple[str, str | None]] = {}
    waiting = dict(zip(submitted, groups))
    while waiting:
        for job, group in list(waiting.items()):
            if not job.done():
                continue
            del waiting[job]
            try:
                outcomes = job.result()
            except Exception as exc:  # the task itself failed (not a job: those are records)
                first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
                outcomes = {j.label: ("failed", f"SLURM task {job.job_id} failed: {first}") for j in group}
            for j in group:  # stopped before its end (e.g. preempted without a requeue): pending again
                outcomes.setdefault(j.label, ("claimed", f"not run: SLURM task {job.job_id} ended first; "
                                                         "rerun the sweep to finish it"))
            for label, (status, err) in outcomes.items():
                results[label] = (status, err)
                on_event(f"slurm{job.job_id}", {"kind": "finished", "label": label, "status": status, "error": err})
        if waiting:
            time.sleep(POLL_S)
    return results
