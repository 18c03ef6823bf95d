"""Per-job resource limits (GPUs, CPUs, memory, time) from the method spec.

A method spec may hold a ``[resources]`` table, with per-dataset sub-tables overriding it::

    [resources]
    gpus = 1
    cpus = 8
    mem_gb = 32
    time_min = 120
    [resources.neu3d]
    time_min = 240

The SLURM and Ray executors request these per job (CLI flags override them), and a claim older
than ``time_min`` is stale: its worker is taken to be gone.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, replace

from evalkit.specs import load_method_spec

KEYS = ("gpus", "cpus", "mem_gb", "time_min")


@dataclass(frozen=True)
class Resources:
    gpus: int = 1
    cpus: int = 8
    mem_gb: int = 32
    time_min: int = 240

    @property
    def time_limit_s(self) -> float:
        return 60.0 * self.time_min

    def override(self, **kw) -> "Resources":
        """These limits with the given (non-None) values replaced (CLI overrides)."""
        return replace(self, **{k: int(v) for k, v in kw.items() if v is not None and k in KEYS})

    def to_dict(self) -> dict:
        return asdict(self)


def job_resources(method: str, dataset: str) -> Resources:
    """The method spec's ``[resources]`` for ``dataset`` (defaults where it says nothing)."""
    table = load_method_spec(method).resources
    values = {k: v for k, v in table.items() if k in KEYS}
    values.update({k: v for k, v in table.get(dataset, {}).items() if k in KEYS})
    return Resources().override(**values)


def sweep_resources(jobs, **overrides) -> Resources:
    """One request for a set of jobs (a SLURM array asks the same of every task): the maximum of
    each limit over the jobs' methods and datasets, then the CLI overrides."""
    res = [job_resources(j.method, j.dataset) for j in {(j.method, j.dataset): j for j in jobs}.values()]
    if not res:
        return Resources().override(**overrides)
    top = Resources(**{k: max(getattr(r, k) for r in res) for k in KEYS})
    return top.override(**overrides)
