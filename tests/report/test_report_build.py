"""build_report on a synthetic results store: files, values, missing metrics, survey CSV, plots."""
from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from evalkit.report import build_report
from evalkit.report.html import SiteOptions
from evalkit.report.bdrate import bd_pair
from evalkit.report.tables import SURVEY_HEADER, SpecError, scene_paper, summary_table, table_metrics
from evalkit.results import load_records

SPECS = {
    "dnerf": {"name": "D-NeRF", "table_metrics": ["psnr", "ssim", "lpips"],
              "paper": {"4dgs-cc": {"high": {"psnr": 34.12, "ssim": 0.978, "lpips": 0.028, "size_mb": 1.9,
                                             "source": "4DGS-CC paper, Table 1"},
                                    "low": {"psnr": 33.94, "size_mb": 1.7}},
                        "4dgs": {"default": {"psnr": 34.07, "size_mb": 23.3}}},
              "scenes": {"lego": {"paper": {"4dgs": {"default": {"psnr": 25.03}}},
                                  "reference": {"4dgs": {"default": {
                                      "psnr": 25.07, "ssim": 0.937, "size_bytes": 33288544, "num_primitives": 94504,
                                      "ms_per_frame": 2.71, "source": "hustvl/4DGaussians on one H200"}}}},
                         "mutant": {}}},
    "neu3d": {"name": "Neu3D", "table_metrics": ["psnr", "dssim", "lpips"], "lpips_net": "alex"},
}


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> Path:
    from report_fixtures import write_synthetic_store

    root = tmp_path_factory.mktemp("rep")
    write_synthetic_store(root / "results")
    return build_report(root / "results", root / "report", dataset_specs=SPECS)


def _rows(md: str, first_cells: str) -> list[list[str]]:
    """Cells of Markdown table rows starting with ``first_cells`` (e.g. '| adc-gs | high |')."""
    return [[c.strip() for c in line.strip("|").split("|")] for line in md.splitlines() if line.startswith(first_cells)]


def test_files_exist_and_plots_are_real_images(report: Path) -> None:
    out = report.parent
    assert report.name == "index.md"
    for ds, scenes in (("dnerf", ["lego", "mutant"]), ("neu3d", ["flame_steak"])):
        for stem in ["summary", *[f"scenes/{s}" for s in scenes]]:
            for ext in (".md", ".tex", ".csv"):
                assert (out / ds / f"{stem}{ext}").stat().st_size > 0
        for name in ["mean", *scenes]:
            for kind in ("rd", "bits"):
                png, pdf = out / ds / "plots" / f"{kind}_{name}.png", out / ds / "plots" / f"{kind}_{name}.pdf"
                assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000
                assert pdf.read_bytes()[:5] == b"%PDF-"
    for ext in (".md", ".tex", ".csv"):
        assert (out / "dnerf" / f"bd_summary{ext}").is_file() and (out / "dnerf" / f"bd_scenes{ext}").is_file()
    index = report.read_text()
    for target in ["dnerf/summary.tex", "dnerf/scenes/mutant.csv", "dnerf/plots/rd_mean.pdf",
                   "dnerf/plots/bits_lego.png", "dnerf/bd_scenes.md", "survey/adc-gs/dnerf/lego.csv"]:
        assert f"({target})" in index


def test_scene_table_values_and_missing_lpips(report: Path) -> None:
    md = (report.parent / "dnerf" / "scenes" / "lego.md").read_text()
    # 4dgs-cc high on lego: PSNR 29.95, size 2,000,000 bytes.
    assert _rows(md, "| 4dgs-cc | high |")[0][2:9] == ["29.95", "0.9500", "0.0600", "200.0", "2.000", "20,000", "—"]
    # adc-gs has no LPIPS: shown as missing, never as a number.
    adc = _rows(md, "| adc-gs |")
    assert len(adc) == 3 and all(r[4] == "—" for r in adc)
    assert "25.03" in _rows(md, "| 4dgs | default |")[0]  # the scene's paper number
    # The reference code measured by us: its own row, FPS from ms/frame, size from bytes.
    assert "| 4dgs (reference code) | default | 25.07 | 0.9370 | — | 369.0 | 33.289 | 94,504 | — |" in md
    assert "hustvl/4DGaussians on one H200" in md
    csv_df = pd.read_csv(report.parent / "dnerf" / "scenes" / "lego.csv", keep_default_na=False)
    adc_csv = csv_df[csv_df["method"] == "adc-gs"]
    assert (adc_csv["lpips_vgg"] == "n/a").all()
    cc = csv_df[(csv_df["method"] == "4dgs-cc") & (csv_df["rate"] == "mid")].iloc[0]
    assert float(cc["psnr"]) == 29.7 and int(cc["size_bytes"]) == 1_500_000 and not cc["quick"]
    tex = (report.parent / "dnerf" / "scenes" / "lego.tex").read_text()
    assert r"\begin{tabular}" in tex and "adc-gs & high & 30.10 & 0.9500 & -- &" in tex
    assert "0.0000" not in md + tex


def test_summary_means_ratio_and_paper_numbers(report: Path) -> None:
    md = (report.parent / "dnerf" / "summary.md").read_text()
    header = _rows(md, "| Method |")[0]
    row = dict(zip(header, _rows(md, "| 4dgs-cc | high |")[0]))
    # Means over lego (29.95 dB, 2.0 MB) and mutant (31.95 dB, 2.2 MB); 4dgs: 30 and 33 MB.
    assert row["PSNR ↑"] == "30.95" and row["Size (MB) ↓"] == "2.100" and row["Scenes"] == "2/2"
    assert row["Ratio vs 4dgs"] == "15.0×"  # (30 + 33) / 2 / 2.1
    assert row["PSNR (paper)"] == "34.12" and row["LPIPS (paper)"] == "0.0280" and row["Size (MB) (paper)"] == "1.900"
    assert "(paper) sources: 4DGS-CC paper, Table 1." in md
    adc = dict(zip(header, _rows(md, "| adc-gs | high |")[0]))
    assert adc["LPIPS (VGG) ↓"] == "—" and adc["PSNR (paper)"] == "—"
    neu = (report.parent / "neu3d" / "summary.md").read_text()
    assert "D-SSIM ↓" in neu and "LPIPS (Alex) ↓" in neu and "SSIM ↑" not in neu
    assert "| 4dgs-cc † | high |" in neu and "† quick run" in neu


def test_mean_is_missing_when_a_scene_lacks_the_metric(tmp_path: Path) -> None:
    from report_fixtures import make_record
    from evalkit.results import record_path, write_record

    for scene, lp in (("lego", True), ("mutant", False)):
        r = make_record("m", "dnerf", scene, "high", 1_000_000, 30.0, lpips=lp)
        write_record(r, record_path(tmp_path, r.dataset, r.scene, r.method, r.rate))
    t = summary_table(load_records(tmp_path), "dnerf", {}, anchor=None)
    lp_col = [c.key for c in t.columns].index("lpips_vgg")
    assert np.isnan(t.rows[0][lp_col])  # not the one scene's 0.06
    assert "| m | high | 2/2 | 30.00 | 0.9500 | — |" in t.markdown()


def test_bd_tables_match_direct_computation(report: Path) -> None:
    df = load_records(report.parent.parent / "results")
    lego = df[(df["dataset"] == "dnerf") & (df["scene"] == "lego")]
    a, t = lego[lego["method"] == "4dgs-cc"], lego[lego["method"] == "adc-gs"]
    want = bd_pair(a["size_bytes"], a["psnr"], t["size_bytes"], t["psnr"])
    bd = pd.read_csv(report.parent / "dnerf" / "bd_scenes.csv", keep_default_na=False)
    got = bd[(bd["scene"] == "lego") & (bd["method"] == "adc-gs")].iloc[0]
    assert got["anchor"] == "4dgs-cc"  # 4dgs has a single rate point: no curve
    assert float(got["bd_rate"]) == pytest.approx(want.bd_rate) and float(got["bd_psnr"]) == pytest.approx(want.bd_psnr)
    single = bd[bd["method"] == "4dgs"].iloc[0]
    assert single["bd_rate"] == "n/a" and "1 rate point" in single["note"]


def test_survey_csv_format(report: Path) -> None:
    text = (report.parent / "survey" / "4dgs-cc" / "dnerf" / "lego.csv").read_text()
    assert text.splitlines()[0] == "Submethod,PSNR,SSIM,LPIPS,Size [Bytes],#Gaussians"
    rows = list(csv.reader(io.StringIO(text)))
    assert rows[0] == SURVEY_HEADER
    assert rows[1:] == [[" high", "29.9500", "0.95000", "0.06000", "2000000", "20000"],
                        [" mid", "29.7000", "0.95000", "0.06000", "1500000", "15000"],
                        [" low", "29.2000", "0.95000", "0.06000", "1000000", "10000"]]
    base = list(csv.reader(io.StringIO((report.parent / "survey" / "4dgs" / "dnerf" / "lego.csv").read_text())))
    assert base[1][0] == "Baseline" and base[1][4] == "30000000"
    adc = list(csv.reader(io.StringIO((report.parent / "survey" / "adc-gs" / "dnerf" / "lego.csv").read_text())))
    assert all(r[3] == "" for r in adc[1:])  # missing LPIPS is an empty cell
    assert not (report.parent / "survey" / "4dgs-cc" / "neu3d").exists()  # quick runs are not published


def test_index_states_conventions(report: Path) -> None:
    index = report.read_text()
    for phrase in ["MB = 10^6 bytes", "Per-scene values averaged", "pchip", "D-NeRF: LPIPS (VGG)",
                   "Neu3D: LPIPS (Alex)", "NVIDIA H100", "lpips_vgg: VGG weights unavailable offline",
                   "| neu3d | flame_steak | adc-gs | high | 0 | CUDA out of memory |", "BD anchor: 4dgs-cc"]:
        assert phrase in index, phrase


def test_spec_errors_are_clear() -> None:
    with pytest.raises(SpecError, match="dataset spec 'x': unknown table metric 'psnr_y'"):
        table_metrics({"table_metrics": ["psnr_y"]}, "x")
    assert table_metrics(None) == ["psnr", "ssim", "lpips_vgg"]
    assert table_metrics({"table_metrics": ["psnr", "D-SSIM", "lpips"], "lpips_net": "alex"}) == \
        ["psnr", "dssim", "lpips_alex"]


def test_empty_and_failed_only_stores(tmp_path: Path) -> None:
    from report_fixtures import make_record
    from evalkit.results import record_path, write_record

    (tmp_path / "results").mkdir()
    index = build_report(tmp_path / "results", tmp_path / "empty")
    assert "0 records (0 ok, 0 failed, 0 quick)" in index.read_text()
    r = make_record("adc-gs", "hypernerf", "chicken", "high", 0, None, status="failed")
    write_record(r, record_path(tmp_path / "results", r.dataset, r.scene, r.method, r.rate))
    text = build_report(tmp_path / "results", tmp_path / "failed").read_text()
    assert "| hypernerf | chicken | adc-gs | high | 0 | CUDA out of memory |" in text
    assert "No plots: no successful records." in text and "BD n/a: no method has >= 2 rate points" in text


def test_scene_numbers_in_report_and_raw_toml_forms() -> None:
    nums = {"4dgs-cc": {"high": {"psnr": 25.15}}}
    assert scene_paper({"scenes": {"lego": {"paper": nums}}}, "lego") == nums
    assert scene_paper({"scenes": ["lego"], "scene_paper": {"lego": nums}}, "lego") == nums
    assert scene_paper({"scenes": ["lego"]}, "hook") == {} and scene_paper(None, "lego") == {}


def test_coding_steps_table_lists_each_step_with_its_psnr_change(tmp_path: Path) -> None:
    from report_fixtures import make_record
    from evalkit.results import read_records, record_path, write_record

    steps = {"VQ, codes unrounded": {"psnr": 30.5, "ssim": 0.96}, "+ codes on the grid": {"psnr": 30.25, "ssim": 0.955}}
    for r in (make_record("4dgs-cc", "dnerf", "lego", "high", 1_000_000, 30.0, stage_metrics=steps),
              make_record("4dgs", "dnerf", "lego", "default", 9_000_000, 31.0)):
        write_record(r, record_path(tmp_path, r.dataset, r.scene, r.method, r.rate))
    index = build_report(tmp_path, tmp_path / "out")
    md = (tmp_path / "out" / "dnerf" / "coding_steps.md").read_text()
    rows = _rows(md, "| lego")
    assert [r[3] for r in rows] == [*steps, "decoded bitstream"]  # 4dgs has no steps: no rows
    assert [r[4] for r in rows] == ["30.500", "30.250", "30.000"]  # the last: the record's PSNR
    assert [r[6] for r in rows] == ["—", "-0.250", "-0.250"]
    assert "Quality by coding step" in index.read_text()
    assert read_records(tmp_path)  # the records still load


def test_mean_curves_say_which_scenes_they_cover() -> None:
    from evalkit.report.plots import curve_label
    assert curve_label("4dgs", False, [8, 8], 8) == "4dgs"  # every scene: nothing to say
    assert curve_label("4dgs-cc", False, [2, 2, 2], 8) == "4dgs-cc (2/8 scenes)"
    assert curve_label("4dgs-cc", True, [1, 2], 8) == "4dgs-cc (quick) (1-2/8 scenes)"
    assert curve_label("adc-gs", False) == "adc-gs"  # a per-scene plot


def test_log_axis_ticks_are_one_two_five() -> None:
    from evalkit.report.plots import one_two_five_ticks
    assert one_two_five_ticks(0.6, 25.0) == [1, 2, 5, 10, 20]
    assert one_two_five_ticks(1.05, 1.9) == pytest.approx([1.1, 1.2, 1.3, 1.4, 1.5, 1.6, 1.7, 1.8, 1.9])  # narrow: finer
    assert one_two_five_ticks(0.9, 3.5) == [1, 2]
    assert one_two_five_ticks(0.001, 50000) == [0.001, 0.01, 0.1, 1, 10, 100, 1000, 10000]


def test_times_table_leaves_out_contended_times(tmp_path: Path) -> None:
    """Train / encode / decode / FPS per job; a job timed on a shared GPU shows — for all four
    (as FPS does everywhere) while its quality stays in the other tables; the CSV keeps the flag."""
    from report_fixtures import make_record
    from evalkit.results import record_path, write_record

    alone = make_record("4dgs-cc", "dnerf", "lego", "high", 1_000_000, 30.0,
                        env={"contention": {"contended": False}})
    alone.timings = {"train_s": 412.34, "encode_s": 1.61, "decode_s": 0.93, "coding_setup_s": 14.2,
                     "training_setup_s": 19.7}
    shared = make_record("4dgs-cc", "dnerf", "lego", "low", 800_000, 29.5,
                         env={"contention": {"contended": True, "annotated": "two jobs on one GPU"}})
    for r in (alone, shared):
        write_record(r, record_path(tmp_path, r.dataset, r.scene, r.method, r.rate))
    index = build_report(tmp_path, tmp_path / "out")
    md = (tmp_path / "out" / "dnerf" / "times.md").read_text()
    (high,) = _rows(md, "| lego | 4dgs-cc | high")
    (low,) = _rows(md, "| lego | 4dgs-cc | low")
    assert high[3:] == ["412.3", "1.61", "0.93", "200.0", "NVIDIA H100", "no"]
    assert low[3:7] == ["—"] * 4 and low[-1] == "yes" and "not a measurement of the method" in md
    rows = list(csv.DictReader(io.StringIO((tmp_path / "out" / "dnerf" / "times.csv").read_text())))
    by_rate = {r["rate"]: r for r in rows}
    assert by_rate["high"]["coding_setup_s"] == "14.2" and by_rate["high"]["shared"] == "no"
    assert by_rate["high"]["training_setup_s"] == "19.7" and by_rate["low"]["training_setup_s"] == "n/a"
    assert by_rate["low"]["train_s"] == "n/a" and by_rate["low"]["shared"] == "yes"
    assert "### Times" in index.read_text()


def test_fps_timed_on_different_devices_are_footnoted_by_row(tmp_path: Path) -> None:
    """FPS from different GPUs (or the CPU) are not comparable: scene table and summary name the
    device of each row whose FPS they show; one device (or only contended rows beside it) says nothing."""
    from report_fixtures import make_record
    from evalkit.results import record_path, write_record

    recs = [make_record("4dgs", "dnerf", "lego", "default", 30_000_000, 25.0),
            make_record("4dgs-cc", "dnerf", "lego", "high", 2_000_000, 25.0),
            make_record("4dgs-cc", "dnerf", "lego", "low", 1_600_000, 24.9,
                        env={"contention": {"contended": True}})]
    recs[1].fps = {**recs[1].fps, "gpu_name": "NVIDIA H200"}
    recs[2].fps = {**recs[2].fps, "gpu_name": "NVIDIA B200"}  # contended: its FPS is not shown
    for r in recs:
        write_record(r, record_path(tmp_path, r.dataset, r.scene, r.method, r.rate))
    build_report(tmp_path, tmp_path / "out")
    note = "FPS timed on different devices, comparable only within one: NVIDIA H100: 4dgs default; NVIDIA H200: 4dgs-cc high."
    for table in ("scenes/lego.md", "summary.md"):
        assert note in (tmp_path / "out" / "dnerf" / table).read_text(), table

    # a summary row whose mean FPS is not shown (one of its scenes contended) is not named there
    more = [make_record("4dgs", "dnerf", "mutant", "default", 20_000_000, 37.0),
            make_record("4dgs-cc", "dnerf", "mutant", "high", 1_300_000, 37.0, env={"contention": {"contended": True}})]
    more[1].fps = {**more[1].fps, "gpu_name": "NVIDIA H200"}
    for r in more:
        write_record(r, record_path(tmp_path, r.dataset, r.scene, r.method, r.rate))
    build_report(tmp_path, tmp_path / "out3")
    assert note in (tmp_path / "out3" / "dnerf" / "scenes" / "lego.md").read_text()
    assert "different devices" not in (tmp_path / "out3" / "dnerf" / "summary.md").read_text()
    for r in more:
        record_path(tmp_path, r.dataset, r.scene, r.method, r.rate).unlink()

    cpu = make_record("4dgs-cc", "dnerf", "lego", "high", 2_000_000, 25.0)
    cpu.fps = {"fps": 12.0, "ms_per_frame": 83.3, "device": "cpu", "gpu_name": None}
    assert cpu.timed_on == "CPU" and recs[0].timed_on == "NVIDIA H100"
    recs[1].fps = {**recs[1].fps, "gpu_name": "NVIDIA H100"}  # now one device for every FPS shown
    write_record(recs[1], record_path(tmp_path, "dnerf", "lego", "4dgs-cc", "high"))
    build_report(tmp_path, tmp_path / "out2")
    assert "different devices" not in (tmp_path / "out2" / "dnerf" / "scenes" / "lego.md").read_text()


def test_two_stores_report_as_one_and_a_job_in_both_is_refused(tmp_path: Path, report: Path) -> None:
    """`evalkit report A B` (e.g. one store per machine) reads both: the BD table equals the one-store
    report's, and the site's scene pages link each record's files from its own store."""
    import shutil

    from report_fixtures import make_record

    from evalkit.results import RecordError, record_path, write_record

    one = report.parent.parent / "results"
    a, b = tmp_path / "a", tmp_path / "b"
    shutil.copytree(one, a)
    for p in sorted((a / "dnerf").glob("*/adc-gs")):  # adc-gs's D-NeRF records move to the second store
        shutil.move(str(p), str(b / "dnerf" / p.parent.name / "adc-gs"))
    both = build_report([a, b], tmp_path / "report", dataset_specs=SPECS, html=SiteOptions(views_frames=0))
    for name in ("bd_scenes.csv", "summary.csv"):
        assert (both.parent / "dnerf" / name).read_text() == (report.parent / "dnerf" / name).read_text()
    page = (both.parent / "dnerf" / "scenes" / "lego.html").read_text()
    assert page.count("adc-gs · ") == 3 and "record: not in the results folder" not in page  # found in store b
    assert f"from `{a}, {b}`" in both.read_text()

    dup = make_record("4dgs", "dnerf", "lego", "default", 1_000, 30.0)
    write_record(dup, record_path(b, "dnerf", "lego", "4dgs", "default"))
    with pytest.raises(RecordError, match="a second record of job 4dgs/dnerf/lego/default.*two stores given") as same:
        build_report([a, b], tmp_path / "report2", dataset_specs=SPECS)
    assert "seeds" not in str(same.value)  # the same seed twice: a copy, not a second seed
    dup.seed, dup.iterations = 1, 100  # another seed with another schedule: not seeds of one experiment
    write_record(dup, record_path(b, "dnerf", "lego", "4dgs", "default"))
    with pytest.raises(RecordError, match=r"job 4dgs/dnerf/lego/default with seed 1 ran with other settings than "
                                          r"seed 0 .*\(iterations differ\)"):
        build_report([a, b], tmp_path / "report3", dataset_specs=SPECS)
    dup.iterations = 23000  # the same settings: a second seed, averaged with the first (test_report_seeds.py)
    write_record(dup, record_path(b, "dnerf", "lego", "4dgs", "default"))
    seeded = build_report([a, b], tmp_path / "report4", dataset_specs=SPECS, html=SiteOptions(views_frames=0))
    assert _rows((seeded.parent / "dnerf" / "scenes" / "lego.md").read_text(), "| 4dgs | default |")[0][2] == "30.00"
    page = (seeded.parent / "dnerf" / "scenes" / "lego.html").read_text()
    assert "4dgs · default · seed 0" in page and "4dgs · default · seed 1" in page
