"""The CI regression gate: compare current records with a reference of (size, PSNR) per job.

Reference JSON::

    {"tolerances": {"max_rate_increase": 0.02, "max_psnr_drop": 0.1},   # optional
     "records": [{"method", "dataset", "scene", "rate", "size_bytes", "psnr", "quick"?}, ...]}

A job fails when its record is missing or failed, when its size grew by more than
``max_rate_increase`` (relative), when its PSNR dropped by more than ``max_psnr_drop`` dB,
when its PSNR is missing, when it draws nothing (every render the background), or when it is
a quick run checked against a full-run reference (or the other way round). Improvements pass and are noted. Records the reference does not
know are listed as new and do not fail the gate.
Tolerances: explicit arguments win, then the reference's "tolerances", then the defaults;
negative ones are refused. A reference without records is an error (a gate that cannot fail),
and so is a results folder that is absent or holds no records (said as such, not as one
"missing record" per job). A record whose method/dataset/scene/rate disagree with the path it
is stored under is gated by its content, with a warning.
"""
from __future__ import annotations

import io
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table as RichTable

from evalkit.codec.container import atomic_write_bytes
from evalkit.results import DRAWS_NOTHING, Record, read_record, record_files, record_path, seed_stores

DEFAULT_MAX_RATE_INCREASE = 0.02
DEFAULT_MAX_PSNR_DROP = 0.1
_KEY = ("method", "dataset", "scene", "rate")
_EPS = 1e-9  # a change of exactly the tolerance passes despite float rounding


class CheckError(ValueError):
    """The reference file is unusable. The message names the file and the problem."""

    def __init__(self, source: str | Path, problem: str) -> None:
        self.source, self.problem = str(source), problem
        super().__init__(f"{source}: {problem}")


@dataclass(frozen=True)
class CheckRow:
    method: str
    dataset: str
    scene: str
    rate: str
    verdict: str  # "pass" | "fail" | "new"
    ref_bytes: int | None
    cur_bytes: int | None
    size_change: float | None  # relative, +0.05 = 5 % larger
    ref_psnr: float | None
    cur_psnr: float | None
    psnr_change: float | None  # dB, current - reference
    reason: str


@dataclass
class CheckResult:
    ok: bool
    rows: list[CheckRow]
    table: RichTable
    max_rate_increase: float
    max_psnr_drop: float
    warnings: list[str] = field(default_factory=list)

    @property
    def failures(self) -> list[CheckRow]:
        return [r for r in self.rows if r.verdict == "fail"]

    def text(self, width: int = 160) -> str:
        """The table as plain text plus a one-line verdict."""
        buf = io.StringIO()
        Console(file=buf, width=width, color_system=None, force_terminal=False).print(self.table)
        n_fail = len(self.failures)
        verdict = "PASS" if self.ok else f"FAIL ({n_fail} of {len(self.rows)} jobs)"
        return buf.getvalue() + f"{verdict}: size +{self.max_rate_increase:.1%} max, PSNR -{self.max_psnr_drop} dB max\n"


def _num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def load_reference(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise CheckError(path, "no such reference file")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckError(path, f"not valid JSON: {exc}") from None
    if not isinstance(data, dict) or not isinstance(data.get("records"), list):
        raise CheckError(path, "must be an object with a 'records' list")
    if not data["records"]:
        raise CheckError(path, "the 'records' list is empty: a gate against it could never fail")
    tol = data.get("tolerances", {})
    if not isinstance(tol, dict) or not all(_num(v) and v >= 0 for v in tol.values()):
        raise CheckError(path, "'tolerances' must map names to non-negative numbers")
    unknown = set(tol) - {"max_rate_increase", "max_psnr_drop"}
    if unknown:
        raise CheckError(path, f"unknown tolerance(s) {sorted(unknown)}")
    seen = set()
    for i, rec in enumerate(data["records"]):
        if not isinstance(rec, dict):
            raise CheckError(path, f"records[{i}] must be an object")
        missing = [k for k in (*_KEY, "size_bytes", "psnr") if k not in rec]
        if missing:
            raise CheckError(path, f"records[{i}] lacks {missing}")
        if not all(isinstance(rec[k], str) for k in _KEY):
            raise CheckError(path, f"records[{i}]: method/dataset/scene/rate must be strings")
        if not (_num(rec["size_bytes"]) and rec["size_bytes"] > 0) or not _num(rec["psnr"]):
            raise CheckError(path, f"records[{i}] ({'/'.join(rec[k] for k in _KEY)}): size_bytes must be a "
                                   f"positive number and psnr a number")
        if "quick" in rec and not isinstance(rec["quick"], bool):
            raise CheckError(path, f"records[{i}]: 'quick' must be a bool")
        key = tuple(rec[k] for k in _KEY)
        if key in seen:
            raise CheckError(path, f"records[{i}]: duplicate entry for {'/'.join(key)}")
        seen.add(key)
    return data


def _compare(ref: dict[str, Any], cur: Record | None, max_rate: float, max_drop: float) -> CheckRow:
    key = {k: ref[k] for k in _KEY}
    ref_b, ref_p = int(ref["size_bytes"]), float(ref["psnr"])
    if cur is None:
        return CheckRow(**key, verdict="fail", ref_bytes=ref_b, cur_bytes=None, size_change=None,
                        ref_psnr=ref_p, cur_psnr=None, psnr_change=None, reason="missing record")
    cur_b = cur.total_bytes
    cur_p = cur.metrics.get("psnr")
    d_size = None if cur_b is None else cur_b / ref_b - 1.0
    d_psnr = None if cur_p is None else cur_p - ref_p
    fails, notes = [], []
    if cur.status != "ok":
        fails.append(f"job failed: {cur.error or 'no error message'}")
    else:
        if "quick" in ref and ref["quick"] != cur.quick:
            fails.append(f"{'quick' if cur.quick else 'full'} run vs {'quick' if ref['quick'] else 'full'} reference")
        if d_size is None:
            fails.append("no size")
        elif d_size > max_rate + _EPS:
            fails.append(f"size +{d_size:.2%} > +{max_rate:.2%}")
        elif d_size < 0:
            notes.append(f"size {d_size:+.2%}")
        if cur.draws_nothing:
            fails.append(DRAWS_NOTHING)
        if d_psnr is None:
            fails.append("no PSNR")
        elif -d_psnr > max_drop + _EPS:
            fails.append(f"PSNR {d_psnr:+.3f} dB < -{max_drop} dB")
        elif d_psnr > 0:
            notes.append(f"PSNR {d_psnr:+.3f} dB")
    reason = "; ".join(fails) if fails else (("improved: " + ", ".join(notes)) if notes else "within tolerance")
    return CheckRow(**key, verdict="fail" if fails else "pass", ref_bytes=ref_b, cur_bytes=cur_b,
                    size_change=d_size, ref_psnr=ref_p, cur_psnr=cur_p, psnr_change=d_psnr, reason=reason)


def _rich_table(rows: list[CheckRow]) -> RichTable:
    t = RichTable(title="Regression check vs reference")
    for name, just in (("job", "left"), ("ref bytes", "right"), ("bytes", "right"), ("Δsize", "right"),
                       ("ref PSNR", "right"), ("PSNR", "right"), ("ΔPSNR", "right"), ("verdict", "left"),
                       ("reason", "left")):
        t.add_column(name, justify=just)  # type: ignore[arg-type]

    def f(v: Any, fmt: str) -> str:
        return "—" if v is None else fmt.format(v)

    style = {"pass": "green", "fail": "bold red", "new": "yellow"}
    for r in rows:
        t.add_row(f"{r.dataset}/{r.scene}/{r.method}/{r.rate}", f(r.ref_bytes, "{:,}"), f(r.cur_bytes, "{:,}"),
                  f(r.size_change, "{:+.2%}"), f(r.ref_psnr, "{:.3f}"), f(r.cur_psnr, "{:.3f}"),
                  f(r.psnr_change, "{:+.3f}"), f"[{style[r.verdict]}]{r.verdict}[/]", r.reason)
    return t


def check(results_dir: str | Path, reference_json: str | Path, max_rate_increase: float | None = None,
          max_psnr_drop: float | None = None) -> CheckResult:
    """Gate current records against the reference (see the module docstring)."""
    for name, v in (("max_rate_increase", max_rate_increase), ("max_psnr_drop", max_psnr_drop)):
        if v is not None and not (_num(v) and v >= 0):
            raise CheckError(name, f"a tolerance must be a finite number >= 0, got {v}")
    ref = load_reference(reference_json)
    tol = ref.get("tolerances", {})
    max_rate = max_rate_increase if max_rate_increase is not None else tol.get("max_rate_increase", DEFAULT_MAX_RATE_INCREASE)
    max_drop = max_psnr_drop if max_psnr_drop is not None else tol.get("max_psnr_drop", DEFAULT_MAX_PSNR_DROP)
    results_dir = Path(results_dir)
    if not results_dir.is_dir():
        raise CheckError(results_dir, "no such results folder (did the run write to another --out?)")
    current, warnings = _read_current(results_dir)
    if not current:
        stores = seed_stores(results_dir)  # `evalkit run --seed 0 --seed 1 ...` writes one store per seed
        raise CheckError(results_dir, "the results folder holds no records (<dataset>/<scene>/<method>/<rate>.json)"
                         + (f"; it holds seed stores ({', '.join(p.name for p in stores)}): the gate checks one "
                            "store, so give one of them" if stores else "; nothing to check"))
    rows = [_compare(rec, current.pop(tuple(rec[k] for k in _KEY), None), float(max_rate), float(max_drop))
            for rec in ref["records"]]
    for r in sorted(current.values(), key=lambda r: (r.dataset, r.scene, r.method, r.rate)):
        p = r.metrics.get("psnr")
        rows.append(CheckRow(r.method, r.dataset, r.scene, r.rate, "new", None, r.total_bytes, None, None, p, None,
                             "not in the reference (not gated)"))
    ok = not any(r.verdict == "fail" for r in rows)
    return CheckResult(ok=ok, rows=rows, table=_rich_table(rows), max_rate_increase=float(max_rate),
                       max_psnr_drop=float(max_drop), warnings=warnings)


def _read_current(results_dir: Path) -> tuple[dict[tuple, Record], list[str]]:
    """Records by their content's key, and a warning for each stored under another job's path."""
    current: dict[tuple, Record] = {}
    warnings: list[str] = []
    for p in record_files(results_dir):
        r = read_record(p)
        expected = record_path(results_dir, r.dataset, r.scene, r.method, r.rate)
        if p.resolve() != expected.resolve():
            warnings.append(f"{p}: the record says {'/'.join(r.key)}, which belongs at {expected}; "
                            "gated as what it says")
        if r.key in current:
            raise CheckError(p, f"a second record of job {'/'.join(r.key)}")
        if r.eval_split != "test":  # a tuning run: its PSNR is not the test views'
            warnings.append(f"{p}: evaluated on the {r.eval_split} views (a tuning run); not gated")
            continue
        current[r.key] = r
    return current, warnings


def _unusable(r: Record) -> str | None:
    """Why a record cannot be frozen as a reference (None: it can)."""
    if r.status != "ok":
        return r.error or "failed"
    if r.metrics.get("psnr") is None:
        return "no PSNR"
    if not r.total_bytes:
        return "no size"
    if r.draws_nothing:
        return DRAWS_NOTHING
    return None


def write_reference(results_dir: str | Path, path: str | Path, tolerances: dict[str, float] | None = None) -> Path:
    """Freeze the current records as the reference. Refuses failed, PSNR-less, size-less or empty records."""
    records = list(_read_current(Path(results_dir))[0].values()) if Path(results_dir).is_dir() else []
    if not records:
        raise CheckError(results_dir, "no records to make a reference from")
    bad = [f"{'/'.join(r.key)} ({why})" for r in records if (why := _unusable(r))]
    if bad:
        raise CheckError(results_dir, f"refusing to freeze unusable records as the reference: {bad}")
    out: dict[str, Any] = {}
    if tolerances:
        out["tolerances"] = dict(tolerances)
    out["records"] = [{"method": r.method, "dataset": r.dataset, "scene": r.scene, "rate": r.rate,
                       "size_bytes": r.total_bytes, "psnr": r.metrics["psnr"], "quick": r.quick}
                      for r in sorted(records, key=lambda r: (r.dataset, r.scene, r.method, r.rate))]
    path = Path(path)
    atomic_write_bytes(path, (json.dumps(out, indent=2) + "\n").encode("utf-8"))
    load_reference(path)  # what we wrote must be readable by check()
    return path
