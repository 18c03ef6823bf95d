"""Several seeds of one job in a report: one row of seed means per job, with the PSNR spread.

A report reads one record per run (``results.read_stores(..., seeds=True)``: seeds of a job must
agree in ``results.RUN_SETTINGS``). Its tables, BD values and plots then use one point per job, the
mean over the job's successful seeds, so that a method's curve is not one lucky or unlucky run:

* metrics, size and primitive count: the mean over the ok seeds (a metric missing in one of them
  leaves the mean missing, never a subset mean);
* FPS and times: the mean over the seeds timed alone on their GPU; where every seed was timed under
  contention, the job is marked contended (and the tables leave its FPS out);
* ``seeds`` (how many ok runs the means cover), ``psnr_sd`` (the sample standard deviation of PSNR
  over those runs; NaN for one) and ``failed_seeds``;
* bytes per bitstream component (``seed_mean_components``): the mean over the ok runs.

A job whose seeds all failed stays one failed row.
"""
from __future__ import annotations

import pandas as pd

from evalkit.results import METRIC_NAMES, TIMING_NAMES

JOB = ["dataset", "scene", "method", "rate"]
AVERAGED = (*METRIC_NAMES, "size_bytes", "size_mb", "num_primitives")
TIMED = ("fps", "ms_per_frame", *TIMING_NAMES)
SEED_COLUMNS = ("seeds", "psnr_sd", "failed_seeds")
_AVERAGED = "(metrics, size, primitives; FPS and times over the runs timed alone)"
FOOTNOTE = (f"Seeds: the successful runs averaged in a row {_AVERAGED}; PSNR sd: their sample standard deviation. "
            "BD values and plots use these means.")
SUMMARY_FOOTNOTE = (f"Seeds per scene: the successful runs averaged in each scene's value {_AVERAGED}; the scene "
                    "tables give their PSNR sd. BD values and plots use these means.")


def _seed_text(seeds: pd.Series) -> str:
    return ",".join(str(s) for s in sorted(seeds))


def seed_means(df: pd.DataFrame) -> pd.DataFrame:
    """One row per job of ``results.records_to_frame``'s frame (see the module docstring)."""
    rows = []
    for _, g in df.groupby(JOB, sort=False, dropna=False):
        ok = g[g["status"] == "ok"]
        failed = g[g["status"] != "ok"]
        if ok.empty:
            row = g.iloc[0].copy()
            row["seeds"], row["psnr_sd"] = 0, float("nan")
        else:
            row = ok.iloc[0].copy()
            for c in AVERAGED:
                row[c] = ok[c].mean(skipna=False)
            alone = ok[~ok["timings_contended"].astype(bool)]
            timed = alone if not alone.empty else ok
            for c in TIMED:
                row[c] = timed[c].mean()
            row["timings_contended"] = alone.empty
            row["quick"] = bool(ok["quick"].any())
            row["draws_nothing"] = bool(ok["draws_nothing"].astype(bool).any())
            row["timed_on"] = ", ".join(sorted({str(n) for n in timed["timed_on"].dropna()})) or None
            row["seeds"] = len(ok)
            # skipna=False as for the mean: one seed without PSNR leaves the spread missing
            row["psnr_sd"] = ok["psnr"].std(ddof=1, skipna=False) if len(ok) > 1 else float("nan")
            if not failed.empty:
                row["error"] = f"seed(s) {_seed_text(failed['seed'])} failed: " + "; ".join(
                    str(e) for e in failed["error"].dropna().unique())
        row["failed_seeds"] = len(failed)
        rows.append(row)
    out = pd.DataFrame(rows, columns=[*df.columns, *SEED_COLUMNS]).reset_index(drop=True)
    return out.astype({"seeds": int, "failed_seeds": int, "psnr_sd": float})


def seed_mean_components(comps: pd.DataFrame, jobs: pd.DataFrame) -> pd.DataFrame:
    """``results.components_frame`` of the ok records, one row per (job, component): the bytes
    averaged over the job's ok seeds (a component absent from a seed's file counts as 0 bytes);
    ``jobs``: the ``seed_means`` frame."""
    if comps.empty:
        return comps
    key = ["method", "dataset", "scene", "rate"]
    out = comps.groupby([*key, "component"], as_index=False, sort=False)[["bytes", "mb"]].sum()
    n = out[key].merge(jobs[[*key, "seeds"]], on=key, how="left")["seeds"].clip(lower=1).to_numpy()
    out["bytes"], out["mb"] = out["bytes"] / n, out["mb"] / n
    return out


def several_seeds(df: pd.DataFrame) -> bool:
    """Whether any row of a ``seed_means`` frame averages more than one run."""
    return "seeds" in df and bool((df["seeds"] > 1).any())


def seed_range(counts: pd.Series) -> str:
    """'3', or '1-3' where the scenes of a mean have different seed counts."""
    lo, hi = int(counts.min()), int(counts.max())
    return str(lo) if lo == hi else f"{lo}-{hi}"


__all__ = ["FOOTNOTE", "SUMMARY_FOOTNOTE", "seed_mean_components", "seed_means", "seed_range", "several_seeds"]
