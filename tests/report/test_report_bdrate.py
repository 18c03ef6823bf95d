"""BD-rate / BD-PSNR against closed-form cases and an independent pchip integration."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy.interpolate import PchipInterpolator

from evalkit.report.bdrate import bd_pair, bd_summary, bd_table, choose_bd_anchor

RATES = np.array([1.0e6, 1.6e6, 2.5e6, 4.0e6])
PSNR = np.array([29.0, 30.1, 30.9, 31.5])


def independent_bd_psnr(ra, da, rt, dt) -> float:
    """Textbook BD-PSNR: PSNR as a pchip function of log10(rate), integrated over the overlap."""
    la, lt = np.log10(ra), np.log10(rt)
    lo, hi = max(la.min(), lt.min()), min(la.max(), lt.max())
    pa, pt = PchipInterpolator(la, da), PchipInterpolator(lt, dt)
    return (pt.integrate(lo, hi) - pa.integrate(lo, hi)) / (hi - lo)


def independent_bd_rate(ra, da, rt, dt) -> float:
    """Textbook BD-rate: log10(rate) as a pchip function of PSNR, mean difference over the overlap."""
    lo, hi = max(da.min(), dt.min()), min(da.max(), dt.max())
    fa, ft = PchipInterpolator(da, np.log10(ra)), PchipInterpolator(dt, np.log10(rt))
    avg = (ft.integrate(lo, hi) - fa.integrate(lo, hi)) / (hi - lo)
    return (10 ** avg - 1) * 100


def test_rate_scaled_by_08_at_equal_psnr_is_minus_20_percent() -> None:
    v = bd_pair(RATES, PSNR, 0.8 * RATES, PSNR)
    assert v.bd_rate == pytest.approx(-20.0, abs=1e-9)
    assert v.bd_psnr > 0  # fewer bytes for the same PSNR: higher PSNR at equal bytes


def test_psnr_plus_half_db_at_equal_rates() -> None:
    v = bd_pair(RATES, PSNR, RATES, PSNR + 0.5)
    assert v.bd_psnr == pytest.approx(0.5, abs=1e-12)
    assert v.bd_rate < 0 and "PSNR ranges overlap 67% only" in v.note  # the caveat is reported


def test_identical_curves_give_zero() -> None:
    v = bd_pair(RATES, PSNR, RATES[::-1], PSNR[::-1])  # order of points must not matter
    assert v.bd_rate == pytest.approx(0.0, abs=1e-12) and v.bd_psnr == pytest.approx(0.0, abs=1e-12)


def test_nontrivial_curves_match_independent_pchip_integration() -> None:
    ra = np.array([0.9e6, 1.5e6, 2.2e6, 3.9e6])
    da = np.array([28.7, 29.9, 30.6, 31.4])
    rt = np.array([1.1e6, 1.7e6, 3.0e6])  # fewer points, shifted range, different shape
    dt = np.array([29.6, 30.5, 31.2])
    v = bd_pair(ra, da, rt, dt)
    want_rate, want_psnr = independent_bd_rate(ra, da, rt, dt), independent_bd_psnr(ra, da, rt, dt)
    assert v.bd_rate == pytest.approx(want_rate, rel=1e-9)
    assert v.bd_psnr == pytest.approx(want_psnr, rel=1e-9)
    # Sanity of the reference itself: this test curve is better than the anchor.
    assert want_rate < 0 and want_psnr > 0


def test_two_points_suffice_and_one_point_is_refused_with_a_reason() -> None:
    v = bd_pair(RATES[:2], PSNR[:2], 0.5 * RATES[:2], PSNR[:2])
    assert v.bd_rate == pytest.approx(-50.0, abs=1e-9)
    one = bd_pair(RATES[:1], PSNR[:1], RATES, PSNR)
    assert one.bd_rate is None and one.bd_psnr is None and "anchor has 1 rate point" in one.note


def test_non_monotonic_psnr_disables_bd_rate_only() -> None:
    bumpy = np.array([29.5, 30.2, 30.0, 31.6])
    v = bd_pair(RATES, PSNR, RATES, bumpy)
    assert v.bd_rate is None and "test PSNR does not increase strictly" in v.note
    # PSNR as a function of rate is still a function, so BD-PSNR stays defined.
    assert v.bd_psnr == pytest.approx(independent_bd_psnr(RATES, PSNR, RATES, bumpy), rel=1e-9)


def test_disjoint_curves_are_na_not_a_number() -> None:
    v = bd_pair(RATES, PSNR, RATES * 100, PSNR + 10)
    assert v.bd_rate is None and v.bd_psnr is None and "do not overlap" in v.note


def _frame(curves: dict[tuple[str, str], tuple[np.ndarray, np.ndarray]]) -> pd.DataFrame:
    rows = []
    for (method, scene), (r, d) in curves.items():
        rows += [{"dataset": "dnerf", "scene": scene, "method": method, "rate": f"r{i}", "status": "ok",
                  "size_bytes": float(x), "psnr": float(y)} for i, (x, y) in enumerate(zip(r, d))]
    return pd.DataFrame(rows)


def test_table_averages_per_scene_values_and_picks_a_curve_anchor() -> None:
    df = _frame({("4dgs", "lego"): (RATES[:1] * 10, PSNR[:1]), ("4dgs", "mutant"): (RATES[:1] * 10, PSNR[:1]),
                 ("cc", "lego"): (RATES, PSNR), ("cc", "mutant"): (RATES, PSNR + 1),
                 ("adc", "lego"): (0.8 * RATES, PSNR), ("adc", "mutant"): (RATES, PSNR + 1.3)})
    # 4dgs has a single rate point, so the BD anchor falls back to the first method with a curve.
    assert choose_bd_anchor(df, "4dgs") == "adc"
    assert choose_bd_anchor(df, "cc") == "cc"
    per = bd_table(df, "cc").set_index(["scene", "method"])
    assert per.loc[("lego", "adc"), "bd_rate"] == pytest.approx(-20.0)
    assert per.loc[("mutant", "adc"), "bd_psnr"] == pytest.approx(0.3)
    assert np.isnan(per.loc[("lego", "4dgs"), "bd_rate"])
    summ = bd_summary(per.reset_index()).set_index("method")
    lego_m, mutant_m = per.loc[("lego", "adc"), "bd_psnr"], per.loc[("mutant", "adc"), "bd_psnr"]
    assert summ.loc["adc", "bd_psnr"] == pytest.approx((lego_m + mutant_m) / 2)
    assert summ.loc["adc", "scenes_rate"] == 2 and summ.loc["4dgs", "scenes_rate"] == 0
    assert np.isnan(summ.loc["4dgs", "bd_rate"])
