"""``evalkit status RESULTS``: every job of the sweeps on a results folder, done / running (where,
for how long) / failed (first line of the error) / pending.

Jobs come from the sweeps' manifests (``.sweep/*.manifest.json``: what was asked, so jobs not yet
started show as pending), the records and the claim files. A claim whose worker is gone (dead
process, or older than its time limit) shows as "stale claim": the next worker takes the job over.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from rich.console import Group
from rich.table import Table

from evalkit.results import RecordError, read_record, record_files, record_path
from evalkit.sweep.claims import live_claims, stale_reason
from evalkit.sweep.dispatch import read_manifests

STATES = ("done", "running", "failed", "stale claim", "pending")


@dataclass
class JobStatus:
    method: str
    dataset: str
    scene: str
    rate: str
    state: str
    detail: str = ""


def collect_status(out: Path) -> list[JobStatus]:
    out = Path(out)
    keys: dict[Path, tuple[str, str, str, str]] = {}  # record path -> (method, dataset, scene, rate)
    for m in read_manifests(out):
        for j in m.get("jobs", []):
            key = (j["method"], j["dataset"], j["scene"], j["rate"])
            keys.setdefault(record_path(out, j["dataset"], j["scene"], j["method"], j["rate"]), key)
    records = {}
    for p in record_files(out):
        try:
            r = read_record(p)
        except (RecordError, OSError):
            records[p] = None
            keys.setdefault(p, (p.parent.name, p.parents[2].name, p.parent.parent.name, p.stem))
            continue
        records[p] = r
        keys[p] = (r.method, r.dataset, r.scene, r.rate)
    claims = {}
    for cp, info in live_claims(out):
        p = cp.with_suffix(".json")
        claims[p] = info
        keys.setdefault(p, (p.parent.name, p.parents[2].name, p.parent.parent.name, p.stem))
    rows = []
    for p, (method, dataset, scene, rate) in keys.items():
        info, rec = claims.get(p), records.get(p)
        if info is not None and (why := stale_reason(info)) is None:
            state, detail = "running", f"on {info.describe()}"
        elif rec is not None and rec.status == "ok":
            state, detail = "done", _done_detail(rec)
        elif p in records and rec is None:
            state, detail = "failed", "unreadable record (rerun redoes it)"
        elif rec is not None:
            state, detail = "failed", (rec.error or "").strip().splitlines()[0] if rec.error else "failed"
        elif info is not None:
            state, detail = "stale claim", f"{info.host} pid {info.pid}: {why}; the next worker takes it over"
        else:
            state, detail = "pending", ""
        rows.append(JobStatus(method, dataset, scene, rate, state, detail))
    rows.sort(key=lambda s: (s.method, s.dataset, s.scene, s.rate))
    return rows


def _done_detail(rec) -> str:
    ex = (rec.env or {}).get("executor") or {}
    where = " ".join(str(x) for x in (ex.get("name"), ex.get("host"), ex.get("worker")) if x)
    psnr = rec.metrics.get("psnr")
    return (f"PSNR {psnr:.2f} dB, " if psnr is not None else "") + f"{(rec.total_bytes or 0) / 1e6:.3f} MB" + (
        f" ({where})" if where else "")


def render_status(rows: list[JobStatus], all_jobs: bool = False):
    """Counts per (method, dataset, rate point), then one line per job that is not done (every job
    with ``all_jobs``)."""
    counts: dict[tuple[str, str, str], dict[str, int]] = {}
    for s in rows:
        c = counts.setdefault((s.method, s.dataset, s.rate), dict.fromkeys(STATES, 0))
        c[s.state] += 1
    summary = Table(title="jobs per method, dataset and rate point")
    for name in ("method", "dataset", "rate"):
        summary.add_column(name, no_wrap=True)
    for name in STATES:
        summary.add_column(name, justify="right")
    for (m, d, r), c in counts.items():
        summary.add_row(m, d, r, *(str(c[k]) if c[k] else "" for k in STATES))
    jobs = Table(title="jobs")
    for name in ("method", "dataset", "scene", "rate", "state"):
        jobs.add_column(name, no_wrap=True)
    jobs.add_column("detail")
    colour = {"done": "green", "running": "cyan", "failed": "red", "stale claim": "yellow", "pending": "dim"}
    shown = [s for s in rows if all_jobs or s.state != "done"]
    for s in shown:
        jobs.add_row(s.method, s.dataset, s.scene, s.rate, f"[{colour[s.state]}]{s.state}[/]", s.detail)
    total = {k: sum(c[k] for c in counts.values()) for k in STATES}
    line = ", ".join(f"{v} {k}" for k, v in total.items() if v) or "no jobs"
    return Group(summary, jobs, line) if shown else Group(summary, line)
