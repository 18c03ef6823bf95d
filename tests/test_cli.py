"""The ``evalkit`` command line: exit codes and clear errors (never a traceback) on bad input.

Sweeps use the toy method of tests/test_runner.py (no real training).
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from rich.console import Console
from typer.testing import CliRunner

from evalkit import cli
from evalkit.data.detect import load_scene
from evalkit.results import read_records, record_path

from tests.test_runner import SCENES, ToyBench, toy_bench  # noqa: F401  (fixture)
import tests.test_runner as toy


@pytest.fixture(autouse=True)
def wide_consoles(monkeypatch: pytest.MonkeyPatch) -> None:
    """Rich wraps at 80 columns when not on a terminal; long tmp paths would be split."""
    monkeypatch.setattr(cli, "console", Console(width=500, color_system=None))
    monkeypatch.setattr(cli, "err", Console(width=500, color_system=None, stderr=True))


def invoke(*args: str | Path):
    result = CliRunner().invoke(cli.app, [str(a) for a in args])
    # A clean exit (any code) is SystemExit; anything else escaped as a traceback.
    assert result.exception is None or isinstance(result.exception, SystemExit), result.output
    assert "Traceback" not in result.output
    return result


def run_toy(bench: ToyBench, *extra: str | Path):
    # in this process (the toy method and its state are monkeypatched here; tests/test_sweep.py runs workers)
    return invoke("run", "--method", "toy", "--dataset", "toy", "--data-root", bench.data_root,
                  "--out", bench.out, "--device", "cpu", "--executor", "inline", *extra)


# -- run -----------------------------------------------------------------------------------
def test_run_exit_code_reflects_failed_jobs(toy_bench: ToyBench) -> None:
    toy.STATE.fail_once = {("beta", "low")}
    res = run_toy(toy_bench)
    assert res.exit_code == 1, res.output
    assert "FAILED toy / toy / beta / low: RuntimeError: toy failure" in res.output
    assert "4 job(s): 3 ok or skipped, 1 failed" in res.output

    res = run_toy(toy_bench)  # resumes: only the failed job runs, and now succeeds
    assert res.exit_code == 0, res.output
    assert toy.STATE.train_calls[-1] == ("beta", "low") and len(toy.STATE.train_calls) == 5
    assert res.output.count("skipped (record exists)") == 3
    assert "done toy / toy / beta / low: PSNR" in res.output
    assert "4 job(s): 4 ok or skipped, 0 failed" in res.output


def test_run_warns_about_a_model_that_draws_nothing(toy_bench: ToyBench) -> None:
    spec = toy_bench.specs / "methods" / "toy.toml"
    spec.write_text(spec.read_text() + '[variants.blank]\ngain = 1000.0\n')  # clipped to the white background
    res = invoke("run", "--method", "toy:blank", "--dataset", "toy", "--data-root", toy_bench.data_root,
                 "--out", toy_bench.out, "--device", "cpu", "--executor", "inline", "--scene", "alpha", "--rate", "low")
    assert res.exit_code == 0, res.output
    assert "warning: toy:blank / toy / alpha / low: draws nothing: every test render is the background" in res.output
    res = run_toy(toy_bench, "--scene", "alpha", "--rate", "low")  # flat grey, not the background: no warning
    assert res.exit_code == 0 and "warning" not in res.output, res.output


def test_run_into_a_file_prints_plain_progress_lines(toy_bench: ToyBench, monkeypatch: pytest.MonkeyPatch) -> None:
    # CliRunner's output is not a terminal, as a redirected run's or a batch job's: rich draws no bar
    res = run_toy(toy_bench, "--scene", "alpha", "--rate", "low")
    assert res.exit_code == 0, res.output
    for line in ("[1/1] toy / toy / alpha / low: started", "toy / toy / alpha / low: training",
                 "toy / toy / alpha / low: iteration 2/2 (100 %)", "toy / toy / alpha / low: encoding"):
        assert line in res.output, res.output
    monkeypatch.setattr(cli, "console", Console(width=500, color_system=None, force_terminal=True))
    res = run_toy(toy_bench, "--scene", "alpha", "--rate", "low", "--force")  # a terminal has the bar instead
    assert res.exit_code == 0 and ": started" not in res.output and "iteration 2/2" not in res.output, res.output


def test_job_lines_are_whole_lines_with_errors_verbatim(toy_bench: ToyBench, monkeypatch: pytest.MonkeyPatch) -> None:
    # a log is read and grepped line by line: no wrapping at a narrow width, no markup taken from an error
    monkeypatch.setattr(cli, "console", Console(width=40, color_system=None))

    def train(self, scene, rate, ctx):
        raise RuntimeError("shape [/3, 4] does not fit")

    monkeypatch.setattr(toy.ToyMethod, "train", train)
    res = run_toy(toy_bench, "--scene", "alpha", "--rate", "low")
    assert res.exit_code == 1
    assert "FAILED toy / toy / alpha / low: RuntimeError: shape [/3, 4] does not fit\n" in res.output, res.output
    assert "1 job(s): 0 ok or skipped, 1 failed. Records in " in res.output and "(logs beside them).\n" in res.output


def test_run_unknown_method_is_a_clear_error(toy_bench: ToyBench) -> None:
    res = invoke("run", "--method", "nope", "--dataset", "toy", "--data-root", toy_bench.data_root,
                 "--out", toy_bench.out)
    assert res.exit_code == 2
    assert "error:" in res.output and "unknown method 'nope'" in res.output and "toy" in res.output


def test_run_missing_data_is_a_clear_error(toy_bench: ToyBench, tmp_path: Path) -> None:
    res = invoke("run", "--method", "toy", "--dataset", "toy", "--data-root", tmp_path / "empty",
                 "--out", toy_bench.out)
    assert res.exit_code == 2
    assert f"no Toy data at {tmp_path / 'empty' / 'toyset'}" in res.output
    assert "https://example.org/toy.zip" in res.output


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="needs a machine without CUDA")
def test_run_on_cuda_without_cuda_is_a_clear_error(toy_bench: ToyBench) -> None:
    res = invoke("run", "--method", "toy", "--dataset", "toy", "--data-root", toy_bench.data_root,
                 "--out", toy_bench.out, "--device", "cuda:0")
    assert res.exit_code == 2 and "--device cuda:0: CUDA is not available" in res.output


# -- check ---------------------------------------------------------------------------------
def test_check_passes_on_equal_and_fails_on_worse_reference(toy_bench: ToyBench, tmp_path: Path) -> None:
    assert run_toy(toy_bench, "--scene", "alpha").exit_code == 0
    ref = tmp_path / "reference.json"
    res = invoke("check", toy_bench.out, "--reference", ref, "--write-reference")
    assert res.exit_code == 0 and ref.is_file()

    res = invoke("check", toy_bench.out, "--reference", ref)
    assert res.exit_code == 0, res.output
    assert "check passed" in res.output

    # The reference claims a 5 % smaller bitstream for one job: the current one "grew" by > 2 %.
    data = json.loads(ref.read_text())
    data["records"][0]["size_bytes"] = int(data["records"][0]["size_bytes"] * 0.95)
    ref.write_text(json.dumps(data))
    res = invoke("check", toy_bench.out, "--reference", ref)
    assert res.exit_code == 1
    assert "check FAILED" in res.output
    res = invoke("check", toy_bench.out, "--reference", ref, "--max-rate-increase", "10%")
    assert res.exit_code == 0, res.output


def test_check_bad_reference_is_a_clear_error(toy_bench: ToyBench, tmp_path: Path) -> None:
    ref = tmp_path / "reference.json"
    ref.write_text("{not json")
    res = invoke("check", toy_bench.out, "--reference", ref)
    assert res.exit_code == 2 and f"{ref}: not valid JSON" in res.output


# -- report --------------------------------------------------------------------------------
def test_report_writes_index(toy_bench: ToyBench, tmp_path: Path) -> None:
    assert run_toy(toy_bench).exit_code == 0
    out = tmp_path / "report"
    res = invoke("report", toy_bench.out, "--out", out)
    assert res.exit_code == 0, res.output
    index = out / "index.md"
    assert index.is_file() and f"report written: {index}" in res.output
    text = index.read_text()
    assert "toy" in text and "Toy" in text


def test_report_reads_several_stores_and_refuses_a_job_in_two(toy_bench: ToyBench, tmp_path: Path) -> None:
    assert run_toy(toy_bench, "--scene", "alpha").exit_code == 0
    other = tmp_path / "other"
    assert run_toy(toy_bench, "--scene", "beta", "--out", other).exit_code == 0  # the last --out wins
    res = invoke("report", toy_bench.out, other, "--out", tmp_path / "report")
    assert res.exit_code == 0, res.output
    assert sorted(p.stem for p in (tmp_path / "report" / "toy" / "scenes").glob("*.md")) == ["alpha", "beta"]
    res = invoke("report", toy_bench.out, toy_bench.out, "--out", tmp_path / "report2")
    assert res.exit_code == 2 and "a second record of job toy/toy/alpha" in res.output, res.output


def test_report_missing_results_folder(tmp_path: Path) -> None:
    res = invoke("report", tmp_path / "nothing", "--out", tmp_path / "r")
    assert res.exit_code == 2 and f"{tmp_path / 'nothing'}: no such results folder" in res.output


def test_report_of_a_folder_of_run_folders_names_them(toy_bench: ToyBench, tmp_path: Path) -> None:
    """``runs`` holding h200/seed1/ and h200/seed2/ (each a store, two levels down) is not itself a store:
    say where the records are instead of writing an empty report. Directly below, seed<N>/ folders are
    read as seeds, so copies of one seed's store are refused as the same seed twice."""
    import shutil
    assert run_toy(toy_bench, "--scene", "alpha", "--rate", "low").exit_code == 0
    runs = tmp_path / "runs"
    for seed in (1, 2):
        shutil.copytree(toy_bench.out, runs / "h200" / f"seed{seed}")
    res = invoke("report", runs, "--out", tmp_path / "report")
    listed = f"these folders below it have records: {runs / 'h200' / 'seed1'}, {runs / 'h200' / 'seed2'}"
    assert res.exit_code == 2 and listed in " ".join(res.output.split())  # however the console wrapped it
    assert not (tmp_path / "report").exists()
    res = invoke("report", runs / "h200", "--out", tmp_path / "report")
    assert res.exit_code == 2 and "with the same seed 0" in " ".join(res.output.split())


def test_run_with_several_seeds_writes_a_store_per_seed_and_report_averages_them(
        toy_bench: ToyBench, tmp_path: Path) -> None:
    res = run_toy(toy_bench, "--scene", "alpha", "--rate", "low", "--seed", "0", "--seed", "1")
    assert res.exit_code == 0, res.output
    assert f"2 run(s) (2 seeds): 2 ok or skipped, 0 failed. Records in {toy_bench.out}/seed<N>/ for seed(s) 0, 1" \
        in " ".join(res.output.split())
    recs = {s: read_records(toy_bench.out / f"seed{s}") for s in (0, 1)}
    assert [[r.seed for r in recs[s]] for s in (0, 1)] == [[0], [1]]
    res = invoke("report", toy_bench.out, "--out", tmp_path / "report")
    assert res.exit_code == 0, res.output
    import csv
    row, = csv.DictReader((tmp_path / "report" / "toy" / "scenes" / "alpha.csv").open())
    assert row["seeds"] == "2"
    mean = sum(r.metrics["psnr"] for s in (0, 1) for r in recs[s]) / 2
    assert float(row["psnr"]) == pytest.approx(mean)

    # One more seed into the folder of seed stores goes to its own store, and the report takes all three.
    res = run_toy(toy_bench, "--scene", "alpha", "--rate", "low", "--seed", "2")
    assert res.exit_code == 0 and [r.seed for r in read_records(toy_bench.out / "seed2")] == [2], res.output
    res = invoke("report", toy_bench.out, "--out", tmp_path / "report3")
    row, = csv.DictReader((tmp_path / "report3" / "toy" / "scenes" / "alpha.csv").open())
    assert res.exit_code == 0 and row["seeds"] == "3", res.output


def test_run_with_several_seeds_checks_every_seed_store_before_training(toy_bench: ToyBench) -> None:
    """A record made with other settings in a later seed's store stops the run before any job trains."""
    assert run_toy(toy_bench, "--scene", "alpha", "--rate", "low", "--seed", "5",
                   "--out", toy_bench.out / "seed1").exit_code == 0  # seed 5's record where seed 1's will go
    calls = len(toy.STATE.train_calls)
    res = run_toy(toy_bench, "--scene", "alpha", "--rate", "low", "--seed", "0", "--seed", "1")
    assert res.exit_code == 2 and "were made with other settings" in res.output and "seed 5 (this run: 1)" in res.output
    assert len(toy.STATE.train_calls) == calls and not (toy_bench.out / "seed0").exists()


def test_corrupt_record_is_named_by_report_and_check(toy_bench: ToyBench, tmp_path: Path) -> None:
    assert run_toy(toy_bench, "--scene", "alpha", "--rate", "low").exit_code == 0
    ref = tmp_path / "reference.json"
    assert invoke("check", toy_bench.out, "--reference", ref, "--write-reference").exit_code == 0
    bad = record_path(toy_bench.out, "toy", "alpha", "toy", "low")
    bad.write_text('{"method": "toy", "datas')  # e.g. copied while another tool was writing it

    res = invoke("report", toy_bench.out, "--out", tmp_path / "report")
    assert res.exit_code == 2 and f"{bad}: not valid JSON" in res.output
    res = invoke("check", toy_bench.out, "--reference", ref)
    assert res.exit_code == 2 and f"{bad}: not valid JSON" in res.output
    res = invoke("check", toy_bench.out, "--reference", tmp_path / "new.json", "--write-reference")
    assert res.exit_code == 2 and f"{bad}: not valid JSON" in res.output


def test_report_with_bad_specs_dir_is_a_clear_error(toy_bench: ToyBench, tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    assert run_toy(toy_bench, "--scene", "alpha", "--rate", "low").exit_code == 0
    monkeypatch.setenv("EVALKIT_SPECS_DIR", str(tmp_path / "nospecs"))
    res = invoke("report", toy_bench.out, "--out", tmp_path / "report")
    assert res.exit_code == 2 and "no datasets/ and methods/ spec folders" in res.output


# -- datasets ------------------------------------------------------------------------------
def test_datasets_info_prints_the_format(synth_scene_dir) -> None:
    scene = synth_scene_dir("dnerf", size=(32, 32), num_frames=toy.NUM_TRAIN)
    res = invoke("datasets", "info", scene)
    assert res.exit_code == 0, res.output
    assert "(dnerf)" in res.output and "32x32" in res.output and "test" in res.output


def test_datasets_info_on_a_bad_folder(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("not a dataset")
    res = invoke("datasets", "info", tmp_path)
    assert res.exit_code == 2
    assert f"{tmp_path}: not a recognised dataset folder" in res.output
    res = invoke("datasets", "info", tmp_path / "missing")
    assert res.exit_code == 2 and str(tmp_path / "missing") in res.output


def test_datasets_synth_writes_a_loadable_scene(tmp_path: Path) -> None:
    out = tmp_path / "spheres"
    res = invoke("datasets", "synth", "--format", "dnerf", out)
    assert res.exit_code == 0, res.output
    scene = load_scene(out)
    assert scene.format == "dnerf" and scene.train and scene.test
    assert scene.test[0].load().shape == (scene.test[0].camera.height, scene.test[0].camera.width, 3)
    res = invoke("datasets", "synth", "--format", "colmap", tmp_path / "x")
    assert res.exit_code == 2 and "--format must be dnerf, hypernerf or neu3d" in res.output
    res = invoke("datasets", "synth", "--format", "dnerf", "--seed", "1", tmp_path / "s1")  # one int, not a list
    assert res.exit_code == 0, res.output
    assert not (load_scene(tmp_path / "s1").test[0].load() == scene.test[0].load()).all()
    res = invoke("datasets", "synth", "--scene", "skeleton", "--size", "64x48", "--frames", "6", tmp_path / "sk")
    assert res.exit_code == 0, res.output
    sk = load_scene(tmp_path / "sk")
    assert len(sk.train) == 6 and (sk.train[0].camera.width, sk.train[0].camera.height) == (64, 48)
    for args, msg in [(["--scene", "trex"], "--scene must be one of skeleton, spheres, not 'trex'"),
                      (["--size", "800"], "--size '800': give width x height in pixels"),
                      (["--frames", "1"], "--frames 1: at least 2"),
                      (["--format", "hypernerf", "--size", "65x48"], "hypernerf size must be even")]:
        res = invoke("datasets", "synth", *args, tmp_path / "bad")
        assert res.exit_code == 2 and msg in res.output, res.output


def test_records_written_by_cli_are_readable(toy_bench: ToyBench) -> None:
    assert run_toy(toy_bench, "--rate", "high").exit_code == 0
    assert sorted((r.scene, r.rate, r.status) for r in read_records(toy_bench.out)) == [
        (s, "high", "ok") for s in SCENES]


# -- methods -------------------------------------------------------------------------------
def test_methods_lists_rate_points_and_names_a_missing_spec(toy_bench: ToyBench) -> None:
    # The toy specs folder has methods/toy.toml only: the built-in methods have no spec there.
    res = invoke("methods")
    assert res.exit_code == 2
    assert "low, high" in res.output  # toy's rate points, in spec order
    assert f"{toy_bench.specs / 'methods' / '4dgs.toml'}: unknown method '4dgs'" in res.output


def test_methods_lists_the_repository_specs(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("EVALKIT_SPECS_DIR", raising=False)
    from evalkit.methods.registry import method_names
    from evalkit.specs import load_method_spec

    res = invoke("methods")
    assert res.exit_code == 0, res.output
    for name in method_names():
        assert name in res.output and ", ".join(load_method_spec(name).rates) in res.output


def test_run_says_when_a_jobs_times_are_contended(toy_bench: ToyBench, monkeypatch: pytest.MonkeyPatch) -> None:
    """A job timed beside other processes says so on the console, not only in its record."""
    from evalkit.metrics import contention

    shared = [True]
    monkeypatch.setattr(contention.ContentionWatch, "contended", property(lambda self: shared[0]))
    monkeypatch.setattr(contention.ContentionWatch, "notes",
                        lambda self: ["the GPU was shared (test)"] if shared[0] else [])
    res = run_toy(toy_bench, "--scene", "alpha", "--rate", "low")
    assert res.exit_code == 0, res.output
    assert "done toy / toy / alpha / low: PSNR" in res.output and "(times contended: shared GPU or busy host" in res.output
    shared[0] = False
    res = run_toy(toy_bench, "--scene", "beta", "--rate", "low")
    assert "done toy / toy / beta / low" in res.output and "times contended" not in res.output


# -- views -----------------------------------------------------------------------------------
@pytest.mark.parametrize("split", ["test", "val"])
def test_views_write_the_scored_renders(toy_bench: ToyBench, tmp_path: Path, split: str) -> None:
    """Each panel is ground truth | render | error; PSNR recomputed from the PNG's own pixels equals
    the PSNR the run recorded for that frame (the render panel is the image that was scored), also
    for a tuning run scored on the val views."""
    import numpy as np
    from PIL import Image

    assert run_toy(toy_bench, "--scene", "alpha", "--rate", "low", "--eval-split", split).exit_code == 0
    rec = record_path(toy_bench.out, "toy", "alpha", "toy", "low")
    recorded = {f["name"]: f["psnr"] for f in json.loads(rec.read_text())["per_frame"]}
    res = invoke("views", rec, "--out", tmp_path / "v", "--data-root", toy_bench.data_root, "--device", "cpu")
    assert res.exit_code == 0, res.output
    pngs = sorted((tmp_path / "v").glob("*.png"))
    assert [p.stem for p in pngs] == sorted(recorded)
    for p in pngs:
        img = np.asarray(Image.open(p)).astype(np.float64)
        w = img.shape[1] // 3
        gt, render, err = img[:, :w], img[:, w:2 * w], img[:, 2 * w:]
        mse = np.mean((render - gt) ** 2) / 255.0 ** 2
        assert -10 * np.log10(mse) == pytest.approx(recorded[p.stem], abs=1e-4)  # the record: float32
        expect = np.clip(np.rint(np.abs(render - gt).mean(axis=2) * 4.0), 0, 255)
        assert np.array_equal(err[..., 0], expect)
    rows = (tmp_path / "v" / "views.csv").read_text().splitlines()
    assert rows[0] == "frame,time,psnr,record_psnr,file" and len(rows) == len(pngs) + 1

    res = invoke("views", rec, "--out", tmp_path / "v2", "--data-root", toy_bench.data_root, "--device", "cpu",
                 "--every", "2")
    assert len(list((tmp_path / "v2").glob("*.png"))) == (len(pngs) + 1) // 2


def test_views_bad_input_names_the_file(toy_bench: ToyBench, tmp_path: Path) -> None:
    assert run_toy(toy_bench, "--scene", "alpha", "--rate", "low").exit_code == 0
    rec = record_path(toy_bench.out, "toy", "alpha", "toy", "low")
    common = ("--out", tmp_path / "v", "--device", "cpu")

    res = invoke("views", rec, *common, "--data-root", tmp_path / "nowhere")
    assert res.exit_code == 2 and "scene folder not found" in res.output and "nowhere" in res.output

    rec.with_suffix(".evk").rename(tmp_path / "moved.evk")
    res = invoke("views", rec, *common, "--data-root", toy_bench.data_root)
    assert res.exit_code == 2 and "bitstream is missing" in res.output and "low.evk" in res.output

    toy.STATE.fail_once = {("beta", "low")}
    run_toy(toy_bench, "--scene", "beta", "--rate", "low")
    failed = record_path(toy_bench.out, "toy", "beta", "toy", "low")
    res = invoke("views", failed, *common, "--data-root", toy_bench.data_root)
    assert res.exit_code == 2 and "did not finish" in res.output

    res = invoke("views", tmp_path / "none.json", *common)
    assert res.exit_code == 2 and "none.json" in res.output
    assert not list((tmp_path / "v").glob("*.png"))
