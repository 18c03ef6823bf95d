"""index.md: the report's front page, linking every table and plot and stating the conventions."""
from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from evalkit.report.tables import METRICS, Table
from evalkit.results import Record


@dataclass
class DatasetSection:
    dataset: str
    label: str
    lpips_metric: str
    summary: Table
    summary_files: list[Path]
    anchor: str | None
    bd_anchor: str | None
    bd_anchor_reason: str
    bd_summary: Table | None = None
    bd_files: list[Path] = field(default_factory=list)
    scene_files: dict[str, list[Path]] = field(default_factory=dict)
    rd_plots: dict[str, list[Path]] = field(default_factory=dict)  # "mean" or scene -> png, pdf
    bit_plots: dict[str, list[Path]] = field(default_factory=dict)
    survey_files: list[Path] = field(default_factory=list)
    coding_steps: Table | None = None
    coding_steps_files: list[Path] = field(default_factory=list)
    timings: Table | None = None
    timings_files: list[Path] = field(default_factory=list)
    # What the HTML site draws again interactively (evalkit.report.html): the tables themselves and
    # the plots' data ("mean" or scene -> points / paper points / bytes per component).
    scene_tables: dict[str, Table] = field(default_factory=dict)
    bd_scenes: Table | None = None
    rd_data: dict[str, dict[str, Any]] = field(default_factory=dict)
    bit_data: dict[str, Any] = field(default_factory=dict)


def _links(paths: list[Path], base: Path) -> str:
    return " · ".join(f"[{p.suffix.lstrip('.')}]({Path(os.path.relpath(p, base)).as_posix()})" for p in paths)


def _fps_sources(records: list[Record]) -> list[str]:
    ok = [r for r in records if r.status == "ok"]
    seen: Counter[str] = Counter()
    for r in ok:
        if r.fps and r.fps.get("fps") is not None:
            res = r.fps.get("resolution")
            res_s = f", {res[0]}x{res[1]}" if isinstance(res, list) and len(res) == 2 else ""
            seen[f"{r.timed_on}{res_s}"] += 1
    lines = [f"{name} ({n} record{'s' if n != 1 else ''})" for name, n in sorted(seen.items())]
    n_none = sum(1 for r in ok if not (r.fps and r.fps.get("fps") is not None))
    if n_none:
        lines.append(f"no FPS measured for {n_none} record{'s' if n_none != 1 else ''} (shown as —)")
    return lines


def _missing_reasons(records: list[Record]) -> list[str]:
    reasons: Counter[str] = Counter()
    for r in records:
        for metric, why in r.metrics_missing.items():
            reasons[f"{metric}: {why}"] += 1
    return [f"{k} ({n} record{'s' if n != 1 else ''})" for k, n in sorted(reasons.items())]


def render_index(out_dir: Path, source: str, records: list[Record], sections: list[DatasetSection],
                 left_out: list[Record] = ()) -> str:
    """``left_out``: tuning runs (scored on other views than the test views), named but not shown."""
    n_ok = sum(r.status == "ok" for r in records)
    failed = [r for r in records if r.status != "ok"]
    n_quick = sum(r.quick for r in records)
    L: list[str] = ["# evalkit report", "",
                    f"Generated {datetime.now(timezone.utc).isoformat(timespec='seconds')} from `{source}`: "
                    f"{len(records)} records ({n_ok} ok, {len(failed)} failed, {n_quick} quick).", ""]
    if left_out:
        L += [f"Left out: {len(left_out)} tuning record(s) scored on other views than the test views ("
              + ", ".join(f"{'/'.join(r.key)} on {r.eval_split}" for r in left_out[:6])
              + (", ..." if len(left_out) > 6 else "") + ").", ""]
    L += ["## Conventions", "",
          "- **Size**: bytes of the bitstream file the decoder reads (every component, headers included). "
          "**MB = 10^6 bytes** (not MiB) in every table and plot.",
          "- **Dataset means**: mean over scenes of the per-scene values; a metric missing in any scene leaves "
          "the mean missing (never a partial mean). The Scenes column says how many scenes a row covers.",
          "- **Missing values** are shown as — (Markdown), -- (LaTeX), n/a (CSV), empty (survey CSV); never as 0.",
          "- **LPIPS** network per dataset: " + (", ".join(
              f"{s.label}: {METRICS[s.lpips_metric].label}" for s in sections) or "no datasets") +
          "; inputs scaled to [-1, 1]. Each record's JSON holds both nets (AlexNet and VGG) where measured.",
          "- **BD-rate / BD-PSNR**: Bjontegaard deltas with pchip interpolation (`bjontegaard` package, "
          "method=\"pchip\"), rate = bitstream bytes, distortion = PSNR. **Per-scene values averaged** over "
          "scenes (not averaged curves). The anchor is the given one, else the compression anchor if it has "
          ">= 2 rate points, else the alphabetically first method with >= 2 rate points; a single-rate method "
          "has no curve, so BD against it is n/a.",
          "- **Seeds**: a job recorded with several seeds (one store per seed) is one row and one point, the "
          "mean over its successful seeds (FPS and times over the seeds timed alone); the scene tables give the "
          "seed count and the PSNR sample standard deviation, the plots error bars; the times and coding-step "
          "tables keep a row per seed. BD uses the means.",
          "- **Compression ratio**: mean size of the anchor's largest rate point / mean size of the row, over "
          "the row's scenes.",
          "- **Quick runs** (reduced iterations/resolution) are marked † and are not comparable with paper numbers.",
          "- **FPS** (rendering from the decoded model) measured on: "
          + ("; ".join(_fps_sources(records)) or "no FPS measurements") + "."
          + (f" Left out (—) for {n_shared} record(s) timed on a shared GPU or host (`env.contention` and notes say how)."
             if (n_shared := sum(r.status == "ok" and r.timings_contended for r in records)) else ""), ""]
    missing = _missing_reasons(records)
    if missing:
        L += ["Metrics missing, with the reason recorded:", ""] + [f"- {m}" for m in missing] + [""]

    for s in sections:
        L += [f"## {s.label} (`{s.dataset}`)", ""]
        L += [s.summary.markdown(heading=False), f"Summary files: {_links(s.summary_files, out_dir)}", ""]
        L += ["### BD-rate / BD-PSNR", "", s.bd_anchor_reason, ""]
        if s.bd_summary is not None:
            L += [s.bd_summary.markdown(heading=False),
                  f"BD files (summary, per scene): {_links(s.bd_files, out_dir)}", ""]
        if s.coding_steps is not None:
            L += ["### Quality by coding step", "", s.coding_steps.markdown(heading=False),
                  f"Files: {_links(s.coding_steps_files, out_dir)}", ""]
        if s.timings is not None:
            L += ["### Times", "", s.timings.markdown(heading=False), f"Files: {_links(s.timings_files, out_dir)}", ""]
        L += ["### Per-scene tables", ""]
        L += [f"- {scene}: {_links(files, out_dir)}" for scene, files in s.scene_files.items()] + [""]
        L += ["### Plots", ""]
        if not (s.rd_plots or s.bit_plots):
            L.append("No plots: no successful records.")
        for kind, plots in (("RD (PSNR vs size)", s.rd_plots), ("Bit allocation", s.bit_plots)):
            for name, files in plots.items():
                png = [p for p in files if p.suffix == ".png"]
                L.append(f"- {kind}, {'dataset mean' if name == 'mean' else name}: {_links(files, out_dir)}")
                if name == "mean" and png:
                    L += ["", f"  ![{kind} {s.label}]({Path(os.path.relpath(png[0], out_dir)).as_posix()})", ""]
        L.append("")
        if s.survey_files:
            L += ["### 3DGS compression survey CSVs (full runs only)", ""]
            L += [f"- [{p.parent.parent.name} / {p.stem}]({Path(os.path.relpath(p, out_dir)).as_posix()})"
                  for p in s.survey_files] + [""]
        else:
            L += ["No survey CSVs: they are written for successful full (non-quick) runs only.", ""]

    if failed:
        L += ["## Failed jobs", "", "| dataset | scene | method | rate | seed | error |", "|---|---|---|---|---:|---|"]
        L += [f"| {r.dataset} | {r.scene} | {r.method} | {r.rate} | {r.seed} | {(r.error or '').replace('|', '/')[:300]} |"
              for r in failed] + [""]
    notes = sorted({(f"{r.dataset}/{r.scene}/{r.method}/{r.rate}", n) for r in records for n in r.notes})
    if notes:
        L += ["## Notes from the records", ""] + [f"- {job}: {n}" for job, n in notes] + [""]
    return "\n".join(L)
