"""The regression gate: equal and improved records pass, worse / missing / failed ones fail."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from evalkit.report.check import CheckError, check, load_reference, write_reference
from evalkit.results import Record, read_record, record_path, write_record
from report_fixtures import make_record

JOBS = [("4dgs-cc", "lego", "high", 2_000_000, 30.0), ("4dgs-cc", "lego", "low", 1_000_000, 29.0),
        ("adc-gs", "lego", "high", 3_000_000, 30.5)]


@pytest.fixture
def gated(tmp_path: Path) -> tuple[Path, Path]:
    results = tmp_path / "results"
    for method, scene, rate, size, psnr in JOBS:
        write_record(make_record(method, "dnerf", scene, rate, size, psnr),
                     record_path(results, "dnerf", scene, method, rate))
    ref = write_reference(results, tmp_path / "reference.json")
    return results, ref


def _edit(results: Path, method: str, rate: str, size_factor: float = 1.0, dpsnr: float = 0.0, **kw) -> None:
    path = record_path(results, "dnerf", "lego", method, rate)
    rec = read_record(path)
    rec.size = {"total_bytes": int(round(rec.size["total_bytes"] * size_factor)), "components": {}}
    rec.metrics["psnr"] += dpsnr
    for k, v in kw.items():
        setattr(rec, k, v)
    write_record(rec, path)


def _row(result, method: str, rate: str):
    return next(r for r in result.rows if (r.method, r.rate) == (method, rate))


def test_reference_round_trip_and_equal_results_pass(gated) -> None:
    results, ref = gated
    data = load_reference(ref)
    assert [(r["method"], r["rate"], r["size_bytes"], r["psnr"]) for r in data["records"]] == \
        [(m, rate, s, p) for m, _, rate, s, p in JOBS]
    res = check(results, ref)
    assert res.ok and [r.verdict for r in res.rows] == ["pass"] * 3
    assert all(r.reason == "within tolerance" for r in res.rows)
    assert "PASS" in res.text()


@pytest.mark.parametrize("size_factor, dpsnr, words", [
    (1.05, 0.0, "size +5.00% > +2.00%"),
    (1.0, -0.2, "PSNR -0.200 dB < -0.1 dB"),
])
def test_worse_record_fails(gated, size_factor, dpsnr, words) -> None:
    results, ref = gated
    _edit(results, "4dgs-cc", "low", size_factor, dpsnr)
    res = check(results, ref)
    assert not res.ok
    bad = _row(res, "4dgs-cc", "low")
    assert bad.verdict == "fail" and words in bad.reason
    assert [r.verdict for r in res.rows if r is not bad] == ["pass", "pass"]
    assert "FAIL (1 of 3 jobs)" in res.text()


def test_small_changes_within_tolerance_pass(gated) -> None:
    results, ref = gated
    _edit(results, "4dgs-cc", "low", 1.019, -0.09)
    assert check(results, ref).ok
    _edit(results, "4dgs-cc", "high", 1.02, -0.1)  # exactly at both tolerances (float-rounded PSNR)
    res = check(results, ref)
    assert res.ok, res.text()


def test_improvement_passes_and_is_noted(gated) -> None:
    results, ref = gated
    _edit(results, "adc-gs", "high", 0.9, +0.3)
    res = check(results, ref)
    row = _row(res, "adc-gs", "high")
    assert res.ok and row.verdict == "pass"
    assert row.reason == "improved: size -10.00%, PSNR +0.300 dB"
    assert row.size_change == pytest.approx(-0.1) and row.psnr_change == pytest.approx(0.3)


def test_missing_and_failed_records_fail(gated) -> None:
    results, ref = gated
    record_path(results, "dnerf", "lego", "adc-gs", "high").unlink()
    failed = Record("4dgs-cc", "dnerf", "lego", "high", status="failed", error="NaN loss at iteration 900")
    write_record(failed, record_path(results, "dnerf", "lego", "4dgs-cc", "high"))
    res = check(results, ref)
    assert not res.ok
    assert _row(res, "adc-gs", "high").reason == "missing record"
    assert "job failed: NaN loss at iteration 900" in _row(res, "4dgs-cc", "high").reason


def test_tolerances_from_arguments_then_reference(gated, tmp_path: Path) -> None:
    results, ref = gated
    _edit(results, "4dgs-cc", "low", 1.05)
    assert check(results, ref, max_rate_increase=0.06).ok
    data = json.loads(ref.read_text())
    data["tolerances"] = {"max_rate_increase": 0.06}
    loose = tmp_path / "loose.json"
    loose.write_text(json.dumps(data))
    assert check(results, loose).ok
    assert not check(results, loose, max_rate_increase=0.02).ok  # the argument wins


def test_new_records_are_listed_but_do_not_fail(gated) -> None:
    results, ref = gated
    write_record(make_record("adc-gs", "dnerf", "lego", "low", 1_000_000, 29.5),
                 record_path(results, "dnerf", "lego", "adc-gs", "low"))
    res = check(results, ref)
    assert res.ok and _row(res, "adc-gs", "low").verdict == "new"


def test_quick_run_against_full_reference_fails(gated) -> None:
    results, ref = gated
    _edit(results, "4dgs-cc", "high", quick=True)
    row = _row(check(results, ref), "4dgs-cc", "high")
    assert row.verdict == "fail" and "quick run vs full reference" in row.reason


def test_bad_reference_and_unusable_results_raise_clear_errors(gated, tmp_path: Path) -> None:
    results, _ = gated
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"records": [{"method": "m", "dataset": "d", "scene": "s", "rate": "r", "psnr": 30}]}))
    with pytest.raises(CheckError, match=r"bad\.json: records\[0\] lacks \['size_bytes'\]"):
        check(results, bad)
    with pytest.raises(CheckError, match="no such reference file"):
        check(results, tmp_path / "nope.json")
    write_record(Record("adc-gs", "dnerf", "lego", "mid", status="failed", error="oom"),
                 record_path(results, "dnerf", "lego", "adc-gs", "mid"))
    with pytest.raises(CheckError, match=r"refusing .*adc-gs/dnerf/lego/mid \(oom\)"):
        write_reference(results, tmp_path / "ref2.json")
