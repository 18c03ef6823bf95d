"""Result tables: per scene, dataset summaries (with the papers' numbers), BD tables, survey CSVs.

One ``Table`` renders to Markdown, LaTeX (booktabs) and CSV. Missing values print as "—"
(Markdown), "--" (LaTeX) and "n/a" (CSV), never as zero. Rows from quick runs are flagged
with a dagger and a footnote (and a ``quick`` CSV column). Sizes: MB = 10^6 bytes.
"""
from __future__ import annotations

import csv
import io
import math
import numbers
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import pandas as pd

from evalkit.codec.container import atomic_write_bytes
from evalkit.report.seeds import FOOTNOTE as SEEDS_FOOTNOTE, SUMMARY_FOOTNOTE as SEEDS_SUMMARY_FOOTNOTE, seed_range, several_seeds
from evalkit.results import DRAWS_NOTHING, MB

DEFAULT_TABLE_METRICS = ("psnr", "ssim", "lpips")
DEFAULT_LPIPS_NET = "vgg"  # 4DGaussians' metrics.py reports VGG LPIPS as "LPIPS"
BITSTREAM_STEP = "decoded bitstream"
QUICK_FOOTNOTE = "† quick run (reduced iterations/resolution): not comparable with full runs or paper numbers."
SURVEY_HEADER = ["Submethod", "PSNR", "SSIM", "LPIPS", "Size [Bytes]", "#Gaussians"]


class SpecError(ValueError):
    """A dataset spec passed to the report is malformed."""


@dataclass(frozen=True)
class MetricInfo:
    label: str
    fmt: str
    better: str  # "↑" / "↓" / ""
    paper_keys: tuple[str, ...] = ()  # keys to look up in a spec's paper entry, in order


METRICS: dict[str, MetricInfo] = {
    "psnr": MetricInfo("PSNR", "{:.2f}", "↑", ("psnr",)),
    "ssim": MetricInfo("SSIM", "{:.4f}", "↑", ("ssim",)),
    "dssim": MetricInfo("D-SSIM", "{:.4f}", "↓", ("dssim", "d_ssim")),
    "ms_ssim": MetricInfo("MS-SSIM", "{:.4f}", "↑", ("ms_ssim",)),
    "lpips_alex": MetricInfo("LPIPS (Alex)", "{:.4f}", "↓", ("lpips_alex", "lpips")),
    "lpips_vgg": MetricInfo("LPIPS (VGG)", "{:.4f}", "↓", ("lpips_vgg", "lpips")),
    "fps": MetricInfo("FPS", "{:.1f}", "↑", ("fps",)),
    "size_mb": MetricInfo("Size (MB)", "{:.3f}", "↓", ("size_mb",)),
}


# -- generic table ---------------------------------------------------------------------
@dataclass(frozen=True)
class Column:
    key: str  # CSV header
    label: str  # Markdown / LaTeX header
    fmt: str | None = None  # format for numbers; None = str()
    csv_only: bool = False


def _missing(v: Any) -> bool:
    return v is None or (isinstance(v, float) and math.isnan(v))


def _fmt(v: Any, fmt: str | None) -> str:
    if fmt is not None and isinstance(v, (int, float)) and not isinstance(v, bool):
        return fmt.format(v)
    return str(v)


def _csv_cell(v: Any, col: Column) -> str:
    """Full precision for CSV (no rounding); integer columns as integers."""
    if _missing(v):
        return "n/a"
    if isinstance(v, bool) or not isinstance(v, numbers.Real):
        return str(v)
    if col.fmt is not None and col.fmt.endswith(".0f}"):
        return str(int(round(float(v))))
    return repr(float(v))


_TEX_ESC = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#",
            "_": r"\_", "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}",
            "↑": r"$\uparrow$", "↓": r"$\downarrow$", "×": r"$\times$", "—": "--", "†": r"$^\dagger$"}


def tex_escape(s: str) -> str:
    parts = s.split("10^6")  # the unit note reads better as math
    return "$10^{6}$".join("".join(_TEX_ESC.get(c, c) for c in part) for part in parts)


@dataclass
class Table:
    title: str
    columns: list[Column]
    rows: list[list[Any]] = field(default_factory=list)
    quick: list[bool] = field(default_factory=list)  # per row
    footnotes: list[str] = field(default_factory=list)

    def add(self, row: list[Any], quick: bool = False) -> None:
        if len(row) != len(self.columns):
            raise ValueError(f"row has {len(row)} cells for {len(self.columns)} columns")
        self.rows.append(row)
        self.quick.append(bool(quick))

    def _notes(self) -> list[str]:
        return self.footnotes + ([QUICK_FOOTNOTE] if any(self.quick) else [])

    def _shown(self) -> list[int]:
        return [i for i, c in enumerate(self.columns) if not c.csv_only]

    def _cells(self, missing: str, mark: str, esc=lambda s: s) -> list[list[str]]:
        out = []
        for row, q in zip(self.rows, self.quick):
            cells = [missing if _missing(row[i]) else esc(_fmt(row[i], self.columns[i].fmt)) for i in self._shown()]
            if q:
                cells[0] += mark
            out.append(cells)
        return out

    def markdown(self, heading: bool = True) -> str:
        cols = [self.columns[i] for i in self._shown()]
        esc = lambda s: s.replace("|", r"\|")  # noqa: E731
        lines = [f"### {self.title}", ""] if heading else []
        lines.append("| " + " | ".join(esc(c.label) for c in cols) + " |")
        lines.append("|" + "|".join("---" if c.fmt is None else "---:" for c in cols) + "|")
        lines += ["| " + " | ".join(r) + " |" for r in self._cells("—", " †", esc)]
        notes = self._notes()
        if notes:
            lines += [""] + [f"{n}  " for n in notes]
        return "\n".join(lines) + "\n"

    def latex(self) -> str:
        cols = [self.columns[i] for i in self._shown()]
        align = "".join("l" if c.fmt is None else "r" for c in cols)
        lines = [r"% requires \usepackage{booktabs}", r"\begin{table}[t]", r"\centering",
                 rf"\caption{{{tex_escape(self.title)}}}", rf"\begin{{tabular}}{{{align}}}", r"\toprule",
                 " & ".join(tex_escape(c.label) for c in cols) + r" \\", r"\midrule"]
        lines += [" & ".join(r) + r" \\" for r in self._cells("--", r"$^\dagger$", tex_escape)]
        lines += [r"\bottomrule", r"\end{tabular}"]
        lines += [r"\par\smallskip{\footnotesize " + tex_escape(n) + "}" for n in self._notes()]
        lines.append(r"\end{table}")
        return "\n".join(lines) + "\n"

    def csv(self) -> str:
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow([c.key for c in self.columns] + ["quick"])
        for row, q in zip(self.rows, self.quick):
            w.writerow([_csv_cell(v, c) for v, c in zip(row, self.columns)] + [str(q).lower()])
        return buf.getvalue()

    def write(self, stem: Path) -> list[Path]:
        """Write ``stem``.md / .tex / .csv; returns the paths."""
        out = []
        for ext, text in ((".md", self.markdown()), (".tex", self.latex()), (".csv", self.csv())):
            p = stem.with_suffix(ext)
            atomic_write_bytes(p, text.encode("utf-8"))
            out.append(p)
        return out


# -- dataset specs ---------------------------------------------------------------------
def table_metrics(spec: dict[str, Any] | None, dataset: str = "?") -> list[str]:
    """The metric columns a dataset's tables show: spec 'table_metrics', 'lpips' -> the spec's net."""
    spec = spec or {}
    net = spec.get("lpips_net", DEFAULT_LPIPS_NET)
    if net not in ("alex", "vgg"):
        raise SpecError(f"dataset spec {dataset!r}: lpips_net must be 'alex' or 'vgg', got {net!r}")
    out = []
    for m in spec.get("table_metrics", DEFAULT_TABLE_METRICS):
        m = {"lpips": f"lpips_{net}", "d-ssim": "dssim", "d_ssim": "dssim", "ms-ssim": "ms_ssim"}.get(str(m).lower(), str(m).lower())
        if m not in METRICS or m in ("fps", "size_mb"):
            raise SpecError(f"dataset spec {dataset!r}: unknown table metric {m!r} "
                            f"(known: psnr, ssim, dssim, ms_ssim, lpips, lpips_alex, lpips_vgg)")
        out.append(m)
    return out


def paper_entry(paper: Any, method: str, rate: str) -> dict[str, float]:
    """The paper's numbers for (method, rate) from a spec 'paper' table; {} when absent."""
    if not isinstance(paper, dict):
        return {}
    by_rate = paper.get(method)
    if not isinstance(by_rate, dict):
        return {}
    entry = by_rate.get(rate)
    if not isinstance(entry, dict):
        return {}
    return {k: float(v) for k, v in entry.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


def paper_value(entry: dict[str, float], metric: str) -> float | None:
    for k in METRICS[metric].paper_keys:
        if k in entry:
            return entry[k]
    return None


def _scene_numbers(spec: dict[str, Any] | None, scene: str, kind: str) -> dict[str, Any]:
    """Per-scene numbers (method -> rate -> numbers) of ``kind`` 'paper' or 'reference'.

    Accepts the report form ``scenes.<scene>.<kind>`` and the raw TOML form ``scene_<kind>.<scene>``.
    """
    spec = spec or {}
    scenes = spec.get("scenes")
    if isinstance(scenes, dict) and isinstance(scenes.get(scene), dict):
        p = scenes[scene].get(kind)
        if isinstance(p, dict) and p:
            return p
    raw = spec.get(f"scene_{kind}")
    if isinstance(raw, dict) and isinstance(raw.get(scene), dict):
        return raw[scene]
    return {}


def scene_paper(spec: dict[str, Any] | None, scene: str) -> dict[str, Any]:
    return _scene_numbers(spec, scene, "paper")


def scene_reference(spec: dict[str, Any] | None, scene: str) -> dict[str, Any]:
    """Numbers of a method's public reference code measured by us (e.g. hustvl/4DGaussians on one H200)."""
    return _scene_numbers(spec, scene, "reference")


def entry_source(table: Any, method: str, rate: str) -> str | None:
    try:
        src = table[method][rate].get("source")
    except (KeyError, TypeError, AttributeError):
        return None
    return src if isinstance(src, str) else None


def dataset_label(spec: dict[str, Any] | None, dataset: str) -> str:
    return str((spec or {}).get("name") or dataset)


def spec_scenes(spec: dict[str, Any] | None) -> list[str]:
    scenes = (spec or {}).get("scenes")
    if isinstance(scenes, dict):
        return list(scenes)
    if isinstance(scenes, list):
        return [str(s) for s in scenes]
    return []


# -- ordering --------------------------------------------------------------------------
def method_order(methods: Iterable[str], anchor: str | None) -> list[str]:
    ms = sorted(set(methods))
    return ([anchor] if anchor in ms else []) + [m for m in ms if m != anchor]


def rate_order(df: pd.DataFrame, method: str, extra: Iterable[str] = ()) -> list[str]:
    """Rates of a method from largest to smallest mean size; rates without a size last."""
    sub = df[df["method"] == method]
    sizes = sub.groupby("rate")["size_bytes"].mean() if not sub.empty else pd.Series(dtype=float)

    def key(rate: str) -> tuple[int, float, str]:
        s = float(sizes.get(rate, float("nan")))
        return (1, 0.0, rate) if math.isnan(s) else (0, -s, rate)

    return sorted(set(sizes.index) | set(extra), key=key)


def _metric_cols(metrics: list[str], suffix: str = "", key_suffix: str = "") -> list[Column]:
    return [Column(m + key_suffix, f"{METRICS[m].label}{suffix} {METRICS[m].better}".strip(), METRICS[m].fmt)
            for m in metrics]


def _paper_cols(metrics: list[str], entries: list[dict[str, float]]) -> list[tuple[str, Column]]:
    """Paper columns for the metrics (plus size, FPS) that at least one entry provides."""
    out = []
    for m in [*metrics, "size_mb", "fps"]:
        if any(paper_value(e, m) is not None for e in entries):
            # A paper's "lpips" may use either net; the label does not claim one.
            label = "LPIPS" if m.startswith("lpips") else METRICS[m].label
            out.append((m, Column(f"paper_{m}", f"{label} (paper)", METRICS[m].fmt)))
    return out


# -- per-scene table -------------------------------------------------------------------
def scene_table(df: pd.DataFrame, dataset: str, scene: str, spec: dict[str, Any] | None,
                anchor: str | None = None) -> Table:
    """Every ok record of one scene, one row per (method, rate), with per-scene paper numbers."""
    metrics = table_metrics(spec, dataset)
    sub = df[(df["dataset"] == dataset) & (df["scene"] == scene) & (df["status"] == "ok")]
    paper = scene_paper(spec, scene)
    keys = [(m, r) for m in method_order(sub["method"], anchor) for r in rate_order(sub, m)]
    entries = [paper_entry(paper, m, r) for m, r in keys]
    pcols = _paper_cols(metrics, entries)
    seeded = several_seeds(sub)  # a frame of seed means (``report.seeds``) where some job has several
    scols = [Column("seeds", "Seeds", "{:.0f}"), Column("psnr_sd", "PSNR sd", "{:.2f}")] if seeded else []
    cols = [Column("method", "Method"), Column("rate", "Rate"), *_metric_cols(metrics), *scols,
            Column("fps", "FPS ↑", "{:.1f}"), Column("size_mb", "Size (MB) ↓", "{:.3f}"),
            Column("size_bytes", "Size (bytes)", "{:.0f}", csv_only=True),
            Column("num_primitives", "#Prim.", "{:,.0f}"), *[c for _, c in pcols]]
    t = Table(f"{dataset_label(spec, dataset)} / {scene}", cols)
    for (m, r), entry in zip(keys, entries):
        row = sub[(sub["method"] == m) & (sub["rate"] == r)].iloc[0]
        seeds = [int(row["seeds"]), row["psnr_sd"]] if seeded else []
        t.add([m, r, *[row[k] for k in metrics], *seeds, None if row["timings_contended"] else row["fps"],
               row["size_mb"], row["size_bytes"], row["num_primitives"], *[paper_value(entry, k) for k, _ in pcols]],
              quick=bool(row["quick"]))
    t.footnotes.append("Size: bytes of the bitstream file the decoder reads; MB = 10^6 bytes.")
    if seeded:
        t.footnotes.append(SEEDS_FOOTNOTE)
    if "failed_seeds" in sub and (part := sub[sub["failed_seeds"] > 0]).shape[0]:  # ok jobs with a failed seed
        t.footnotes.append("Averaged without the failed seeds: " + "; ".join(
            f"{m} {r} ({e})" for m, r, e in zip(part["method"], part["rate"], part["error"])) + ".")
    _contended_footnote(t, sub)
    _devices_footnote(t, sub)
    _empty_footnote(t, sub)
    _paper_sources(t, paper, keys)

    # The public reference code of a method, measured on our GPU: extra rows, marked as such.
    ref = scene_reference(spec, scene)
    ref_sources = set()
    for m in sorted(ref) if isinstance(ref, dict) else []:
        for r in sorted(ref[m]) if isinstance(ref[m], dict) else []:
            e = paper_entry(ref, m, r)
            size_b = e.get("size_bytes", e["size_mb"] * MB if "size_mb" in e else None)
            fps = e.get("fps", 1000.0 / e["ms_per_frame"] if e.get("ms_per_frame") else None)
            t.add([f"{m} (reference code)", r, *[paper_value(e, k) for k in metrics], *[None for _ in scols], fps,
                   None if size_b is None else size_b / MB, size_b, e.get("num_primitives"),
                   *[None for _ in pcols]])
            ref_sources.add(entry_source(ref, m, r) or "source not given")
    if ref_sources:
        t.footnotes.append("(reference code): the method's public code measured by us, not by evalkit: "
                           + "; ".join(sorted(ref_sources)) + ".")
    return t


def _contended_footnote(t: Table, rows: pd.DataFrame) -> None:
    if rows["timings_contended"].astype(bool).any():
        t.footnotes.append("FPS left out (—) where the record's times were taken on a shared GPU or host "
                           "(see its notes): not a measurement of the method.")


def _devices_footnote(t: Table, rows: pd.DataFrame, shown_rows: set[tuple[str, str]] | None = None) -> None:
    """FPS taken on different devices are not comparable: when the FPS shown come from more than one,
    name the device of each row (a row under two devices averages FPS taken on both).
    ``shown_rows``: the (method, rate) rows whose FPS the table shows (default: all)."""
    shown = rows[~rows["timings_contended"].astype(bool) & rows["fps"].notna()]
    where: dict[str, list[str]] = {}
    for m, r, dev in zip(shown["method"], shown["rate"], shown["timed_on"]):
        if shown_rows is not None and (m, r) not in shown_rows:
            continue
        for d in str(dev or "unknown device").split(", "):
            if f"{m} {r}" not in where.setdefault(d, []):
                where[d].append(f"{m} {r}")
    if len(where) > 1:
        t.footnotes.append("FPS timed on different devices, comparable only within one: "
                           + "; ".join(f"{d}: {', '.join(labels)}" for d, labels in sorted(where.items())) + ".")


def _empty_footnote(t: Table, rows: pd.DataFrame) -> None:
    empty = rows[rows["draws_nothing"].astype(bool)]
    if len(empty):
        which = ", ".join(sorted({f"{m} {r} on {s}" for m, r, s in zip(empty["method"], empty["rate"], empty["scene"])}))
        t.footnotes.append(f"{which}: {DRAWS_NOTHING}; the metrics are those of an empty image.")


def _paper_sources(t: Table, paper: Any, keys: list[tuple[str, str]]) -> None:
    sources = sorted({src for m, r in keys if (src := entry_source(paper, m, r))})
    if sources:
        t.footnotes.append("(paper) sources: " + "; ".join(sources) + ".")


# -- dataset summary -------------------------------------------------------------------
def summary_table(df: pd.DataFrame, dataset: str, spec: dict[str, Any] | None, anchor: str | None) -> Table:
    """Dataset means per (method, rate) over scenes, compression ratio vs anchor, paper numbers."""
    metrics = table_metrics(spec, dataset)
    sub = df[(df["dataset"] == dataset) & (df["status"] == "ok")]
    paper = (spec or {}).get("paper", {})
    all_scenes = spec_scenes(spec) or sorted(df[df["dataset"] == dataset]["scene"].unique())
    methods = method_order(sub["method"], anchor)
    keys = []
    for m in methods:
        paper_rates = list(paper[m]) if isinstance(paper, dict) and isinstance(paper.get(m), dict) else []
        keys += [(m, r) for r in rate_order(sub, m, extra=paper_rates)]
    entries = [paper_entry(paper, m, r) for m, r in keys]
    pcols = _paper_cols(metrics, entries)

    anchor_rate = None
    if anchor is not None and anchor in set(sub["method"]):
        anchor_rate = rate_order(sub, anchor)[0]  # its largest-size rate point
    anc = sub[(sub["method"] == anchor) & (sub["rate"] == anchor_rate)].set_index("scene")["size_bytes"] \
        if anchor_rate is not None else pd.Series(dtype=float)

    # Like for like: a row covering fewer scenes than the dataset sets beside it the paper's mean over
    # the same scenes, from the per-scene paper numbers (spec scene_paper), where every scene has one.
    row_scenes = {(m, r): sorted(sub[(sub["method"] == m) & (sub["rate"] == r)]["scene"].unique()) for m, r in keys}
    same = {k: same_scenes_paper_means(spec, k[0], k[1], sc) for k, sc in row_scenes.items()
            if 0 < len(sc) < len(all_scenes)}
    scols = [(m, Column(f"paper_same_{m}", f"{'LPIPS' if m.startswith('lpips') else METRICS[m].label} "
                                           "(paper, same scenes)", METRICS[m].fmt))
             for m in [*metrics, "size_mb"] if any(v.get(m) is not None for v in same.values())]

    seeded = several_seeds(sub)
    cols = [Column("method", "Method"), Column("rate", "Rate"), Column("scenes", "Scenes"),
            *([Column("seeds", "Seeds per scene")] if seeded else []),
            *_metric_cols(metrics), Column("fps", "FPS ↑", "{:.1f}"), Column("size_mb", "Size (MB) ↓", "{:.3f}"),
            Column("size_bytes", "Size (bytes)", "{:.0f}", csv_only=True),
            Column("ratio", f"Ratio vs {anchor}" if anchor else "Ratio", "{:.1f}×"), *[c for _, c in pcols],
            *[c for _, c in scols]]
    t = Table(f"{dataset_label(spec, dataset)}: mean over scenes", cols)
    partial, fps_shown = False, set()
    for (m, r), entry in zip(keys, entries):
        g = sub[(sub["method"] == m) & (sub["rate"] == r)]
        n = g["scene"].nunique()
        partial |= 0 < n < len(all_scenes)
        # skipna=False: a metric missing in any scene makes the mean missing, not a subset mean.
        means = {k: (g[k].mean(skipna=False) if n else None) for k in [*metrics, "size_bytes"]}
        means["fps"] = g["fps"].where(~g["timings_contended"].astype(bool)).mean(skipna=False) if n else None
        if means["fps"] is not None and not math.isnan(means["fps"]):
            fps_shown.add((m, r))
        ratio = None
        if n and not anc.empty and set(g["scene"]) <= set(anc.index):
            ratio = anc.loc[list(g["scene"])].mean() / means["size_bytes"]
        size_mb = None if means["size_bytes"] is None else means["size_bytes"] / MB
        seeds = [seed_range(g["seeds"]) if n else None] if seeded else []
        t.add([m, r, f"{n}/{len(all_scenes)}", *seeds, *[means[k] for k in metrics], means["fps"], size_mb,
               means["size_bytes"], ratio, *[paper_value(entry, k) for k, _ in pcols],
               *[same.get((m, r), {}).get(k) for k, _ in scols]],
              quick=bool(g["quick"].any()))
    t.footnotes.append("Means over scenes of per-scene values; a metric missing in any scene leaves the mean "
                       "missing. Size: bitstream bytes, MB = 10^6 bytes.")
    if seeded:
        t.footnotes.append(SEEDS_SUMMARY_FOOTNOTE)
    _contended_footnote(t, sub)
    _devices_footnote(t, sub, fps_shown)
    _empty_footnote(t, sub)
    if anchor_rate is not None:
        t.footnotes.append(f"Ratio = mean size of {anchor} ({anchor_rate}) / mean size of the row, over the "
                           f"row's scenes.")
    elif anchor is not None:
        t.footnotes.append(f"Ratio n/a: anchor {anchor} has no successful records for this dataset.")
    if partial:
        t.footnotes.append("Rows covering fewer scenes than the dataset has are not comparable with paper means"
                           + ("; (paper, same scenes) is the mean of the paper's per-scene numbers over the scenes "
                              "the row covers, the like-for-like comparison." if scols else "."))
    if pcols:
        t.footnotes.append("(paper): numbers reported in the method's paper (dataset spec), not measured here.")
        _paper_sources(t, paper, keys)
    return t


def same_scenes_paper_means(spec: dict[str, Any] | None, method: str, rate: str,
                            scenes: Iterable[str]) -> dict[str, float]:
    """The paper's mean of each metric (and size_mb) over ``scenes``, from its per-scene numbers;
    a metric is left out unless every one of the scenes has it (never a subset mean)."""
    entries = [paper_entry(scene_paper(spec, s), method, rate) for s in scenes]
    out: dict[str, float] = {}
    for m in METRICS:
        vals = [paper_value(e, m) for e in entries]
        if vals and all(v is not None for v in vals):
            out[m] = sum(vals) / len(vals)
    return out


def _seeded(records: list[Any]) -> bool:
    """Whether some job has records of several seeds (their rows then name the seed)."""
    return len({r.run for r in records}) > len({r.key for r in records})


def coding_steps_table(records: Iterable[Any], dataset: str, label: str) -> Table | None:
    """Test quality of each method's intermediate models (``Record.stage_metrics``) and, as the
    last row, of the decoded bitstream (the record's metrics), one row per (scene, method, rate,
    step), with the PSNR change each lossy step causes; None when no record has stages. Where a job
    has several seeds, one group of rows per seed, which a Seed column names."""
    rows = sorted((r for r in records if r.dataset == dataset and r.status == "ok" and r.stage_metrics),
                  key=lambda r: (r.scene, r.method, r.rate, r.seed))
    seeded = _seeded(rows)
    t = Table(f"{label}: quality by coding step (test views)", [
        Column("scene", "Scene"), Column("method", "Method"), Column("rate", "Rate"),
        *([Column("seed", "Seed", "{:.0f}")] if seeded else []), Column("step", "Step"),
        Column("psnr", "PSNR", "{:.3f}"), Column("ssim", "SSIM", "{:.4f}"), Column("d_psnr", "ΔPSNR", "{:+.3f}")])
    for r in rows:
        prev = None
        steps = list(r.stage_metrics.items()) + [(BITSTREAM_STEP, r.metrics)]
        for step, m in steps:
            psnr = m.get("psnr")
            d = None if prev is None or psnr is None else psnr - prev
            t.add([r.scene, r.method, r.rate, *([r.seed] if seeded else []), step, psnr, m.get("ssim"), d],
                  quick=r.quick)
            prev = psnr
    if not t.rows:
        return None
    t.footnotes.append(f"'{BITSTREAM_STEP}': the record's metrics (the model decoded from the file). "
                       "ΔPSNR: change from the step before.")
    return t


def timings_table(records: Iterable[Any], dataset: str, label: str) -> Table | None:
    """Train / encode / decode seconds and FPS of each successful record, one row per (scene,
    method, rate). Times of a record timed on a shared GPU or busy host are left out, as its FPS
    is everywhere; the machine each row ran on is named. None when no record is ok. A job with
    several seeds has a row per seed, which a Seed column names."""
    rows = sorted((r for r in records if r.dataset == dataset and r.status == "ok"),
                  key=lambda r: (r.scene, r.method, r.rate, r.seed))
    seeded = _seeded(rows)
    t = Table(f"{label}: times", [
        Column("scene", "Scene"), Column("method", "Method"), Column("rate", "Rate"),
        *([Column("seed", "Seed", "{:.0f}")] if seeded else []), Column("train_s", "Train (s)", "{:.1f}"), Column("encode_s", "Encode (s)", "{:.2f}"),
        Column("decode_s", "Decode (s)", "{:.2f}"), Column("fps", "FPS", "{:.1f}"),
        Column("coding_setup_s", "Coder setup (s)", "{:.2f}", csv_only=True),
        Column("training_setup_s", "Training setup (s)", "{:.2f}", csv_only=True),
        Column("device", "Timed on"), Column("shared", "Shared GPU / busy host")])
    for r in rows:
        busy = r.timings_contended
        times = [None if busy else r.timings.get(k) for k in ("train_s", "encode_s", "decode_s")]
        fps = None if busy or not r.fps else r.fps.get("fps")
        device = r.timed_on
        setups = [None if busy else r.timings.get(k) for k in ("coding_setup_s", "training_setup_s")]
        t.add([r.scene, r.method, r.rate, *([r.seed] if seeded else []), *times, fps, *setups, device,
               "yes" if busy else "no"], quick=r.quick)
    if not t.rows:
        return None
    t.footnotes.append("Seconds of wall-clock time per job: train (all stages), encode (to the bitstream), decode "
                       "(from the file); FPS renders the decoded model. A one-time coder setup (e.g. compiling "
                       "the arithmetic coder) is timed apart (CSV: coding_setup_s), as is a one-time training setup "
                       "(compiling GPU kernels on first use; CSV: training_setup_s); records made before evalkit "
                       "did so may include them in encode / train (their notes say so).")
    if any(row[-1] == "yes" for row in t.rows):
        t.footnotes.append("Shared GPU / busy host: the job's times were contended (the record's notes say how), so "
                           "they are left out (—): not a measurement of the method.")
    return t


# -- BD tables -------------------------------------------------------------------------
def bd_scene_table(per_scene: pd.DataFrame, title: str) -> Table:
    t = Table(title, [Column("scene", "Scene"), Column("method", "Method"), Column("anchor", "Anchor"),
                      Column("bd_rate", "BD-rate (%) ↓", "{:+.2f}"), Column("bd_psnr", "BD-PSNR (dB) ↑", "{:+.3f}"),
                      Column("note", "Note")])
    for _, r in per_scene.iterrows():
        t.add([r["scene"], r["method"], r["anchor"], r["bd_rate"], r["bd_psnr"], r["note"]])
    t.footnotes.append("Bjontegaard deltas, pchip interpolation (bjontegaard package), rate = bitstream bytes, "
                       "distortion = PSNR.")
    return t


def bd_summary_table(summary: pd.DataFrame, title: str) -> Table:
    t = Table(title, [Column("method", "Method"), Column("anchor", "Anchor"),
                      Column("bd_rate", "BD-rate (%) ↓", "{:+.2f}"), Column("bd_psnr", "BD-PSNR (dB) ↑", "{:+.3f}"),
                      Column("scenes_rate", "Scenes (rate)"), Column("scenes_psnr", "Scenes (PSNR)"),
                      Column("scenes", "Scenes")])
    for _, r in summary.iterrows():
        t.add([r["method"], r["anchor"], r["bd_rate"], r["bd_psnr"], int(r["scenes_rate"]),
               int(r["scenes_psnr"]), int(r["scenes"])])
    t.footnotes.append("Per-scene values averaged (not averaged curves); the Scenes columns count the scenes "
                       "whose value entered each mean.")
    return t


# -- 3DGS compression survey CSV -------------------------------------------------------
def survey_csv(df: pd.DataFrame, method: str, dataset: str, scene: str, lpips_metric: str) -> str:
    """One scene's RD points of one method in the 3DGS compression survey CSV format.

    Rows go from the largest to the smallest size. Submethod is "Baseline" for a method's
    single rate point, else " <rate>" (a leading space so the survey shows "method rate").
    Missing values are empty cells.
    """
    sub = df[(df["dataset"] == dataset) & (df["scene"] == scene) & (df["method"] == method)
             & (df["status"] == "ok")]
    rates = rate_order(sub, method)
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(SURVEY_HEADER)
    for r in rates:
        row = sub[sub["rate"] == r].iloc[0]
        name = "Baseline" if len(rates) == 1 else f" {r}"

        def num(v: Any, fmt: str) -> str:
            return "" if _missing(v) else fmt.format(v)

        w.writerow([name, num(row["psnr"], "{:.4f}"), num(row["ssim"], "{:.5f}"), num(row[lpips_metric], "{:.5f}"),
                    num(row["size_bytes"], "{:.0f}"), num(row["num_primitives"], "{:.0f}")])
    return buf.getvalue()
