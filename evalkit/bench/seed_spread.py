"""Run-to-run spread: the same jobs measured in several results folders (one per seed or repeat).

    python -m evalkit.bench.seed_spread results/reference/h200 results/seeds/h200x4_b86558c/seed1 ... [--method 4dgs]

Groups the ``ok`` records of every folder by job (dataset, scene, method, rate) and prints, per job,
the number of runs, their seeds, and PSNR mean, sample standard deviation, minimum and maximum, with
the mean SSIM, size and primitive count. A difference between two single runs that is smaller than
this spread says nothing about the methods. Runs of one job must share its settings (schedule,
image scale, configuration, rate point; a mismatch is refused, naming the folders); the code
version is not checked (records made on a copy of the tree can name a stale commit), so say in the
folders' records which code ran. A folder given twice is refused: its runs would count twice.
"""
from __future__ import annotations

import argparse
import math
import statistics
from collections import Counter
from pathlib import Path

import pandas as pd
from rich.console import Console
from rich.table import Table

from evalkit.results import Record, RecordError, read_records, settings_diff


def gather(folders: list[Path], method: str | None = None) -> dict[tuple[str, ...], list[tuple[Path, Record]]]:
    """job key -> [(folder, record)] over ``folders``, ok records only (of ``method`` when given).
    Raises ``RecordError`` for a folder given twice and for runs of one job with other settings."""
    jobs: dict[tuple[str, ...], list[tuple[Path, Record]]] = {}
    seen: dict[Path, Path] = {}
    for folder in folders:
        if folder.resolve() in seen:
            raise RecordError(folder, f"given twice (also as {seen[folder.resolve()]}): its runs would count twice")
        seen[folder.resolve()] = folder
        records = read_records(folder)  # names a missing folder, a corrupt record, seed folders below
        if not records:
            raise RecordError(folder, "no records in the store layout (<dataset>/<scene>/<method>/<rate>.json)")
        for rec in records:
            if rec.status != "ok" or (method and rec.method != method):
                continue
            runs = jobs.setdefault(rec.key, [])
            if runs and (diff := settings_diff(runs[0][1], rec)):
                raise RecordError(folder, f"job {'/'.join(rec.key)} ran here with other settings than in "
                                          f"{runs[0][0]} ({', '.join(diff)} differ): not runs of one experiment")
            runs.append((folder, rec))
    return jobs


def _seeds(recs: list[Record]) -> str:
    """'0,1,2'; a seed run more than once as '0x2' (repeats: the same seed on other machines)."""
    counts = Counter(r.seed for r in recs)
    return ",".join(f"{s}x{n}" if n > 1 else str(s) for s, n in sorted(counts.items()))


def _stats(values: list[float | None]) -> tuple[float, float, float, float]:
    """(mean, sample std, min, max); all NaN when any run lacks the value (never a partial mean),
    std NaN for a single run."""
    if not values or any(v is None for v in values):
        return (math.nan,) * 4
    std = statistics.stdev(values) if len(values) > 1 else math.nan
    return statistics.fmean(values), std, min(values), max(values)


def spread(folders: list[Path], method: str | None = None) -> pd.DataFrame:
    """One row per job: runs, seeds, PSNR mean / sample std / min / max, means of SSIM, size (bytes)
    and primitives. A value missing in any run leaves that value's statistics NaN."""
    rows = []
    jobs = gather(folders, method)
    for key in sorted(jobs, key=lambda k: (jobs[k][0][1].dataset, jobs[k][0][1].scene, k)):
        recs = [r for _, r in jobs[key]]
        first = recs[0]
        mean, std, lo, hi = _stats([r.metrics.get("psnr") for r in recs])
        rows.append({
            "dataset": first.dataset, "scene": first.scene, "method": first.method, "rate": first.rate,
            "runs": len(recs), "seeds": _seeds(recs),
            "psnr_mean": mean, "psnr_std": std, "psnr_min": lo, "psnr_max": hi,
            "ssim_mean": _stats([r.metrics.get("ssim") for r in recs])[0],
            "size_bytes_mean": _stats([(r.size or {}).get("total_bytes") for r in recs])[0],
            "primitives_mean": _stats([r.num_primitives for r in recs])[0],
        })
    return pd.DataFrame(rows)


def _fmt(v: float, spec: str, scale: float = 1.0) -> str:
    return "—" if pd.isna(v) else format(v / scale, spec)


def table(df: pd.DataFrame) -> Table:
    out = Table("dataset", "scene", "method", "rate", "runs", "seeds", "PSNR mean", "PSNR std", "PSNR min-max",
                "SSIM mean", "size mean (MB)", "primitives mean", title="run-to-run spread")
    for r in df.itertuples():
        span = "—" if pd.isna(r.psnr_min) else f"{r.psnr_min:.2f}-{r.psnr_max:.2f}"
        out.add_row(r.dataset, r.scene, r.method, r.rate, str(r.runs), r.seeds, _fmt(r.psnr_mean, ".2f"),
                    _fmt(r.psnr_std, ".2f"), span, _fmt(r.ssim_mean, ".4f"), _fmt(r.size_bytes_mean, ".2f", 1e6),
                    _fmt(r.primitives_mean, ",.0f"))
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("folders", type=Path, nargs="+", help="results folders, one per run (e.g. per seed)")
    ap.add_argument("--method", default=None, help="only this method's records")
    args = ap.parse_args(argv)
    try:
        df = spread(args.folders, args.method)
    except RecordError as exc:  # a missing folder, a corrupt record, a run counted twice: one line
        raise SystemExit(f"error: {exc}") from None
    if df.empty:
        raise SystemExit("error: no ok records" + (f" of method {args.method}" if args.method else ""))
    # wide enough that piped output keeps whole cells (rich falls back to 80 columns)
    Console(width=max(160, Console().width)).print(table(df))


if __name__ == "__main__":
    main()
