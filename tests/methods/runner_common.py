"""One method's jobs on the built-in synthetic scene through the runner, small and on CPU (the
runner tests of the methods share it)."""
from __future__ import annotations

from pathlib import Path

from evalkit.results import Record, read_record, record_path
from evalkit.runner import RunOptions, run


def run_synthetic(method: str, data_root: Path, out: Path, *, iterations: int, resolution_scale: float,
                  rates: list[str] | None = None) -> list[Record]:
    """Run ``method`` at ``rates`` (default: all of its rate points) on ``synthetic/spheres``;
    every job must end ok; returns their records in job order."""
    result = run(method, "synthetic", rates=rates, data_root=data_root,
                 opts=RunOptions(out=out, iterations=iterations, resolution_scale=resolution_scale, device="cpu",
                                 fps_warmup=1, fps_repeats=1))
    assert [o.status for o in result.outcomes] == ["ok"] * len(result.outcomes), [o.error for o in result.outcomes]
    return [read_record(record_path(out, "synthetic", "spheres", method, o.job.rate.name)) for o in result.outcomes]
