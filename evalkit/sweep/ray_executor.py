"""The Ray executor, for clusters without SLURM: ``ray.init(address=...)`` (``--ray-address``;
none starts a local Ray), one task per job with ``num_gpus`` from the method spec's
``[resources]`` (1 for GPU jobs, 0 with ``--device cpu``), ``num_cpus`` likewise.

Each task runs its job in a supervised child (crash isolation) under the job's claim, so Ray
tasks, local workers and SLURM tasks can share a results folder. Rate points of one scene run as
parallel tasks; their shared stage (4DGS-CC's coarse stage) is computed by the first and loaded
by the others from ``<results>/<dataset>/<scene>/_shared/`` (``evalkit.sweep.shared``).
"""
from __future__ import annotations

import os
import socket

from evalkit.sweep.resources import sweep_resources
from evalkit.sweep.worker import executor_env


def _task(job, opts, sweep: str, info: dict, plugins: list[str]) -> dict:
    from evalkit.sweep.isolation import Supervisor

    import ray

    ctx = ray.get_runtime_context()
    worker = f"ray-{ctx.get_task_id()[:12]}"
    info = {**info, "host": socket.gethostname(), "worker": worker, "node": ctx.get_node_id()[:12],
            "gpu": os.environ.get("CUDA_VISIBLE_DEVICES")}
    sup = Supervisor([job], opts, sweep=sweep, worker=worker, env=executor_env(info), plugins=plugins, executor=info)
    return sup.run()


def _env_vars() -> dict[str, str]:
    """What Ray's workers need of this process's environment (the specs, the caches, plugins)."""
    return {k: v for k, v in os.environ.items() if k.startswith("EVALKIT_") or k == "PYTHONPATH"}


def run_ray(jobs: list, opts, *, sweep: str, sw, on_event) -> dict[str, tuple[str, str | None]]:
    from evalkit.runner import RunError

    try:
        import ray
    except ImportError:
        raise RunError("--executor ray needs ray: pip install 'evalkit[cluster]'") from None
    if not jobs:
        return {}
    res = sweep_resources(jobs, gpus=sw.gpus_per_job, cpus=sw.cpus_per_job, mem_gb=sw.mem_gb, time_min=sw.time_min)
    on_gpu = not (opts.device or "").startswith("cpu")
    num_gpus = res.gpus if on_gpu else (sw.gpus_per_job or 0)
    num_cpus = res.cpus if (on_gpu or sw.cpus_per_job) else 1
    started_here = not ray.is_initialized()
    if started_here:
        kw = {"address": sw.ray_address, "runtime_env": {"env_vars": _env_vars()}, "log_to_driver": False}
        if sw.ray_address is None:  # a local Ray: no dashboard, only this machine's CPUs
            kw.update(include_dashboard=False, num_cpus=os.cpu_count() or 1)
            num_cpus = min(num_cpus, os.cpu_count() or 1)
        ray.init(**kw)
    try:
        import dataclasses

        task_opts = dataclasses.replace(opts, threads=opts.threads or num_cpus)
        info = {"name": "ray", "sweep": sweep, "resources": {"num_gpus": num_gpus, "num_cpus": num_cpus}}
        remote = ray.remote(num_gpus=num_gpus, num_cpus=num_cpus, max_retries=1)(_task)
        refs = {remote.remote(j, task_opts, sweep, info, sw.plugins): j for j in jobs}
        results: dict[str, tuple[str, str | None]] = {}
        while refs:
            ready, _ = ray.wait(list(refs), num_returns=1, timeout=2.0)
            for ref in ready:
                job = refs.pop(ref)
                try:
                    outcomes = ray.get(ref)
                except Exception as exc:  # the task itself failed (a node lost...), not the job
                    first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
                    outcomes = {job.label: ("failed", f"Ray task failed: {first}")}
                for label, (status, err) in outcomes.items():
                    results[label] = (status, err)
                    on_event("ray", {"kind": "finished", "label": label, "status": status, "error": err})
        return results
    finally:
        if started_here:
            ray.shutdown()
