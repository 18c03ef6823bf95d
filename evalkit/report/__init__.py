"""Reports from the results store: tables, BD-rate, RD / bit-allocation plots, index.md.

``build_report(results_dir, out_dir)`` writes, per dataset::

    <out>/<dataset>/summary.{md,tex,csv}          dataset means, ratio vs anchor, paper numbers
    <out>/<dataset>/scenes/<scene>.{md,tex,csv}   every record of a scene
    <out>/<dataset>/bd_summary.{md,tex,csv}       BD vs the BD anchor, per-scene values averaged
    <out>/<dataset>/bd_scenes.{md,tex,csv}        BD per scene
    <out>/<dataset>/plots/rd_<scene|mean>.{png,pdf}, bits_<scene|mean>.{png,pdf}
    <out>/survey/<method>/<dataset>/<scene>.csv   3DGS compression survey format (full runs only)
    <out>/index.md
    <out>/index.html, <out>/<dataset>/scenes/<scene>.html, ...   with ``html=SiteOptions()``: the static site
                                                                 (``evalkit.report.html``)

The gate lives in ``evalkit.report.check`` (imported lazily so ``check`` does not pull in matplotlib).
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from evalkit.results import path_component as _safe  # report files named as record folders

if TYPE_CHECKING:
    import pandas as pd

    from evalkit.report.html import SiteOptions

DEFAULT_ANCHOR = "4dgs"


def default_anchor(methods: list[str], anchor: str | None) -> str | None:
    """The compression anchor: the given one, else '4dgs' if present, else the first method by name."""
    if anchor is not None:
        return anchor
    ms = sorted(set(methods))
    return DEFAULT_ANCHOR if DEFAULT_ANCHOR in ms else (ms[0] if ms else None)


def _paper_points(paper: Any, methods: list[str]) -> "pd.DataFrame":
    import pandas as pd

    from evalkit.report.tables import paper_entry, paper_value

    rows = []
    if isinstance(paper, dict):
        for m in methods:
            rates = paper.get(m)
            if not isinstance(rates, dict):
                continue
            for r in rates:
                e = paper_entry(paper, m, r)
                rows.append({"method": m, "rate": r, "size_mb": paper_value(e, "size_mb"),
                             "psnr": paper_value(e, "psnr")})
    return pd.DataFrame(rows, columns=["method", "rate", "size_mb", "psnr"]).astype({"size_mb": float, "psnr": float})


def build_report(results_dir: str | Path | Sequence[str | Path], out_dir: str | Path, anchor: str | None = None,
                 dataset_specs: dict[str, dict[str, Any]] | None = None, bd_anchor: str | None = None,
                 html: "SiteOptions | None" = None) -> Path:
    """Write all tables, plots and index.md for the records under ``results_dir`` (one store, or
    several read together, e.g. one per machine or seed: ``results.read_stores``); returns index.md.
    A job with records of several seeds is one row / point: the mean over its seeds, with the PSNR
    spread (``evalkit.report.seeds``).
    With ``html`` (``evalkit.report.html.SiteOptions``) also the static site, index.html beside it.

    ``anchor``: the compression-ratio anchor (default '4dgs' if present, else the first method).
    ``bd_anchor``: the BD anchor (default: ``anchor`` if it has >= 2 rate points, else the first
    method by name that has). ``dataset_specs``: the dataset TOML specs as dicts, keyed by
    dataset id; every key inside is optional.
    """
    # Imported here so that `evalkit.report.check` does not pull in matplotlib / bjontegaard.
    from evalkit.codec.container import atomic_write_bytes
    from evalkit.report.bdrate import MIN_POINTS, bd_summary, bd_table, choose_bd_anchor, rate_point_counts
    from evalkit.report.index import DatasetSection, render_index
    from evalkit.report.plots import bit_allocation_plot, rd_plot
    from evalkit.report.tables import (bd_scene_table, bd_summary_table, coding_steps_table, dataset_label, method_order,
                                       scene_paper, scene_table, spec_scenes, summary_table, survey_csv,
                                       table_metrics, timings_table)
    from evalkit.report.seeds import seed_mean_components, seed_means
    from evalkit.results import components_frame, read_stores, records_to_frame

    roots = [Path(results_dir)] if isinstance(results_dir, (str, Path)) else [Path(p) for p in results_dir]
    out_dir = Path(out_dir)
    specs = dataset_specs or {}
    records, files = read_stores(roots, seeds=True)
    source = ", ".join(str(r) for r in roots)
    tuning = [r for r in records if r.eval_split != "test"]  # scored on other views: not comparable
    records = [r for r in records if r.eval_split == "test"]
    df = seed_means(records_to_frame(records))  # one row per job
    comps = seed_mean_components(components_frame([r for r in records if r.status == "ok"]), df)
    sections: list["DatasetSection"] = []

    for dataset in sorted(df["dataset"].unique()):
        spec = specs.get(dataset) or {}
        label = dataset_label(spec, dataset)
        lpips_metric = [m for m in table_metrics(spec, dataset) if m.startswith("lpips")] or ["lpips_vgg"]
        ddir = out_dir / _safe(dataset)
        dall = df[df["dataset"] == dataset]
        ok = dall[dall["status"] == "ok"]
        comp_anchor = default_anchor(list(ok["method"]) or list(dall["method"]), anchor)
        methods = method_order(ok["method"], comp_anchor)

        summary = summary_table(df, dataset, spec, comp_anchor)
        section = DatasetSection(dataset=dataset, label=label, lpips_metric=lpips_metric[0], summary=summary,
                                 summary_files=summary.write(ddir / "summary"), anchor=comp_anchor,
                                 bd_anchor=None, bd_anchor_reason="")

        steps = coding_steps_table(records, dataset, label)
        if steps is not None:
            section.coding_steps, section.coding_steps_files = steps, steps.write(ddir / "coding_steps")
        times = timings_table(records, dataset, label)
        if times is not None:
            section.timings, section.timings_files = times, times.write(ddir / "times")

        # -- BD ----------------------------------------------------------------------
        counts = rate_point_counts(ok)
        bd_anc = bd_anchor if bd_anchor is not None else choose_bd_anchor(ok, comp_anchor)
        section.bd_anchor = bd_anc
        if bd_anc is None:
            section.bd_anchor_reason = (f"BD n/a: no method has >= {MIN_POINTS} rate points in a scene of "
                                        f"this dataset.")
        else:
            why = ("given explicitly" if bd_anchor is not None else
                   "the compression anchor" if bd_anc == comp_anchor else
                   f"{comp_anchor} has {int(counts.get(comp_anchor, 0))} rate point(s), so the first method by "
                   f"name with >= {MIN_POINTS} rate points is used")
            section.bd_anchor_reason = f"BD anchor: {bd_anc} ({why}). Per-scene values averaged over scenes."
            per_scene = bd_table(ok, bd_anc)
            if per_scene.empty:
                section.bd_anchor_reason += " No other method to compare."
            else:
                section.bd_summary = bd_summary_table(bd_summary(per_scene), f"{label}: BD vs {bd_anc}, mean over scenes")
                section.bd_scenes = bd_scene_table(per_scene, f"{label}: BD vs {bd_anc} per scene")
                section.bd_files = section.bd_summary.write(ddir / "bd_summary") + section.bd_scenes.write(
                    ddir / "bd_scenes")

        # -- per scene: tables, survey CSVs, plots -------------------------------------
        for scene in sorted(dall["scene"].unique()):
            section.scene_tables[scene] = scene_table(df, dataset, scene, spec, comp_anchor)
            section.scene_files[scene] = section.scene_tables[scene].write(ddir / "scenes" / _safe(scene))
            sok = ok[ok["scene"] == scene]
            for m in sorted(sok["method"].unique()):
                full = sok[(sok["method"] == m) & ~sok["quick"].astype(bool)]
                if full.empty:
                    continue
                p = out_dir / "survey" / _safe(m) / _safe(dataset) / f"{_safe(scene)}.csv"
                atomic_write_bytes(p, survey_csv(full, m, dataset, scene, lpips_metric[0]).encode("utf-8"))
                section.survey_files.append(p)
            if not sok.empty:
                section.rd_data[scene] = {"points": sok, "paper": _paper_points(scene_paper(spec, scene), methods),
                                          "methods": methods, "title": f"{label} / {scene}", "total_scenes": None}
                section.rd_plots[scene] = rd_plot(sok, ddir / "plots" / f"rd_{_safe(scene)}",
                                                  f"{label} / {scene}", paper=section.rd_data[scene]["paper"],
                                                  method_order=methods)
            sc = comps[(comps["dataset"] == dataset) & (comps["scene"] == scene)]
            if not sc.empty:
                section.bit_data[scene] = sc
                section.bit_plots[scene] = bit_allocation_plot(sc, ddir / "plots" / f"bits_{_safe(scene)}",
                                                               f"{label} / {scene}: bytes per component",
                                                               method_order=methods)

        # -- dataset means -------------------------------------------------------------
        n_all = len(spec_scenes(spec) or sorted(dall["scene"].unique()))  # curves / bars say when they cover fewer
        n_scenes = ok.groupby(["method", "rate"])["scene"].nunique()
        if not ok.empty:
            mean_pts = ok.groupby(["method", "rate"], as_index=False).agg(
                size_bytes=("size_bytes", "mean"), psnr=("psnr", lambda s: s.mean(skipna=False)),
                quick=("quick", "any"))
            mean_pts["scenes"] = [n_scenes[(m, r)] for m, r in zip(mean_pts["method"], mean_pts["rate"])]
            section.rd_data = {"mean": {"points": mean_pts, "paper": _paper_points(spec.get("paper"), methods),
                                        "methods": methods, "title": f"{label}: mean over scenes",
                                        "total_scenes": n_all}, **section.rd_data}
            section.rd_plots = {"mean": rd_plot(mean_pts, ddir / "plots" / "rd_mean",
                                                f"{label}: mean over scenes",
                                                paper=section.rd_data["mean"]["paper"],
                                                method_order=methods, total_scenes=n_all), **section.rd_plots}
        dc = comps[comps["dataset"] == dataset]
        if not dc.empty:
            mean_c = dc.groupby(["method", "rate", "component"], as_index=False)["bytes"].sum()
            # Divide by the scene count, so a component absent in a scene counts as 0 bytes there.
            mean_c["bytes"] = mean_c["bytes"] / [n_scenes[(m, r)] for m, r in zip(mean_c["method"], mean_c["rate"])]
            section.bit_data = {"mean": mean_c, **section.bit_data}
            section.bit_plots = {"mean": bit_allocation_plot(mean_c, ddir / "plots" / "bits_mean",
                                                             f"{label}: mean bytes per component over scenes",
                                                             method_order=methods, scenes=n_scenes.to_dict(),
                                                             total_scenes=n_all), **section.bit_plots}
        sections.append(section)

    index = out_dir / "index.md"
    atomic_write_bytes(index, render_index(out_dir, source, records, sections, tuning).encode("utf-8"))
    if html is not None:
        from evalkit.report.html import write_site

        write_site(out_dir, source, records, sections, html, files)
    return index


__all__ = ["build_report", "default_anchor", "DEFAULT_ANCHOR"]
