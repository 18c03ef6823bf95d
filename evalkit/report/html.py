"""The report as a static site: ``index.html`` beside ``index.md``, one page per scene.

The report folder is the site: it opens from disk (file://) with no server and no network, and can be
copied anywhere or published as it is. Interactive plots are drawn by plotly.js, copied from the
plotly wheel into ``assets/`` (plotly: the figures' hover, legend toggles and log axes come with the
library, and its wheel carries the JS bundle, so nothing is fetched from a CDN). The static PNG/PDF
plots of the Markdown report stay for papers and are linked from every plot.

Pages::

    <out>/index.html                       per dataset: summary, RD and bit-allocation of the means,
                                           BD-rate / BD-PSNR, quality by coding step, times, scene list
    <out>/<dataset>/scenes/<scene>.html    the scene's table, RD and bit-allocation plots, and per rate
                                           point a strip ground truth | decoded render | error at a few
                                           test frames (``evalkit views``), with links to the record,
                                           its log and its bitstream (copied under <dataset>/files/)
    <out>/assets/                          plotly.min.js, site.js (table sorting, plot set-up), site.css

Tables sort by any column (click its header). Rows are marked: numbers from the papers (columns
"(paper)"), the measured public reference code ("reference code" rows), quick runs (short schedule)
and records whose times were taken on a shared GPU or busy host.
"""
from __future__ import annotations

import html
import os
import shutil
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

import pandas as pd

from evalkit.codec.container import atomic_write_bytes
from evalkit.report.index import DatasetSection
from evalkit.report.plots import bit_table, curve_label, psnr_spread, rd_curves
from evalkit.report.tables import Table, _missing
from evalkit.results import DRAWS_NOTHING, MB, Record, path_component as _safe

ASSETS = "assets"
# matplotlib's tab10 (C0..C9), so a method has the same colour in the static and the interactive plots.
TAB10 = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22",
         "#17becf"]
PLOTLY_JS = "plotly.min.js"


@dataclass
class SiteOptions:
    """``views_frames``: test frames per rate point in the view strips (0: no strips).
    ``data_root`` / ``device``: as ``evalkit views``. ``copy_bitstreams``: copy each .evk into the site
    (the site links to it; off keeps the folder small)."""

    views_frames: int = 3
    data_root: Path | None = None
    device: str | None = None
    copy_bitstreams: bool = True


def plotly_js_path() -> Path:
    """plotly.min.js as shipped inside the plotly wheel (the version the Python package validates for)."""
    import plotly

    p = Path(plotly.__file__).resolve().parent / "package_data" / PLOTLY_JS
    if not p.is_file():
        raise FileNotFoundError(f"{p}: plotly's JS bundle is missing from the installed plotly package")
    return p


# -- tables ----------------------------------------------------------------------------------
_UNITS = {"psnr": "dB", "d_psnr": "dB", "bd_psnr": "dB", "fps": "frames/s"}


def header_label(key: str, label: str) -> str:
    """A column label with its unit: 'PSNR ↑' -> 'PSNR [dB] ↑'; sizes already say MB, seconds (s)."""
    base = key.removeprefix("paper_same_").removeprefix("paper_")
    unit = _UNITS.get(base)
    if unit is None or f"[{unit}]" in label or f"({unit})" in label:
        return label
    word = {"psnr": "PSNR", "d_psnr": "ΔPSNR", "bd_psnr": "BD-PSNR", "fps": "FPS"}[base]
    return label.replace(word, f"{word} [{unit}]", 1) if word in label else f"{label} [{unit}]"


def _sort_value(v: Any) -> str:
    if _missing(v):
        return ""
    if isinstance(v, bool):
        return str(v).lower()
    if isinstance(v, (int, float)):
        return repr(float(v))
    return str(v)


def _row_key(t: Table, row: list[Any]) -> dict[str, Any]:
    return {c.key: v for c, v in zip(t.columns, row)}


def table_html(t: Table, table_id: str, flags: Sequence[set[str]] | None = None) -> str:
    """A sortable HTML table: each cell keeps its raw value in ``data-v`` (numbers sort as numbers,
    missing values last); rows carry their marks (quick, contended, reference) as classes and badges,
    and columns of paper numbers the class ``paper``."""
    shown = [c for c in t.columns if not c.csv_only]
    flags = list(flags) if flags is not None else [set() for _ in t.rows]
    H = [f'<div class="tablewrap"><table class="sortable" id="{html.escape(table_id)}"><caption>{html.escape(t.title)}</caption><thead><tr>']
    for c in shown:
        cls = ["num" if c.fmt is not None else "txt"] + (["paper"] if c.key.startswith("paper_") else [])
        tip = " title=\"MB = 10^6 bytes\"" if "size" in c.key else ""
        H.append(f'<th class="{" ".join(cls)}" data-key="{html.escape(c.key)}"{tip} tabindex="0">'
                 f'{html.escape(header_label(c.key, c.label))}</th>')
    H.append("</tr></thead><tbody>")
    for row, quick, fl in zip(t.rows, t.quick, flags):
        vals = _row_key(t, row)
        fl = set(fl) | ({"quick"} if quick else set())
        H.append(f'<tr class="{" ".join(sorted(fl))}">')
        for i, c in enumerate(shown):
            v = vals[c.key]
            text = "—" if _missing(v) else (c.fmt.format(v) if c.fmt and isinstance(v, (int, float))
                                             and not isinstance(v, bool) else str(v))
            badges = ""
            if i == 0:
                badges = "".join(f' <span class="badge {b}" title="{html.escape(BADGES[b][1])}">{BADGES[b][0]}</span>'
                                 for b in ("reference", "quick", "contended", "empty") if b in fl)
            cls = " ".join((["paper"] if c.key.startswith("paper_") else []) + (["num"] if c.fmt else []))
            H.append(f'<td class="{cls}" data-v="{html.escape(_sort_value(v))}">{html.escape(text)}{badges}</td>')
        H.append("</tr>")
    H.append("</tbody></table></div>")
    notes = t.footnotes + (["short schedule: quick run (reduced iterations/resolution), not comparable with full "
                            "runs or paper numbers."] if any(t.quick) else [])
    if any("contended" in f for f in flags):
        notes.append("contended: times / FPS taken on a shared GPU or busy host (the record's notes say how); "
                     "they are left out (—).")
    if any("reference" in f for f in flags):
        notes.append("reference code: the method's public code measured by us (dataset spec), not an evalkit run.")
    if notes:
        H.append('<ul class="notes">' + "".join(f"<li>{html.escape(n)}</li>" for n in notes) + "</ul>")
    return "".join(H)


BADGES = {"reference": ("reference code", "the method's public code, measured by us (not an evalkit record)"),
          "quick": ("short schedule", "quick run: reduced iterations / resolution"),
          "contended": ("contended", "times taken on a shared GPU or busy host: not reported"),
          "empty": ("draws nothing", DRAWS_NOTHING)}


def row_flags(t: Table, records: Iterable[Record], scene: str | None = None) -> list[set[str]]:
    """Per row: 'contended' when a job it stands for was timed under contention (every seed of it; any
    such job for a dataset mean), 'empty' when one draws nothing, 'reference' for rows of the measured public reference code."""
    recs = list(records)
    out = []
    for row in t.rows:
        v = _row_key(t, row)
        method = str(v.get("method", ""))
        fl: set[str] = set()
        if method.endswith("(reference code)"):
            fl.add("reference")
        match = [r for r in recs if r.method == method and r.rate == v.get("rate")
                 and (r.scene == v.get("scene", scene) if (scene or "scene" in v) else True)]
        if "seed" in v:  # a row per run (times, coding steps): that seed's record only
            match = [r for r in match if r.seed == v["seed"]]
        # A job's FPS comes from its seeds timed alone (report.seeds): contended only where none was.
        by_job: dict[tuple, list[bool]] = {}
        for r in match:
            if r.status == "ok":
                by_job.setdefault(r.key, []).append(r.timings_contended)
        if any(all(c) for c in by_job.values()) or v.get("shared") == "yes":
            fl.add("contended")
        if any(r.status == "ok" and r.draws_nothing for r in match):
            fl.add("empty")
        out.append(fl)
    return out


# -- plots -----------------------------------------------------------------------------------
def _colors(methods: Sequence[str]) -> dict[str, str]:
    return {m: TAB10[i % 10] for i, m in enumerate(dict.fromkeys(methods))}


def rd_figure(points: pd.DataFrame, paper: pd.DataFrame | None, methods: Sequence[str], title: str,
              total_scenes: int | None = None, reference: pd.DataFrame | None = None) -> dict[str, Any]:
    """The RD plot as a plotly figure (dict): one trace per measured method (``meta.kind`` 'measured'),
    one per method with paper numbers ('paper', dashed, hollow) and one per method whose public
    reference code we measured ('reference', hollow diamonds; ``reference``: method, rate, size_mb,
    psnr), each in its method's legend group so one legend click toggles a method. Hover: method,
    rate point, bytes, PSNR."""
    import plotly.graph_objects as go

    paper = paper if paper is not None else pd.DataFrame(columns=["method", "rate", "size_mb", "psnr"])
    pp = paper.dropna(subset=["size_mb", "psnr"])
    colors = _colors([*methods, *sorted(pp["method"].unique())])
    fig = go.Figure()
    for m, g, quick, scenes in rd_curves(points, methods):
        cover = [f"{n}/{total_scenes} scenes" if total_scenes else "" for n in (scenes or [None] * len(g))]
        sd = psnr_spread(g)
        if sd is not None:  # seed means: the spread over seeds in the hover and as error bars
            cover = [f"{c}<br>" if c else "" for c in cover]
            cover = [f"{c}mean of {int(n)} seeds, PSNR sd {v:.2f} dB" if n > 1 else f"{c}one seed"
                     for c, n, v in zip(cover, g["seeds"], sd)]
        fig.add_trace(go.Scatter(
            x=(g["size_bytes"] / MB).tolist(), y=g["psnr"].tolist(), mode="lines+markers",
            name=curve_label(m, quick, scenes, total_scenes), legendgroup=m, meta={"kind": "measured", "method": m},
            marker={"color": colors[m], "size": 8}, line={"color": colors[m]},
            error_y={"type": "data", "array": sd, "visible": True} if sd is not None else None,
            customdata=[[m, str(r), f"{b:,.0f}", c] for r, b, c in zip(g["rate"], g["size_bytes"], cover)],
            hovertemplate=("<b>%{customdata[0]}</b> rate %{customdata[1]}<br>%{customdata[2]} bytes (%{x:.3f} MB)"
                           "<br>PSNR %{y:.2f} dB<br>%{customdata[3]}<extra>measured</extra>")))
    for m in [m for m in dict.fromkeys([*methods, *sorted(pp["method"].unique())]) if m in set(pp["method"])]:
        g = pp[pp["method"] == m].sort_values("size_mb")
        fig.add_trace(go.Scatter(
            x=g["size_mb"].tolist(), y=g["psnr"].tolist(), mode="lines+markers", name=f"{m} (paper)",
            legendgroup=m, meta={"kind": "paper", "method": m},
            marker={"color": colors[m], "size": 9, "symbol": "square-open"}, line={"color": colors[m], "dash": "dash"},
            customdata=[[m, str(r), f"{s * MB:,.0f}"] for r, s in zip(g["rate"], g["size_mb"])],
            hovertemplate=("<b>%{customdata[0]}</b> rate %{customdata[1]} (paper)<br>%{customdata[2]} bytes "
                           "(%{x:.3f} MB)<br>PSNR %{y:.2f} dB<extra>paper</extra>")))
    ref = reference.dropna(subset=["size_mb", "psnr"]) if reference is not None else pd.DataFrame()
    for m in (sorted(ref["method"].unique()) if not ref.empty else []):
        g = ref[ref["method"] == m].sort_values("size_mb")
        c = colors.get(m, TAB10[len(colors) % 10])
        fig.add_trace(go.Scatter(
            x=g["size_mb"].tolist(), y=g["psnr"].tolist(), mode="markers", name=f"{m} (reference code, measured)",
            legendgroup=m, meta={"kind": "reference", "method": m},
            marker={"color": c, "size": 11, "symbol": "diamond-open", "line": {"width": 2}},
            customdata=[[m, str(r), f"{s * MB:,.0f}"] for r, s in zip(g["rate"], g["size_mb"])],
            hovertemplate=("<b>%{customdata[0]}</b> public reference code, rate %{customdata[1]}<br>%{customdata[2]} "
                           "bytes (%{x:.3f} MB)<br>PSNR %{y:.2f} dB<extra>reference code</extra>")))
    fig.update_layout(title={"text": title}, xaxis={"type": "log", "title": {"text": "Size [MB = 10^6 bytes], log scale"}},
                      yaxis={"title": {"text": "PSNR [dB]"}}, legend={"groupclick": "togglegroup"},
                      margin={"l": 60, "r": 20, "t": 50, "b": 50}, height=420, template="plotly_white")
    return fig.to_plotly_json()


def bits_figure(components: pd.DataFrame, methods: Sequence[str], title: str) -> dict[str, Any]:
    """Bytes per bitstream component as stacked bars, one bar per (method, rate point), one trace
    per component (click a component in the legend to hide it); hover gives bytes and share."""
    import plotly.graph_objects as go

    piv = bit_table(components, methods)
    comps = list(piv.columns)
    totals = piv.sum(axis=1)
    x = [f"{m} {r}" for m, r in piv.index]
    fig = go.Figure()
    for i, c in enumerate(comps):
        b = piv[c].astype(float)
        fig.add_trace(go.Bar(x=x, y=(b / MB).tolist(), name=str(c), meta={"kind": "component"},
                             marker={"color": TAB10[i % 10] if len(comps) <= 10 else None},
                             customdata=[[f"{v:,.0f}", 100.0 * v / t if t else 0.0] for v, t in zip(b, totals)],
                             hovertemplate=(f"<b>{html.escape(str(c))}</b><br>%{{x}}<br>%{{customdata[0]}} bytes "
                                            "(%{y:.3f} MB, %{customdata[1]:.1f} %)<extra></extra>")))
    mb = [tr.y for tr in fig.data]
    share = [[100.0 * v * MB / t if t else 0.0 for v, t in zip(y, totals)] for y in mb]
    buttons = [{"label": "MB", "method": "update", "args": [{"y": mb}, {"yaxis.title.text": "Size [MB = 10^6 bytes]"}]},
               {"label": "share (%)", "method": "update",
                "args": [{"y": share}, {"yaxis.title.text": "Share of the bitstream [%]"}]}]
    fig.update_layout(title={"text": title}, barmode="stack", yaxis={"title": {"text": "Size [MB = 10^6 bytes]"}},
                      margin={"l": 60, "r": 20, "t": 50, "b": 90}, height=420, template="plotly_white",
                      updatemenus=[{"type": "buttons", "direction": "right", "buttons": buttons, "x": 1.0,
                                    "xanchor": "right", "y": 1.12, "yanchor": "bottom", "showactive": True}])
    return fig.to_plotly_json()


def _fig_html(fig_id: str, fig: dict[str, Any], static: Iterable[Path], page_dir: Path) -> str:
    import plotly.io as pio

    spec = pio.to_json(fig, validate=False).replace("</", "<\\/")
    links = " · ".join(f'<a href="{_rel(p, page_dir)}">{p.suffix.lstrip(".").upper()}</a>' for p in static)
    return (f'<div class="plot" id="{fig_id}"></div><script type="application/json" class="fig" '
            f'data-target="{fig_id}">{spec}</script>'
            + (f'<p class="static">Static plot for papers: {links}</p>' if links else ""))


# -- pages -----------------------------------------------------------------------------------
def _rel(p: Path, page_dir: Path) -> str:
    return html.escape(Path(os.path.relpath(p, page_dir)).as_posix())


def _page(title: str, body: str, out_dir: Path, page_dir: Path, nav: str = "") -> bytes:
    a = _rel(out_dir / ASSETS, page_dir)
    return ("<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\"><title>{html.escape(title)}</title>"
            f"<link rel=\"stylesheet\" href=\"{a}/site.css\"><script src=\"{a}/{PLOTLY_JS}\"></script></head><body>"
            f"<header><nav>{nav}</nav><h1>{html.escape(title)}</h1></header><main>{body}</main>"
            f"<script src=\"{a}/site.js\"></script></body></html>").encode("utf-8")


CONVENTIONS = [
    "Size: bytes of the bitstream file the decoder reads; MB = 10^6 bytes.",
    "Dataset means: mean over scenes of per-scene values; the Scenes column says how many scenes a row covers. "
    "Where that is fewer than the dataset has, '(paper, same scenes)' gives the paper's mean over the same scenes.",
    "Columns marked (paper) hold numbers reported in the papers (dataset specs), not measured here; "
    "'reference code' rows are the method's public code measured by us.",
    "'short schedule' rows are quick runs; 'contended' rows were timed on a shared GPU or busy host "
    "(their times / FPS are left out).",
    "BD-rate / BD-PSNR: Bjontegaard deltas, pchip, rate = bytes; per-scene values averaged.",
    "Several seeds of a job: one row / point, the mean over its successful seeds; error bars and 'PSNR sd' give "
    "their sample standard deviation.",
    "Click a column header to sort; click a legend entry to hide or show a method.",
]


def _views_html(rec: Record, src: Path, out_dir: Path, page_dir: Path, opts: SiteOptions, seeded: bool = False) -> str:
    """The record's strip (ground truth | decoded render | error at a few test frames), or why not
    (one folder per seed where the job has several)."""
    if opts.views_frames <= 0:
        return '<p class="unavailable">Views not rendered (--views-frames 0).</p>'
    from evalkit.runner import resolve_device
    from evalkit.views import write_views

    vdir = out_dir / _safe(rec.dataset) / "views" / _safe(rec.scene) / _safe(rec.method) / (
        _safe(rec.rate) + (f"_seed{rec.seed}" if seeded else ""))
    try:
        views = write_views(src, opts.data_root,
                            vdir, max_frames=opts.views_frames, device=resolve_device(opts.device))
    except Exception as exc:  # noqa: BLE001 - any reason (no bitstream, no scene data, ...) goes on the page
        return f'<p class="unavailable">Views not available: {html.escape(str(exc))}</p>'
    figs = []
    for v in views:
        rec_psnr = "" if v.record_psnr is None else f" (record: {v.record_psnr:.2f} dB)"
        figs.append(f'<figure><img src="{_rel(v.path, page_dir)}" alt="{html.escape(v.name)}" loading="eager">'
                    f'<figcaption>{html.escape(v.name)}, t = {v.time:.3f}: ground truth | decoded render '
                    f'(PSNR {v.psnr:.2f} dB{rec_psnr}) | error ×4</figcaption></figure>')
    return '<div class="strip">' + "".join(figs) + "</div>"


def _file_links(rec: Record, src: Path, out_dir: Path, page_dir: Path, opts: SiteOptions, seeded: bool = False) -> str:
    """Links to the record's JSON, log and bitstream, copied under <dataset>/files/ (one name per seed
    where the job has several)."""
    dst = out_dir / _safe(rec.dataset) / "files" / _safe(rec.scene) / _safe(rec.method) / (
        _safe(rec.rate) + (f"_seed{rec.seed}" if seeded else ""))
    parts = []
    for ext, what in ((".json", "record"), (".log", "log"), (".evk", "bitstream")):
        p = src.with_suffix(ext)
        if not p.is_file():
            parts.append(f'<span class="unavailable">{what}: not in the results folder</span>')
        elif ext == ".evk" and not opts.copy_bitstreams:
            parts.append(f'<span class="unavailable">{what}: not copied ({p})</span>')
        else:
            target = dst.with_suffix(ext)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(p, target)
            size = f" ({p.stat().st_size / MB:.3f} MB)" if ext == ".evk" else ""
            parts.append(f'<a href="{_rel(target, page_dir)}">{what}{size}</a>')
    return " · ".join(parts)


def _reference_points(t: Table) -> pd.DataFrame:
    """The scene table's measured reference-code rows as RD points (method, rate, size_mb, psnr)."""
    rows = [_row_key(t, r) for r in t.rows]
    return pd.DataFrame([{"method": r["method"].removesuffix(" (reference code)"), "rate": r["rate"],
                          "size_mb": r.get("size_mb"), "psnr": r.get("psnr")}
                         for r in rows if str(r.get("method", "")).endswith("(reference code)")],
                        columns=["method", "rate", "size_mb", "psnr"]).astype({"size_mb": float, "psnr": float})


def _scene_page(s: DatasetSection, scene: str, recs: list[Record], rec_files: dict[tuple, Path], out_dir: Path,
                opts: SiteOptions) -> Path:
    page = out_dir / _safe(s.dataset) / "scenes" / f"{_safe(scene)}.html"
    pdir = page.parent
    B = [f'<p><a href="{_rel(out_dir / "index.html", pdir)}">← summary</a> · {s.label} / {html.escape(scene)}</p>']
    t = s.scene_tables.get(scene)
    if t is not None:
        B.append("<h2>Records</h2>" + table_html(t, "scene-table", row_flags(t, recs, scene)))
        files = s.scene_files.get(scene, [])
        B.append("<p class=\"static\">Table files: " + " · ".join(
            f'<a href="{_rel(p, pdir)}">{p.suffix.lstrip(".")}</a>' for p in files) + "</p>")
    if scene in s.rd_data:
        d = s.rd_data[scene]
        ref = _reference_points(t) if t is not None else None
        B.append("<h2>Rate-distortion</h2>" + _fig_html("rd-plot", rd_figure(
            d["points"], d["paper"], d["methods"], d["title"], reference=ref), s.rd_plots.get(scene, []), pdir))
    if scene in s.bit_data:
        B.append("<h2>Bit allocation</h2>" + _fig_html("bits-plot", bits_figure(
            s.bit_data[scene], s.rd_data.get(scene, {}).get("methods", sorted({r.method for r in recs})),
            f"{s.label} / {scene}: bytes per component"), s.bit_plots.get(scene, []), pdir))
    B.append("<h2>Test views per rate point</h2>")
    runs = Counter(r.key for r in recs)
    for rec in sorted(recs, key=lambda r: (r.method, r.rate, r.seed)):
        seeded = runs[rec.key] > 1  # a job with several seeds: a section per seed
        B.append(f'<section class="record"><h3>{html.escape(rec.method)} · {html.escape(rec.rate)}'
                 f'{f" · seed {rec.seed}" if seeded else ""}{" (failed)" if rec.status != "ok" else ""}</h3>')
        B.append(f'<p class="files">{_file_links(rec, rec_files[rec.run], out_dir, pdir, opts, seeded)}</p>')
        if rec.status == "ok":
            B.append(_views_html(rec, rec_files[rec.run], out_dir, pdir, opts, seeded))
        else:
            B.append(f'<p class="unavailable">The job failed: {html.escape(str(rec.error))}</p>')
        if rec.notes:
            B.append("<details><summary>notes</summary><ul>" + "".join(
                f"<li>{html.escape(n)}</li>" for n in rec.notes) + "</ul></details>")
        B.append("</section>")
    atomic_write_bytes(page, _page(f"{s.label} / {scene}", "".join(B), out_dir, pdir))
    return page


def write_site(out_dir: Path, source: str, records: list[Record], sections: list[DatasetSection],
               opts: SiteOptions, files: dict[tuple, Path]) -> Path:
    """Write index.html, one page per scene and the assets into ``out_dir`` (the report folder,
    whose tables and static plots the pages link); returns index.html. ``source`` names the
    store(s) on the page; ``files``: each record's file by ``Record.run`` (``results.read_stores``)."""
    out_dir = Path(out_dir)
    assets = out_dir / ASSETS
    assets.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(plotly_js_path(), assets / PLOTLY_JS)
    here = Path(__file__).resolve().parent / "site"
    for name in ("site.js", "site.css"):
        shutil.copyfile(here / name, assets / name)

    n_ok = sum(r.status == "ok" for r in records)
    B = [f"<p>{len(records)} records from <code>{html.escape(source)}</code> ({n_ok} ok, "
         f"{len(records) - n_ok} failed, {sum(r.quick for r in records)} quick). "
         f'Markdown / LaTeX / CSV: <a href="index.md">index.md</a>.</p>',
         "<details open><summary>Conventions</summary><ul>"
         + "".join(f"<li>{html.escape(c)}</li>" for c in CONVENTIONS) + "</ul></details>"]
    nav = " · ".join(f'<a href="#{html.escape(_safe(s.dataset))}">{html.escape(s.label)}</a>' for s in sections)
    for s in sections:
        ds = _safe(s.dataset)
        recs = [r for r in records if r.dataset == s.dataset]
        B.append(f'<section class="dataset" id="{html.escape(ds)}"><h2>{html.escape(s.label)} '
                 f"(<code>{html.escape(s.dataset)}</code>)</h2>")
        B.append(table_html(s.summary, f"summary-{ds}", row_flags(s.summary, recs)))
        if "mean" in s.rd_data:
            d = s.rd_data["mean"]
            B.append("<h3>Rate-distortion, mean over scenes</h3>" + _fig_html(
                f"rd-{ds}", rd_figure(d["points"], d["paper"], d["methods"], d["title"], d["total_scenes"]),
                s.rd_plots.get("mean", []), out_dir))
        if "mean" in s.bit_data:
            B.append("<h3>Bit allocation, mean over scenes</h3>" + _fig_html(
                f"bits-{ds}", bits_figure(s.bit_data["mean"], s.rd_data.get("mean", {}).get("methods", []),
                                          f"{s.label}: mean bytes per component"), s.bit_plots.get("mean", []), out_dir))
        B.append(f"<h3>BD-rate / BD-PSNR</h3><p>{html.escape(s.bd_anchor_reason)}</p>")
        if s.bd_summary is not None:
            B.append(table_html(s.bd_summary, f"bd-{ds}"))
        if s.bd_scenes is not None:
            B.append(table_html(s.bd_scenes, f"bd-scenes-{ds}"))
        if s.coding_steps is not None:
            B.append("<h3>Quality by coding step</h3>" + table_html(s.coding_steps, f"steps-{ds}",
                                                                       row_flags(s.coding_steps, recs)))
        if s.timings is not None:
            B.append("<h3>Times</h3>" + table_html(s.timings, f"times-{ds}", row_flags(s.timings, recs)))
        B.append("<h3>Scenes</h3><ul class=\"scenes\">")
        for scene in sorted({r.scene for r in recs}):
            page = _scene_page(s, scene, [r for r in recs if r.scene == scene], files, out_dir, opts)
            n = sum(r.scene == scene for r in recs)
            B.append(f'<li><a href="{_rel(page, out_dir)}">{html.escape(scene)}</a> ({n} record{"s" if n != 1 else ""})</li>')
        B.append("</ul></section>")
    index = out_dir / "index.html"
    atomic_write_bytes(index, _page("evalkit report", "".join(B), out_dir, out_dir, nav))
    return index


__all__ = ["SiteOptions", "bits_figure", "header_label", "rd_figure", "row_flags", "table_html", "write_site"]
