"""Bjontegaard deltas (BD-rate, BD-PSNR) between rate-distortion curves.

Computed with the ``bjontegaard`` package, method="pchip" (piecewise cubic Hermite
interpolation, as in the JVET common test conditions), rate = bitstream bytes, distortion =
PSNR in dB. Both curves need at least 2 points (pchip on 2 points is the straight line).
Per-scene values are computed on each scene's curves and then averaged over scenes
(per-scene values averaged, not averaged curves).

Which anchor: an explicit one when given; otherwise the compression anchor (e.g. "4dgs")
if it has >= 2 rate points, else the alphabetically first method that has >= 2 rate
points in the dataset. A single-rate method (the uncompressed 4DGS baseline) has no
curve, so BD against it is undefined; its compression ratio is reported instead.
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Sequence

import bjontegaard as bd
import numpy as np
import pandas as pd

MIN_POINTS = 2
MIN_OVERLAP = 0.75  # the package's default threshold for warning about short overlaps


@dataclass(frozen=True)
class BDValue:
    bd_rate: float | None  # percent; negative = fewer bytes at equal PSNR
    bd_psnr: float | None  # dB; positive = higher PSNR at equal bytes
    note: str | None  # why a value is missing, or a caveat (short overlap)


def _overlap(a: np.ndarray, b: np.ndarray) -> float:
    lo, hi = max(a.min(), b.min()), min(a.max(), b.max())
    span = max(a.max(), b.max()) - min(a.min(), b.min())
    return max(hi - lo, 0.0) / span if span > 0 else 0.0


def _curve(rates: Sequence[float], psnrs: Sequence[float], who: str) -> tuple[np.ndarray, np.ndarray] | str:
    r = np.asarray(rates, dtype=np.float64)
    d = np.asarray(psnrs, dtype=np.float64)
    keep = np.isfinite(r) & np.isfinite(d) & (r > 0)
    r, d = r[keep], d[keep]
    if len(r) < MIN_POINTS:
        return f"{who} has {len(r)} rate point(s); BD needs >= {MIN_POINTS}"
    order = np.argsort(r, kind="stable")
    r, d = r[order], d[order]
    if np.any(np.diff(r) <= 0):
        return f"{who} has two points with the same size"
    return r, d


def bd_pair(rate_anchor: Sequence[float], psnr_anchor: Sequence[float],
            rate_test: Sequence[float], psnr_test: Sequence[float]) -> BDValue:
    """BD-rate (%) and BD-PSNR (dB) of test vs anchor; None with a reason where undefined."""
    a = _curve(rate_anchor, psnr_anchor, "anchor")
    t = _curve(rate_test, psnr_test, "test")
    if isinstance(a, str) or isinstance(t, str):
        return BDValue(None, None, a if isinstance(a, str) else t)
    (ra, da), (rt, dt) = a, t
    notes: list[str] = []

    bd_psnr: float | None = None
    ov = _overlap(np.log10(ra), np.log10(rt))
    if ov == 0:
        notes.append("BD-PSNR n/a: size ranges do not overlap")
    else:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            bd_psnr = float(bd.bd_psnr(ra, da, rt, dt, method="pchip",
                                       require_matching_points=False, min_overlap=0.0))
        if ov < MIN_OVERLAP:
            notes.append(f"size ranges overlap {ov:.0%} only")

    bd_rate: float | None = None
    # BD-rate interpolates log-rate as a function of PSNR, so PSNR must rise with rate.
    if np.any(np.diff(da) <= 0) or np.any(np.diff(dt) <= 0):
        who = "anchor" if np.any(np.diff(da) <= 0) else "test"
        notes.append(f"BD-rate n/a: {who} PSNR does not increase strictly with size")
    else:
        ov = _overlap(da, dt)
        if ov == 0:
            notes.append("BD-rate n/a: PSNR ranges do not overlap")
        else:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                bd_rate = float(bd.bd_rate(ra, da, rt, dt, method="pchip",
                                           require_matching_points=False, min_overlap=0.0))
            if ov < MIN_OVERLAP:
                notes.append(f"PSNR ranges overlap {ov:.0%} only")
    for v in (bd_rate, bd_psnr):
        if v is not None and not math.isfinite(v):
            raise ArithmeticError(f"bjontegaard returned a non-finite value ({v}) for finite curves")
    return BDValue(bd_rate, bd_psnr, "; ".join(notes) or None)


def _ok_points(df: pd.DataFrame) -> pd.DataFrame:
    ok = df[(df["status"] == "ok") & df["size_bytes"].notna() & df["psnr"].notna()]
    return ok


def rate_point_counts(df: pd.DataFrame) -> pd.Series:
    """Most usable rate points any scene has, per method."""
    ok = _ok_points(df)
    if ok.empty:
        return pd.Series(dtype=int)
    return ok.groupby(["method", "scene"]).size().groupby("method").max()


def choose_bd_anchor(df: pd.DataFrame, preferred: str | None) -> str | None:
    """The BD anchor for one dataset's records (see the module docstring)."""
    counts = rate_point_counts(df)
    if preferred is not None and counts.get(preferred, 0) >= MIN_POINTS:
        return preferred
    candidates = sorted(m for m, n in counts.items() if n >= MIN_POINTS)
    return candidates[0] if candidates else None


BD_COLUMNS = ["dataset", "scene", "method", "anchor", "bd_rate", "bd_psnr", "note"]


def bd_table(df: pd.DataFrame, anchor: str) -> pd.DataFrame:
    """Per-scene BD values of every other method against ``anchor`` (rows of one or more datasets)."""
    ok = _ok_points(df)
    rows = []
    for (dataset, scene), grp in ok.groupby(["dataset", "scene"], sort=True):
        anc = grp[grp["method"] == anchor]
        for method in sorted(set(grp["method"]) - {anchor}):
            tst = grp[grp["method"] == method]
            if anc.empty:
                val = BDValue(None, None, f"anchor {anchor} has no record for this scene")
            else:
                val = bd_pair(anc["size_bytes"], anc["psnr"], tst["size_bytes"], tst["psnr"])
            rows.append({"dataset": dataset, "scene": scene, "method": method, "anchor": anchor,
                         "bd_rate": val.bd_rate, "bd_psnr": val.bd_psnr, "note": val.note})
    return pd.DataFrame(rows, columns=BD_COLUMNS).astype({"bd_rate": float, "bd_psnr": float})


def bd_summary(per_scene: pd.DataFrame) -> pd.DataFrame:
    """Mean over scenes of the per-scene values (per-scene values averaged), per dataset and method.

    ``scenes_rate`` / ``scenes_psnr`` count the scenes whose value entered the mean, and
    ``scenes`` the scenes with a row at all, so a partial average is visible.
    """
    rows = []
    for (dataset, method), grp in per_scene.groupby(["dataset", "method"], sort=True):
        r, p = grp["bd_rate"].dropna(), grp["bd_psnr"].dropna()
        rows.append({"dataset": dataset, "method": method, "anchor": grp["anchor"].iloc[0],
                     "bd_rate": r.mean() if len(r) else float("nan"),
                     "bd_psnr": p.mean() if len(p) else float("nan"),
                     "scenes_rate": len(r), "scenes_psnr": len(p), "scenes": len(grp)})
    return pd.DataFrame(rows, columns=["dataset", "method", "anchor", "bd_rate", "bd_psnr",
                                       "scenes_rate", "scenes_psnr", "scenes"])
