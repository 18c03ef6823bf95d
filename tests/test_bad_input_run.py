"""Bad input at the level of a sweep and the CLI: a NaN time fails its job with a clear record
and the sweep goes on; a killed synthetic-scene generation leaves nothing that breaks later runs;
a damaged video is refused unless allowed; the CLI reports damaged files in one line (exit 2)."""
from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from evalkit.cli import app
from evalkit.codec.container import Bitstream
from evalkit.data import DatasetError, load_scene
from evalkit.results import read_records
from evalkit.runner import run
from tests.test_runner import ToyBench, toy_bench  # noqa: F401  (fixture)

REPO = Path(__file__).resolve().parents[1]
TINY_4DGS = REPO / "tests" / "codec" / "data" / "tiny-4dgs.evk"


def test_nan_time_fails_its_jobs_and_the_sweep_goes_on(toy_bench: ToyBench) -> None:
    alpha = toy_bench.data_root / "toyset" / "alpha"
    src = alpha.resolve()
    alpha.unlink()
    shutil.copytree(src, alpha)
    p = alpha / "transforms_train.json"
    meta = json.loads(p.read_text())
    meta["frames"][2]["time"] = float("nan")
    p.write_text(json.dumps(meta))  # JSON NaN, as the file had
    result = run("toy", "toy", data_root=toy_bench.data_root, opts=toy_bench.opts())
    status = {(r.scene, r.rate): r for r in read_records(toy_bench.out)}
    assert {k: r.status for k, r in status.items()} == {("alpha", "low"): "failed", ("alpha", "high"): "failed",
                                                        ("beta", "low"): "ok", ("beta", "high"): "ok"}
    err = status[("alpha", "low")].error
    assert err.startswith("DatasetError") and str(p) in err and "frames[2].time is nan" in err, err
    assert len(result.failed) == 2


def test_killed_synthetic_generation_is_rebuilt(tmp_path: Path) -> None:
    from evalkit.data.synth import COMPLETE_MARK, ensure_generated

    out = tmp_path / "data" / "synthetic" / "spheres"
    code = ("import sys; from evalkit.data.synth import ensure_generated; "
            "ensure_generated('dnerf', sys.argv[1])")
    proc = subprocess.Popen([sys.executable, "-c", code, str(out)], cwd=REPO,
                            env={**__import__("os").environ, "PYTHONPATH": str(REPO)})
    try:
        deadline = time.time() + 60
        while time.time() < deadline and not any(out.parent.glob(".spheres.*.partial/*")) and proc.poll() is None:
            time.sleep(0.05)
        assert proc.poll() is None, "generation finished before it could be killed"
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait()
    assert not out.exists()  # the partial scene stayed in its temporary folder
    # an older evalkit generated in place: a partial folder without the completion mark
    out.mkdir(parents=True)
    (out / "transforms_train.json").write_text("{")
    ensure_generated("dnerf", out)
    assert (out / COMPLETE_MARK).is_file() and len(load_scene(out).train) > 0
    # the killed run's temporary folder is left until it is stale (10 min: it may be another
    # process's generation in progress), then removed by the next first use
    assert len(list(out.parent.glob(".spheres.*.partial"))) <= 1
    # and the CLI refuses to overwrite a folder that is not a generated scene
    other = tmp_path / "mine"
    other.mkdir()
    (other / "notes.txt").write_text("keep me")
    res = CliRunner().invoke(app, ["datasets", "synth", str(other)])
    assert res.exit_code == 2 and "not a generated scene" in res.output and (other / "notes.txt").is_file()


def test_damaged_video_is_refused_unless_allowed(synth_scene_dir, tmp_path: Path) -> None:
    root = tmp_path / "n3"
    shutil.copytree(synth_scene_dir("neu3d"), root)
    video = root / "cam02.mp4"
    b = bytearray(video.read_bytes())
    mid, rng = len(b) // 2, np.random.default_rng(0)
    for i in rng.integers(mid - 40, mid + 40, 20):  # small damage: concealed, every frame still decodes
        b[i] ^= int(rng.integers(1, 256))
    video.write_bytes(bytes(b))
    with pytest.raises(DatasetError) as info:
        load_scene(root, cache_dir=tmp_path / "c", progress=False)
    assert info.value.path == video and "decoder reported damage" in info.value.problem
    scene = load_scene(root, cache_dir=tmp_path / "c", progress=False, allow_corrupt_video=True)
    assert any("cam02.mp4" in n and "--allow-corrupt-video" in n for n in scene.extra["notes"])
    # the cache remembers: a later load without the flag is refused again, with it noted again
    with pytest.raises(DatasetError, match="decoder reported damage"):
        load_scene(root, cache_dir=tmp_path / "c", progress=False)
    res = CliRunner().invoke(app, ["datasets", "info", str(root), "--deep"])
    assert res.exit_code == 2 and "cam02.mp4" in res.output


def _edited(tmp_path: Path, edit) -> Path:
    bits = Bitstream.read(TINY_4DGS)
    edit(bits.header)
    out = tmp_path / "bad.evk"
    bits.write(out)
    return out


def test_cli_export_and_decode_errors_are_one_line(tmp_path: Path) -> None:
    cli = CliRunner()
    bad = _edited(tmp_path, lambda h: h.update(sh_degree=7))
    res = cli.invoke(app, ["export", str(bad), "-o", str(tmp_path / "x.ply")])
    assert res.exit_code == 2 and "sh_degree" in res.output and "Traceback" not in res.output
    assert not (tmp_path / "x.ply").exists()
    damaged = tmp_path / "damaged.evk"
    data = bytearray(TINY_4DGS.read_bytes())
    data[40] ^= 0x10
    damaged.write_bytes(bytes(data))
    res = cli.invoke(app, ["export", str(damaged), "-o", str(tmp_path / "y.ply")])
    assert res.exit_code == 2 and "header is corrupt" in res.output, res.output
    ok = cli.invoke(app, ["export", str(TINY_4DGS), "-o", str(tmp_path / "z"), "--time", "0.5"])
    assert ok.exit_code == 0, ok.output
    assert cli.invoke(app, ["export", str(TINY_4DGS), "-o", str(tmp_path / "w"), "--time", "7"]).exit_code == 2
    assert "--time" in cli.invoke(app, ["export", "--help"]).output
    assert "--times" not in cli.invoke(app, ["export", "--help"]).output


def test_cli_rough_edges(tmp_path: Path) -> None:
    cli = CliRunner()
    res = cli.invoke(app, ["run", "--method", "made-up-method", "--dataset", "synthetic", "--out", str(tmp_path)])
    assert res.exit_code == 2 and "unknown method 'made-up-method'" in res.output and ".toml" not in res.output
    assert "jobs" not in res.output  # no empty progress bar before the error
    help_text = cli.invoke(app, ["run", "--help"], terminal_width=200).output
    for flag in ("--quick", "--force", "--allow-corrupt-video"):
        (line,) = [x for x in help_text.splitlines() if flag in x]
        assert "<bool>" not in line, line


def test_gate_cannot_pass_vacuously(tmp_path: Path) -> None:
    cli = CliRunner()
    ref = tmp_path / "ref.json"
    ref.write_text(json.dumps({"records": []}))
    (tmp_path / "results").mkdir()
    res = cli.invoke(app, ["check", str(tmp_path / "results"), "--reference", str(ref)])
    assert res.exit_code == 2 and "empty" in res.output and "passed" not in res.output
    good = REPO / "results" / "reference" / "ci-synthetic-4dgs.json"
    res = cli.invoke(app, ["check", str(tmp_path / "results"), "--reference", str(good)])
    assert res.exit_code == 2 and "holds no records" in res.output
    res = cli.invoke(app, ["check", str(tmp_path / "absent"), "--reference", str(good)])
    assert res.exit_code == 2 and "no such results folder" in res.output
    ref_rec = json.loads(good.read_text())["records"][0]  # a folder of seed stores: the gate says to give one
    from evalkit.results import Record, record_path, write_record
    rec = Record(method=ref_rec["method"], dataset=ref_rec["dataset"], scene=ref_rec["scene"], rate=ref_rec["rate"],
                 status="failed", error="a test record")
    write_record(rec, record_path(tmp_path / "runs" / "seed1", rec.dataset, rec.scene, rec.method, rec.rate))
    res = cli.invoke(app, ["check", str(tmp_path / "runs"), "--reference", str(good)])
    assert res.exit_code == 2 and "seed stores (seed1)" in " ".join(res.output.split()), res.output
    res = cli.invoke(app, ["check", str(tmp_path / "results"), "--reference", str(good), "--max-rate-increase", "-5%"])
    assert res.exit_code == 2 and ">= 0" in res.output
