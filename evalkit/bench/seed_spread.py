"""Run-to-run spread: the same jobs measured in several results folders (one per seed or repeat).

    python -m evalkit.bench.seed_spread results/reference/h200 results/seeds/h200x4/seed1 ... [--method 4dgs]

Groups the ``ok`` records of every folder by job (dataset, scene, method, rate) and prints, per job,
the number of runs, their seeds, and PSNR mean, sample standard deviation, minimum and maximum, with
the mean SSIM, size and primitive count. A difference between two single runs that is smaller than
this spread says nothing about the methods. Two records of one job with the same seed are refused:
the same run counted twice would understate the spread.
"""
from __future__ import annotations

import argparse
import statistics
from pathlib import Path

import pandas as pd
from rich.console import Console
from rich.table import Table

from evalkit.results import Record, RecordError, nested_stores, read_records, record_files


def gather(folders: list[Path], method: str | None = None) -> dict[tuple[str, ...], list[tuple[Path, Record]]]:
    """job key -> [(folder, record)] over ``folders``, ok records only (of ``method`` when given)."""
    jobs: dict[tuple[str, ...], list[tuple[Path, Record]]] = {}
    for folder in folders:
        if not folder.is_dir():
            raise RecordError(folder, "no such results folder")
        if not record_files(folder):
            inner = nested_stores(folder)
            hint = f"; these folders below it have records: {', '.join(map(str, inner))}" if inner else ""
            raise RecordError(folder, f"no records in the store layout (<dataset>/<scene>/<method>/<rate>.json){hint}")
        for rec in read_records(folder):
            if rec.status != "ok" or (method and rec.method != method):
                continue
            runs = jobs.setdefault(rec.key, [])
            for other_folder, other in runs:
                if other.seed == rec.seed:
                    raise RecordError(folder, f"job {'/'.join(rec.key)} has seed {rec.seed} here and in "
                                              f"{other_folder}: the same run twice")
            runs.append((folder, rec))
    return jobs


def _mean(values: list[float | None]) -> float:
    known = [v for v in values if v is not None]
    return statistics.fmean(known) if len(known) == len(values) and known else float("nan")


def spread(folders: list[Path], method: str | None = None) -> pd.DataFrame:
    """One row per job: runs, seeds, PSNR mean / sample std (NaN for one run) / min / max, means of
    SSIM, size (bytes) and primitives."""
    rows = []
    jobs = gather(folders, method)
    for key in sorted(jobs, key=lambda k: (jobs[k][0][1].dataset, jobs[k][0][1].scene, k)):
        runs = jobs[key]
        recs = [r for _, r in runs]
        psnr = [r.metrics.get("psnr") for r in recs]
        known = [p for p in psnr if p is not None]
        first = recs[0]
        rows.append({
            "dataset": first.dataset, "scene": first.scene, "method": first.method, "rate": first.rate, "runs": len(recs),
            "seeds": ",".join(str(r.seed) for r in sorted(recs, key=lambda r: r.seed)),
            "psnr_mean": _mean(psnr), "psnr_std": statistics.stdev(known) if len(known) > 1 else float("nan"),
            "psnr_min": min(known, default=float("nan")), "psnr_max": max(known, default=float("nan")),
            "ssim_mean": _mean([r.metrics.get("ssim") for r in recs]),
            "size_bytes_mean": _mean([(r.size or {}).get("total_bytes") for r in recs]),
            "primitives_mean": _mean([r.num_primitives for r in recs]),
        })
    return pd.DataFrame(rows)


def _table(df: pd.DataFrame) -> Table:
    table = Table("dataset", "scene", "method", "rate", "runs", "seeds", "PSNR mean", "PSNR std", "PSNR min-max",
                  "SSIM mean", "size mean (MB)", "primitives mean", title="run-to-run spread")
    for r in df.itertuples():
        std = "—" if pd.isna(r.psnr_std) else f"{r.psnr_std:.2f}"
        table.add_row(r.dataset, r.scene, r.method, r.rate, str(r.runs), r.seeds, f"{r.psnr_mean:.2f}", std,
                      f"{r.psnr_min:.2f}-{r.psnr_max:.2f}", f"{r.ssim_mean:.4f}",
                      f"{r.size_bytes_mean / 1e6:.2f}", f"{r.primitives_mean:,.0f}")
    return table


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
    Console().print(_table(df))


if __name__ == "__main__":
    main()
