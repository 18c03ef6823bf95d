"""RD curves (PSNR vs size, log x in MB) and bit-allocation bars, saved as PNG and PDF.

Figures are built on ``matplotlib.figure.Figure`` with the Agg canvas (no pyplot global
state, no display needed). MB = 10^6 bytes.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence

import matplotlib

matplotlib.use("Agg")  # headless; must precede any pyplot import elsewhere in the process

import pandas as pd  # noqa: E402
from matplotlib.backends.backend_agg import FigureCanvasAgg  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.ticker import FixedLocator, FuncFormatter, NullFormatter  # noqa: E402

from evalkit.results import MB  # noqa: E402

FORMATS = (".png", ".pdf")


def _save(fig: Figure, stem: Path) -> list[Path]:
    FigureCanvasAgg(fig)
    stem.parent.mkdir(parents=True, exist_ok=True)
    out = []
    for ext in FORMATS:
        p = stem.with_suffix(ext)
        # Fixed margins instead of bbox_inches="tight": tight layout costs two more draws per file.
        fig.savefig(p, dpi=120)
        out.append(p)
    return out


def curve_label(method: str, quick: bool, scenes: Sequence[int] = (), total: int | None = None) -> str:
    """Legend text: the method, "(quick)", and for dataset means the scenes its points cover when
    that is not every scene (means over different scene sets are not comparable)."""
    label = f"{method}{' (quick)' if quick else ''}"
    if total and scenes and min(scenes) < total:
        lo, hi = min(scenes), max(scenes)
        label += f" ({lo}/{total} scenes)" if lo == hi else f" ({lo}-{hi}/{total} scenes)"
    return label


def one_two_five_ticks(lo: float, hi: float) -> list[float]:
    """Log-axis ticks inside [lo, hi] whose labels never overlap: decades over a wide range, else
    1-2-5 per decade, or finer steps when the range is too narrow to hold two of those."""
    decades = range(math.floor(math.log10(lo)), math.ceil(math.log10(hi)) + 1)
    for mantissas in ((1,), (1, 2, 5), range(1, 10), [m / 10 for m in range(10, 100)]):
        inside = [round(m * 10.0 ** k, 12) for k in decades for m in mantissas if lo <= m * 10.0 ** k <= hi]
        if len(inside) >= (4 if mantissas == (1,) else 2):  # decades alone once they are enough
            return inside
    return [float(f"{lo:.3g}"), float(f"{hi:.3g}")]


def rd_curves(points: pd.DataFrame, methods: Sequence[str]):
    """Per method that has points, in ``methods`` order: (method, its points by size, whether any is
    from a quick run, the scene count of each point for dataset means, else [])."""
    pts = points.dropna(subset=["size_bytes", "psnr"])
    for m in methods:
        g = pts[pts["method"] == m].sort_values("size_bytes")
        if not g.empty:
            yield m, g, "quick" in g and bool(g["quick"].any()), [int(n) for n in g["scenes"]] if "scenes" in g else []


def psnr_spread(g: pd.DataFrame) -> list[float] | None:
    """Per point, the PSNR sample standard deviation over seeds (0 for a single run), or None when no
    point of the curve averages several seeds (``report.seeds``)."""
    if "psnr_sd" not in g or not g["psnr_sd"].notna().any():
        return None
    return [float(v) for v in g["psnr_sd"].fillna(0.0)]


def rd_plot(points: pd.DataFrame, stem: Path, title: str,
            paper: pd.DataFrame | None = None, method_order: Sequence[str] | None = None,
            total_scenes: int | None = None) -> list[Path]:
    """PSNR vs size. ``points``: columns method, rate, size_bytes, psnr, quick (one row per point),
    optionally ``psnr_sd`` (error bars for seed means) and, for dataset means, ``scenes`` (how many scenes each mean covers; with ``total_scenes``
    the legend says when a curve covers fewer).

    ``paper`` (optional): method, rate, size_mb, psnr from the papers, drawn as hollow markers.
    """
    fig = Figure(figsize=(6.0, 4.2))
    ax = fig.add_subplot()
    pts = points.dropna(subset=["size_bytes", "psnr"])
    methods = list(method_order) if method_order else sorted(pts["method"].unique())
    labels: list = []
    colors = {m: f"C{i % 10}" for i, m in enumerate(dict.fromkeys([*methods, *sorted(
        set(paper["method"]) if paper is not None and not paper.empty else set())]))}
    for m, g, quick, scenes in rd_curves(pts, methods):
        ax.plot(g["size_bytes"] / MB, g["psnr"], "-o", color=colors[m], label=curve_label(m, quick, scenes, total_scenes),
                ms=5)
        if (sd := psnr_spread(g)) is not None:  # seed means: one sample standard deviation each way
            ax.errorbar(g["size_bytes"] / MB, g["psnr"], yerr=sd, fmt="none", ecolor=colors[m], capsize=3, lw=1)
        for _, r in g.iterrows():
            labels.append(ax.annotate(str(r["rate"]), (r["size_bytes"] / MB, r["psnr"]), textcoords="offset points",
                                      xytext=(4, 4), fontsize=7, color=colors[m]))
    if paper is not None and not paper.empty:
        pp = paper.dropna(subset=["size_mb", "psnr"])
        for m, g in pp.groupby("method", sort=True):
            g = g.sort_values("size_mb")
            ax.plot(g["size_mb"], g["psnr"], "--s", mfc="none", color=colors[m], label=f"{m} (paper)", ms=6)
    ax.set_xscale("log")
    lo, hi = ax.get_xlim()
    ax.xaxis.set_major_locator(FixedLocator(one_two_five_ticks(lo, hi)))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlim(lo, hi)
    ax.set_xlabel("Size (MB = 10^6 bytes, log scale)")
    ax.set_ylabel("PSNR (dB)")
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8)
    fig.subplots_adjust(left=0.12, right=0.97, bottom=0.13, top=0.92)
    place_labels(fig, labels)
    return _save(fig, stem)


# Offsets (points) tried for a label, nearest first; rings grow until a free place is found.
_DIRECTIONS = ((1, 1), (1, -1), (-1, 1), (-1, -1), (1, 0), (-1, 0), (0, 1), (0, -1))


def place_labels(fig: Figure, labels: list, pad_px: float = 1.0) -> None:
    """Move each point label (an ``Annotation`` in offset points) to the nearest offset where its
    box overlaps no label placed before it and no labelled point's marker and stays inside the axes,
    so labels never overlap."""
    if not labels:
        return
    canvas = FigureCanvasAgg(fig)
    fig.draw_without_rendering()  # settles the axes' limits (autoscaling is lazy) before measuring
    renderer = canvas.get_renderer()
    px_per_pt = fig.dpi / 72.0
    anchors = [lab.axes.transData.transform(lab.xy) for lab in labels]
    r = 3 * px_per_pt  # a marker of size 5 pt, with a little room
    markers = [(x - r, y - r, x + r, y + r) for x, y in anchors]
    placed: list[tuple[float, float, float, float]] = []

    def free(box, frame) -> bool:
        x0, y0, x1, y1 = box
        if x0 < frame.x0 or y0 < frame.y0 or x1 > frame.x1 or y1 > frame.y1:  # stay inside the axes
            return False
        return not any(x0 < b[2] + pad_px and b[0] < x1 + pad_px and y0 < b[3] + pad_px and b[1] < y1 + pad_px
                       for b in (*placed, *markers))

    for lab in labels:
        box = None
        for ring in range(1, 40):
            step = 4.0 * ring
            for dx, dy in _DIRECTIONS:
                lab.set_position((dx * step + (0 if dx >= 0 else -2), dy * step))
                lab.set_horizontalalignment("left" if dx >= 0 else "right")
                lab.set_verticalalignment("bottom" if dy > 0 else "top" if dy < 0 else "center")
                e = lab.get_window_extent(renderer)
                cand = (e.x0, e.y0, e.x1, e.y1)
                if free(cand, lab.axes.bbox):
                    box = cand
                    break
            if box is not None:
                break
        if box is None:  # every place within 160 pt taken: keep the last try
            e = lab.get_window_extent(renderer)
            box = (e.x0, e.y0, e.x1, e.y1)
        placed.append(box)


def bit_table(components: pd.DataFrame, method_order: Sequence[str] | None = None) -> pd.DataFrame:
    """Bytes per (method, rate point) row and bitstream component column, as both bit-allocation
    charts draw it: rows grouped by method (``method_order``, else sorted), largest rate point first;
    components largest first. ``components``: columns method, rate, component, bytes."""
    piv = components.pivot_table(index=["method", "rate"], columns="component", values="bytes",
                                 aggfunc="sum", fill_value=0)
    methods = list(method_order) if method_order else sorted(piv.index.get_level_values(0).unique())
    order = [(m, r) for m in methods if m in piv.index.get_level_values(0)
             for r in piv.loc[m].sum(axis=1).sort_values(ascending=False).index]
    piv = piv.loc[order] if order else piv
    return piv[list(piv.sum(axis=0).sort_values(ascending=False).index)]


def bit_allocation_plot(components: pd.DataFrame, stem: Path, title: str,
                        method_order: Sequence[str] | None = None,
                        scenes: dict[tuple[str, str], int] | None = None, total_scenes: int | None = None) -> list[Path]:
    """Stacked bars of bytes per bitstream component, one bar per (method, rate point).

    ``components``: columns method, rate, component, bytes (already averaged if needed).
    Left panel: MB; right panel: share of the total in percent. For dataset means, ``scenes``
    (per (method, rate)) and ``total_scenes`` label a bar that covers fewer scenes than all.
    """
    piv = bit_table(components, method_order)
    comps = list(piv.columns)
    n_of = scenes or {}
    labels = [f"{m} {r}" + (f" ({n_of[(m, r)]}/{total_scenes} scenes)"
                             if total_scenes and n_of.get((m, r), total_scenes) < total_scenes else "")
              for m, r in piv.index]
    fig = Figure(figsize=(max(8.0, 2.0 + 1.3 * len(labels)), 5.2))
    ax_abs, ax_rel = fig.subplots(1, 2)
    totals = piv.sum(axis=1).to_numpy(dtype=float)
    bottom_abs = [0.0] * len(piv)
    bottom_rel = [0.0] * len(piv)
    x = list(range(len(piv)))
    for i, c in enumerate(comps):
        vals = piv[c].to_numpy(dtype=float)
        color = f"C{i % 10}" if len(comps) <= 10 else matplotlib.colormaps["tab20"](i % 20)
        ax_abs.bar(x, vals / MB, bottom=bottom_abs, color=color, label=c)
        share = [100.0 * v / t if t > 0 else 0.0 for v, t in zip(vals, totals)]
        ax_rel.bar(x, share, bottom=bottom_rel, color=color)
        bottom_abs = [b + v / MB for b, v in zip(bottom_abs, vals)]
        bottom_rel = [b + s for b, s in zip(bottom_rel, share)]
    for ax in (ax_abs, ax_rel):
        ax.set_xticks(x, labels, fontsize=7, rotation=35, ha="right", rotation_mode="anchor")
        ax.grid(True, axis="y", alpha=0.3)
    ax_abs.set_ylabel("Size (MB = 10^6 bytes)")
    ax_rel.set_ylabel("Share of bitstream (%)")
    ax_rel.set_ylim(0, 100)
    fig.suptitle(title)
    width = fig.get_figwidth()
    fig.subplots_adjust(left=0.7 / width, right=1.0 - 1.6 / width, bottom=0.27, top=0.9, wspace=0.25)
    fig.legend(*ax_abs.get_legend_handles_labels(), fontsize=7, loc="center right")
    return _save(fig, stem)
