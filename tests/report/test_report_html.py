"""The report's static site (evalkit.report.html): built from toy records with their bitstreams (tables,
plots, view strips, links), from records without bitstreams (the page says so), and opened in a
headless Chromium (skipped with the reason where there is none)."""
from __future__ import annotations

import json
import os
import re
import shutil
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from evalkit.codec.container import Bitstream
from evalkit.data.detect import load_scene
from evalkit.report import build_report
from evalkit.report.html import SiteOptions, bits_figure, header_label, rd_figure
from evalkit.report.plots import place_labels
from evalkit.report.tables import summary_table
from evalkit.results import bitstream_path, load_records, record_path
from evalkit.runner import run
from evalkit.specs import all_report_specs
from tests.test_runner import SCENES, ToyBench, ToyMethod, toy_bench  # noqa: F401  (fixture)

REPO = Path(__file__).resolve().parents[2]
ARTEFACTS = Path(os.environ.get("EVALKIT_TEST_ARTEFACTS", REPO / "reports" / "test-artefacts"))


class _Links(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.srcs: list[str] = []
        self.hrefs: list[str] = []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if a.get("src"):
            self.srcs.append(a["src"])
        if tag in ("a", "link") and a.get("href") and not a["href"].startswith("#"):
            self.hrefs.append(a["href"])


def _links(page: Path) -> _Links:
    p = _Links()
    p.feed(page.read_text(encoding="utf-8"))
    return p


def build_toy_site(bench: ToyBench, out: Path, views_frames: int = 2) -> Path:
    res = run(["toy", "toy:dim"], "toy", data_root=bench.data_root, opts=bench.opts())
    assert not res.failed
    build_report(bench.out, out, dataset_specs=all_report_specs(),
                 html=SiteOptions(views_frames=views_frames, data_root=bench.data_root, device="cpu"))
    return out / "index.html"


def test_site_is_self_contained_and_strips_show_the_decoded_render(toy_bench: ToyBench, tmp_path: Path) -> None:
    index = build_toy_site(toy_bench, tmp_path / "site")
    site = index.parent
    pages = [index] + sorted((site / "toy" / "scenes").glob("*.html"))
    assert [p.stem for p in pages[1:]] == sorted(SCENES)
    for page in pages:  # every script, image and link resolves inside the folder: no CDN, no server
        links = _links(page)
        for ref in links.srcs + links.hrefs:
            assert not re.match(r"^[a-z]+://", ref), f"{page.name} refers outside the site: {ref}"
            assert (page.parent / ref).resolve().is_file(), f"{page.name}: {ref} missing"
            assert site.resolve() in (page.parent / ref).resolve().parents
    assert (site / "assets" / "plotly.min.js").stat().st_size > 1_000_000

    # The strip of scene alpha, toy high: the middle panel is the model decoded from the linked bitstream.
    page = site / "toy" / "scenes" / f"{SCENES[0]}.html"
    imgs = [s for s in _links(page).srcs if s.endswith(".png") and "/toy/high/" in s]
    assert len(imgs) == 2  # --views-frames 2
    bits = [h for h in _links(page).hrefs if h.endswith(".evk") and "/toy/high" in h]
    model = ToyMethod().decode(Bitstream.read(page.parent / bits[0]), torch.device("cpu"))
    scene = load_scene(toy_bench.data_root / "toyset" / SCENES[0])
    panel = np.asarray(Image.open(page.parent / imgs[0]))
    w = scene.test[0].camera.width
    expect = np.rint(model.render(scene.test[0].camera, scene.test[0].time).numpy() * 255)
    assert np.array_equal(panel[:, w:2 * w], np.broadcast_to(expect, panel[:, w:2 * w].shape).astype(np.uint8))
    text = page.read_text()
    assert "PSNR" in text and "record</a>" in text and "log</a>" in text and "bitstream (" in text


def test_records_without_bitstream_or_data_say_so_on_the_page(tmp_path: Path) -> None:
    src = REPO / "results" / "reference" / "h200" / "dnerf" / "lego" / "4dgs"
    dst = tmp_path / "results" / "dnerf" / "lego" / "4dgs"
    shutil.copytree(src, dst)
    build_report(tmp_path / "results", tmp_path / "site", dataset_specs=all_report_specs(), html=SiteOptions())
    text = (tmp_path / "site" / "dnerf" / "scenes" / "lego.html").read_text()
    assert "Views not available" in text and "bitstream is missing" in text
    assert "bitstream: not in the results folder" in text and "record</a>" in text
    # the measured reference code row is marked, paper numbers are in marked columns
    assert 'class="reference"' in text and "reference code</span>" in text and 'td class="paper num"' in text


def test_summary_gives_the_papers_mean_over_the_same_scenes(tmp_path: Path) -> None:
    src = REPO / "results" / "reference" / "h200" / "dnerf"
    for scene in ("lego", "mutant"):
        shutil.copytree(src / scene / "4dgs-cc", tmp_path / "dnerf" / scene / "4dgs-cc")
    spec = all_report_specs()["dnerf"]
    t = summary_table(load_records(tmp_path), "dnerf", spec, None)
    keys = [c.key for c in t.columns]
    row = {k: v for k, v in zip(keys, next(r for r in t.rows if r[1] == "mid"))}
    assert row["scenes"] == "2/8"
    assert row["paper_same_psnr"] == pytest.approx((25.17 + 37.25) / 2)  # Table 6: lego, mutant mid
    assert row["paper_same_size_mb"] == pytest.approx((1.97 + 1.86) / 2)
    assert row["paper_psnr"] == pytest.approx(33.99)  # the 8-scene mean stays beside it
    assert "PSNR (paper, same scenes)" in t.markdown() and "(paper, same scenes)" in t.latex()
    # a scene without the paper's per-scene number leaves the same-scenes mean out, never a subset mean
    del spec["scenes"]["mutant"]["paper"]["4dgs-cc"]["mid"]["psnr"]
    t2 = summary_table(load_records(tmp_path), "dnerf", spec, None)
    row2 = {c.key: v for c, v in zip(t2.columns, next(r for r in t2.rows if r[1] == "mid"))}
    assert row2.get("paper_same_psnr") is None and row2["paper_same_size_mb"] == pytest.approx((1.97 + 1.86) / 2)


def test_point_labels_never_overlap() -> None:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6, 4.2))
    ax = fig.add_subplot()
    ax.set_xscale("log")
    rng = np.random.default_rng(0)
    xs, ys = 1.0 + 0.05 * rng.random(30), 30 + 0.05 * rng.random(30)  # 30 points in a tiny cluster
    ax.plot(xs, ys, "o")
    labels = [ax.annotate(f"rate{i}", (x, y), textcoords="offset points", xytext=(4, 4), fontsize=7)
              for i, (x, y) in enumerate(zip(xs, ys))]
    place_labels(fig, labels)
    r = fig.canvas.get_renderer()
    boxes = [lab.get_window_extent(r) for lab in labels]
    for i in range(len(boxes)):
        for j in range(i):
            assert not boxes[i].overlaps(boxes[j]), (labels[i].get_text(), labels[j].get_text())


def test_rd_figure_one_measured_trace_per_method_and_hover() -> None:
    pts = pd.DataFrame({"method": ["a", "a", "b"], "rate": ["lo", "hi", "x"], "size_bytes": [1e6, 2e6, 3e6],
                        "psnr": [30.0, 31.0, 32.0], "quick": [False] * 3})
    paper = pd.DataFrame({"method": ["a"], "rate": ["hi"], "size_mb": [2.5], "psnr": [31.5]})
    ref = pd.DataFrame({"method": ["b"], "rate": ["default"], "size_mb": [3.3], "psnr": [32.5]})
    fig = rd_figure(pts, paper, ["a", "b"], "t", reference=ref)
    kinds = [(tr["meta"]["kind"], tr["meta"]["method"], tr["legendgroup"]) for tr in fig["data"]]
    assert kinds == [("measured", "a", "a"), ("measured", "b", "b"), ("paper", "a", "a"), ("reference", "b", "b")]
    assert fig["data"][3]["name"] == "b (reference code, measured)"
    assert fig["data"][0]["customdata"][0][:3] == ["a", "lo", "1,000,000"]
    assert "PSNR" in fig["data"][0]["hovertemplate"] and fig["layout"]["xaxis"]["type"] == "log"
    assert header_label("psnr", "PSNR ↑") == "PSNR [dB] ↑" and header_label("size_mb", "Size (MB) ↓") == "Size (MB) ↓"


def test_rd_figure_seed_means_carry_their_spread_as_error_bars() -> None:
    pts = pd.DataFrame({"method": ["a", "a", "b"], "rate": ["lo", "hi", "x"], "size_bytes": [1e6, 2e6, 3e6],
                        "psnr": [30.0, 31.0, 32.0], "quick": [False] * 3, "seeds": [3, 1, 1],
                        "psnr_sd": [0.5, float("nan"), float("nan")]})
    fig = rd_figure(pts, None, ["a", "b"], "t")
    a, b = fig["data"]
    assert list(a["error_y"]["array"]) == [0.5, 0.0] and "mean of 3 seeds, PSNR sd 0.50 dB" in a["customdata"][0][3]
    assert a["customdata"][1][3].endswith("one seed")
    assert "error_y" not in b  # no point of b averages several seeds


# -- in a browser ----------------------------------------------------------------------------
def _column(page, table: str, key: str) -> list[str]:
    return page.eval_on_selector(table, """(t, key) => {
        const i = Array.from(t.tHead.rows[0].cells).findIndex(c => c.dataset.key === key);
        return Array.from(t.tBodies[0].rows).map(r => r.cells[i].dataset.v); }""", key)


def test_site_in_headless_chromium(toy_bench: ToyBench, tmp_path: Path) -> None:
    from evalkit.report.browser import browser_page, open_site_page, why_no_browser

    reason = why_no_browser()
    if reason:
        pytest.skip(f"no headless browser: {reason}")
    index = build_toy_site(toy_bench, tmp_path / "site")
    scene_page = index.parent / "toy" / "scenes" / f"{SCENES[0]}.html"
    ARTEFACTS.mkdir(parents=True, exist_ok=True)
    with browser_page() as (page, log):
        for p in (index, scene_page):
            open_site_page(page, p)
            # every image loaded (decoded, not a broken icon) and every plot drawn with its SVG
            assert page.evaluate("Array.from(document.images).every(i => i.complete && i.naturalWidth > 0)")
            n_plots = page.evaluate("document.querySelectorAll('div.plot').length")
            assert n_plots >= 2 and page.evaluate(
                "Array.from(document.querySelectorAll('div.plot')).every(d => d.querySelector('svg.main-svg'))")
            page.screenshot(path=str(ARTEFACTS / f"site_{p.stem}.png"), full_page=True)

        # the scene's RD plot: one measured trace per method of the scene table
        methods = set(_column(page, "#scene-table", "method"))
        traces = page.evaluate("document.getElementById('rd-plot').data.map(t => t.meta.kind + ':' + t.meta.method)")
        assert sorted(t for t in traces if t.startswith("measured:")) == sorted(f"measured:{m}" for m in methods)
        assert methods == {"toy", "toy:dim"}

        # clicking a column header sorts the rows by it, both ways
        before = _column(page, "#scene-table", "psnr")
        rows_before = page.eval_on_selector("#scene-table", "t => Array.from(t.tBodies[0].rows).map(r => r.innerText)")
        page.click("#scene-table th[data-key=psnr]")
        asc = _column(page, "#scene-table", "psnr")
        page.click("#scene-table th[data-key=psnr]")
        desc = _column(page, "#scene-table", "psnr")
        assert [float(v) for v in asc] == sorted(float(v) for v in before)
        assert [float(v) for v in desc] == sorted((float(v) for v in before), reverse=True)
        assert asc != before or desc != before  # the rows really moved
        rows_after = page.eval_on_selector("#scene-table", "t => Array.from(t.tBodies[0].rows).map(r => r.innerText)")
        assert sorted(rows_after) == sorted(rows_before)  # whole rows move, cells stay together
        assert page.get_attribute("#scene-table th[data-key=psnr]", "aria-sort") == "descending"
    assert log.errors == []


def test_bits_figure_stacks_components_with_an_mb_and_share_view() -> None:
    comps = pd.DataFrame({"method": ["a", "a", "b"], "rate": ["x", "x", "y"], "component": ["c1", "c2", "c1"],
                          "bytes": [3e6, 1e6, 2e6]})
    fig = bits_figure(comps, ["a", "b"], "t")
    assert [tr["name"] for tr in fig["data"]] == ["c1", "c2"] and fig["layout"]["barmode"] == "stack"
    assert list(fig["data"][0]["y"]) == [3.0, 2.0] and list(fig["data"][1]["y"]) == [1.0, 0.0]
    mb, share = (b["args"][0]["y"] for b in fig["layout"]["updatemenus"][0]["buttons"])
    assert [list(y) for y in share] == [[75.0, 100.0], [25.0, 0.0]] and [list(y) for y in mb] == [[3.0, 2.0], [1.0, 0.0]]


def test_cli_report_html(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from evalkit import cli

    shutil.copytree(REPO / "results" / "reference" / "h200" / "dnerf" / "mutant",
                    tmp_path / "results" / "dnerf" / "mutant")
    res = CliRunner().invoke(cli.app, ["report", str(tmp_path / "results"), "--out", str(tmp_path / "site"), "--html",
                                       "--views-frames", "0"])
    assert res.exit_code == 0, res.output
    assert "site written" in res.output and (tmp_path / "site" / "index.html").is_file()
    text = (tmp_path / "site" / "dnerf" / "scenes" / "mutant.html").read_text()
    assert "Views not rendered (--views-frames 0)" in text
