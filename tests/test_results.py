"""The results store: Record schema round trip, validation errors, atomic writes, DataFrames."""
from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

import evalkit.codec.container as container
from evalkit.results import (METRIC_NAMES, RECORD_COLUMNS, Record, RecordError, bitstream_path, collect_env,
                             git_commit, git_dirty, load_components, load_per_frame, load_records, read_record, read_records,
                             record_path, write_record)


def full_record(**over) -> Record:
    kw = dict(
        method="4dgs-cc", dataset="dnerf", scene="lego", rate="high", rate_params={"lambda_e": 1e-5, "codebook": 8192},
        config={"iterations": 23000, "sh_degree": 3}, quick=False, iterations=23000, resolution=[800, 800],
        resolution_scale=1.0, seed=7, status="ok", error=None,
        metrics={"psnr": 34.12, "ssim": 0.978, "dssim": None, "ms_ssim": 0.99, "lpips_alex": None, "lpips_vgg": 0.028},
        metrics_missing={"lpips_alex": "AlexNet weights unavailable offline"},
        per_frame=[{"name": "r_000", "time": 0.0, "psnr": 33.9, "ssim": 0.97},
                   {"name": "r_001", "time": 0.05, "psnr": 34.3, "ssim": 0.98}],
        size={"total_bytes": 1_900_123, "components": {"canonical": 1_000_000, "hexplane": 900_000, "header": 123}},
        bitstream="dnerf/lego/4dgs-cc/high.evk", num_primitives=40_000,
        timings={"train_s": 1234.5, "encode_s": 3.2, "decode_s": 1.1, "eval_s": 20.0},
        fps={"fps": 350.0, "ms_per_frame": 2.857, "device": "cuda:0", "gpu_name": "NVIDIA H200",
             "resolution": [800, 800], "frames": 20, "label": "decoded model, with deformation"},
        reused={"stage": "coarse", "from": "dnerf/lego/4dgs/default"},
        env={"evalkit": "0.1.0", "python": "3.11.7", "torch": "2.4.0", "gsplat": "1.5.3",
             "platform": "Linux", "git_commit": None},
        created="2025-01-02T03:04:05+00:00", notes=["no paper numbers for scene lego"])
    kw.update(over)
    return Record(**kw)


def test_round_trip_through_file_is_exact(tmp_path: Path) -> None:
    rec = full_record()
    path = record_path(tmp_path, "dnerf", "lego", "4dgs-cc", "high")
    assert path == tmp_path / "dnerf" / "lego" / "4dgs-cc" / "high.json"
    assert bitstream_path(tmp_path, "dnerf", "lego", "4dgs-cc", "high") == path.with_suffix(".evk")
    write_record(rec, path)
    back = read_record(path)
    assert back == rec
    raw = json.loads(path.read_text())
    assert raw["schema_version"] == 1 and list(raw)[0] == "schema_version"
    assert set(raw["metrics"]) == set(METRIC_NAMES) and raw["metrics"]["lpips_alex"] is None
    assert Record.from_dict(rec.to_dict()) == rec


def test_numpy_scalars_are_stored_as_plain_json(tmp_path: Path) -> None:
    rec = full_record(metrics={"psnr": np.float32(30.25)}, num_primitives=np.int64(5))
    write_record(rec, tmp_path / "r.json")
    back = read_record(tmp_path / "r.json")
    assert back.metrics["psnr"] == 30.25 and back.num_primitives == 5
    assert back.metrics["ssim"] is None  # unspecified metrics are missing, not zero


@pytest.mark.parametrize("mutate, words", [
    (lambda d: d.pop("scene"), ["missing required key", "scene"]),
    (lambda d: d.update(quick="yes"), ["'quick'", "bool"]),
    (lambda d: d.update(iterations=1.5), ["'iterations'", "int"]),
    (lambda d: d.update(status="done"), ["'status'", "ok"]),
    (lambda d: d.update(size=None), ["status 'ok' needs 'size'"]),
    (lambda d: d["size"].update(total_bytes="12"), ["size.total_bytes"]),
    (lambda d: d["metrics"].update(psnr="high"), ["'metrics'"]),
    (lambda d: d.update(resolution=[800]), ["'resolution'", "[W, H]"]),
    (lambda d: d["per_frame"][1].update(psnr="x"), ["per_frame[1].psnr"]),
    (lambda d: d.update(schema_version=2), ["schema_version 2"]),
    (lambda d: d.update(colour="red"), ["unknown key", "colour"]),
    (lambda d: d.update(created="yesterday"), ["'created'"]),
])
def test_invalid_records_name_the_file_and_the_problem(tmp_path: Path, mutate, words) -> None:
    data = full_record().to_dict()
    mutate(data)
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(data))
    with pytest.raises(RecordError) as err:
        read_record(path)
    msg = str(err.value)
    assert str(path) in msg
    for w in words:
        assert w in msg


def test_unreadable_files_name_the_file(tmp_path: Path) -> None:
    path = tmp_path / "broken.json"
    path.write_text('{"method": ')
    with pytest.raises(RecordError, match="broken.json: not valid JSON"):
        read_record(path)
    with pytest.raises(RecordError, match="no such record file"):
        read_record(tmp_path / "absent.json")


def test_failed_record_needs_no_size(tmp_path: Path) -> None:
    rec = Record("adc-gs", "neu3d", "flame_steak", "low", status="failed", error="CUDA out of memory")
    write_record(rec, tmp_path / "f.json")
    assert read_record(tmp_path / "f.json") == rec


def test_bad_record_never_replaces_a_good_file(tmp_path: Path) -> None:
    path = tmp_path / "dnerf" / "lego" / "m" / "r.json"
    write_record(full_record(), path)
    before = path.read_bytes()
    # NaN is not a missing value: refusing it keeps the old file and leaves no temp file.
    with pytest.raises(RecordError, match=r"r\.json: .*NaN"):
        write_record(full_record(metrics={"psnr": float("nan")}), path)
    with pytest.raises(RecordError, match=r"r\.json: .*JSON cannot store"):
        write_record(full_record(config={"fn": object()}), path)
    assert path.read_bytes() == before
    assert sorted(p.name for p in path.parent.iterdir()) == ["r.json"]


def test_crash_during_write_leaves_old_file_and_no_partial(tmp_path: Path, monkeypatch) -> None:
    path = tmp_path / "r.json"
    write_record(full_record(), path)
    before = path.read_bytes()

    def boom(fd: int) -> None:  # the data is written but not yet renamed into place
        raise OSError("disk died")

    monkeypatch.setattr(container.os, "fsync", boom)
    with pytest.raises(OSError, match="disk died"):
        write_record(full_record(rate="low"), path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["r.json"]


def test_load_records_dataframe(tmp_path: Path) -> None:
    a = full_record()
    b = full_record(method="adc-gs", rate="low", metrics={"psnr": 31.0, "ms_ssim": 0.96}, metrics_missing={
        "lpips_alex": "offline", "lpips_vgg": "offline"}, fps=None, quick=True,
        size={"total_bytes": 4_020_000, "components": {"anchors": 20_000, "features": 4_000_000}})
    c = Record("4dgs", "dnerf", "lego", "default", status="failed", error="boom")
    for r in (a, b, c):
        write_record(r, record_path(tmp_path, r.dataset, r.scene, r.method, r.rate))
    (tmp_path / "dnerf" / "lego" / "4dgs" / ".default.json.123.tmp").write_text("partial")  # ignored
    df = load_records(tmp_path).set_index("method")
    assert list(df.reset_index().columns) == list(RECORD_COLUMNS)
    assert len(df) == 3
    assert df.loc["4dgs-cc", "lpips_vgg"] == 0.028
    assert math.isnan(df.loc["adc-gs", "lpips_vgg"]) and math.isnan(df.loc["adc-gs", "lpips_alex"])
    assert df.loc["adc-gs", "dssim"] == pytest.approx((1 - 0.96) / 2)  # derived from MS-SSIM
    assert df.loc["4dgs-cc", "size_mb"] == 1.900123 and df.loc["4dgs-cc", "size_bytes"] == 1_900_123
    assert math.isnan(df.loc["adc-gs", "fps"]) and df.loc["4dgs-cc", "fps"] == 350.0
    assert bool(df.loc["adc-gs", "quick"]) and df.loc["4dgs", "status"] == "failed"
    assert math.isnan(df.loc["4dgs", "size_bytes"]) and math.isnan(df.loc["4dgs", "psnr"])
    assert df.loc["4dgs-cc", "train_s"] == 1234.5

    pf = load_per_frame(tmp_path)
    lego = pf[pf["method"] == "4dgs-cc"].set_index("frame")
    assert lego.loc["r_001", "psnr"] == 34.3 and lego.loc["r_001", "time"] == 0.05

    comps = load_components(tmp_path)
    sums = comps.groupby("method")["bytes"].sum()
    assert sums["4dgs-cc"] == 1_900_123 and sums["adc-gs"] == 4_020_000
    assert "4dgs" not in sums  # failed job: no bitstream


def test_load_records_reports_the_bad_file(tmp_path: Path) -> None:
    write_record(full_record(), record_path(tmp_path, "dnerf", "lego", "4dgs-cc", "high"))
    bad = record_path(tmp_path, "dnerf", "lego", "4dgs-cc", "low")
    bad.write_text("{}")
    with pytest.raises(RecordError, match=r"low\.json: missing required key"):
        load_records(tmp_path)


def test_two_records_of_one_job_are_an_error_naming_both(tmp_path: Path) -> None:
    """A variant record left under its old folder name ("m:v", now "m_v") would be read twice."""
    rec = full_record(method="4dgs-cc:wo-nv")
    new = record_path(tmp_path, "dnerf", "lego", "4dgs-cc:wo-nv", "high")
    assert new.parent.name == "4dgs-cc_wo-nv"
    write_record(rec, new)
    assert len(read_records(tmp_path)) == 1
    write_record(rec, tmp_path / "dnerf" / "lego" / "4dgs-cc:wo-nv" / "high.json")
    with pytest.raises(RecordError, match=r"second record of job 4dgs-cc:wo-nv/dnerf/lego/high") as err:
        read_records(tmp_path)
    assert "4dgs-cc_wo-nv" in str(err.value) and "4dgs-cc:wo-nv" in str(err.value)


def test_collect_env_and_git_commit(tmp_path: Path) -> None:
    env = collect_env()
    assert set(env) == {"evalkit", "python", "torch", "gsplat", "platform", "git_commit", "git_dirty", "executor"}
    assert env["executor"]["name"] == "inline" and env["executor"]["host"]  # what ran it (evalkit.sweep)
    assert env["python"].count(".") == 2
    assert git_commit(tmp_path) is None and git_dirty(tmp_path) is None  # not a repository
    if shutil.which("git") is None:
        pytest.skip("git not installed")
    run = lambda *a: subprocess.run(["git", *a], cwd=tmp_path, check=True, capture_output=True, text=True)  # noqa: E731
    run("init", "-q")
    run("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "--allow-empty", "-m", "x")
    assert git_commit(tmp_path) == run("rev-parse", "HEAD").stdout.strip()
    (tmp_path / "evalkit").mkdir()
    (tmp_path / "evalkit" / "f.py").write_text("a")
    run("add", "evalkit/f.py")
    run("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", "y")
    assert git_dirty(tmp_path / "evalkit") is False
    (tmp_path / "results.json").write_text("{}")  # results do not make the code dirty
    assert git_dirty(tmp_path / "evalkit") is False
    (tmp_path / "evalkit" / "f.py").write_text("b")  # a code file changed: the code is not HEAD's
    assert git_dirty(tmp_path / "evalkit") is True
    run("checkout", "-q", "--", "evalkit/f.py")
    (tmp_path / "evalkit" / "new.py").write_text("c")  # so does a new, not yet added module
    assert git_dirty(tmp_path) is True
    assert os.path.isdir(tmp_path / ".git")


def test_a_folder_of_stores_names_them_and_an_empty_one_reads_as_empty(tmp_path: Path) -> None:
    """``runs/seed1``, ``runs/h200/seed2`` hold records; ``runs`` itself is not an empty store. A
    non-record JSON at the same depth (a dataset's camera file) is not taken for one."""
    assert read_records(tmp_path) == []
    runs = tmp_path / "runs"
    for store in (runs / "seed1", runs / "h200" / "seed2"):
        write_record(full_record(), record_path(store, "dnerf", "lego", "4dgs-cc", "high"))
    camera = runs / "data" / "hypernerf" / "scene" / "camera" / "c0.json"
    camera.parent.mkdir(parents=True)
    camera.write_text('{"focal_length": 100}')
    with pytest.raises(RecordError) as exc:
        read_records(runs)
    assert f"these folders below it have records: {runs / 'h200' / 'seed2'}, {runs / 'seed1'} (give them all to average their seeds, or one" in str(exc.value)
