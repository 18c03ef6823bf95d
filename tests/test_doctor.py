"""`evalkit doctor`: what this machine can do, read from the machine, building and downloading nothing."""
from __future__ import annotations

from pathlib import Path

from typer.testing import CliRunner

from evalkit import cli
from evalkit.doctor import diagnose
from evalkit.metrics.lpips_metric import BACKBONE_CHECKPOINTS, WEIGHTS_DIR_ENV


def test_doctor_lists_data_scenes_lpips_weights_and_specs(tmp_path: Path, monkeypatch) -> None:
    for scene in ("lego", "mutant", "my-own"):
        (tmp_path / "data" / "dnerf" / scene).mkdir(parents=True)
    mine = tmp_path / "data" / "hypernerf" / "mine"  # only a scene of one's own, in the layout: it runs
    (mine / "camera").mkdir(parents=True)
    (mine / "dataset.json").write_text("{}")
    monkeypatch.setenv("EVALKIT_DATA_ROOT", str(tmp_path / "data"))
    (tmp_path / "w").mkdir()
    (tmp_path / "w" / BACKBONE_CHECKPOINTS["alex"]).write_bytes(b"x")
    monkeypatch.setenv(WEIGHTS_DIR_ENV, str(tmp_path / "w"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    checks = {c.name: c for c in diagnose()}
    assert checks["dataset dnerf"].ok and "2/8 spec scenes (lego, mutant); also my-own" in checks["dataset dnerf"].detail
    assert checks["dataset neu3d"].ok is False and "missing" in checks["dataset neu3d"].detail
    hn = checks["dataset hypernerf"]
    assert hn.ok and "0/4 spec scenes; also mine (mine in the hypernerf layout: runs without paper numbers)" in hn.detail
    assert checks["data root"].ok and str(tmp_path / "data") in checks["data root"].detail
    assert checks["LPIPS alex"].ok and str(tmp_path / "w") in checks["LPIPS alex"].detail
    assert checks["LPIPS vgg"].ok is False and BACKBONE_CHECKPOINTS["vgg"] in checks["LPIPS vgg"].detail
    assert "CUDA" in checks and "gsplat" in checks and "torchac" in checks
    assert str(Path(cli.__file__).resolve().parents[1]) in checks["specs"].detail
    assert not (tmp_path / "torch").exists()  # nothing downloaded

    res = CliRunner().invoke(cli.app, ["doctor"], env={"COLUMNS": "200"})
    assert res.exit_code == 0 and "dataset dnerf" in res.output and "LPIPS vgg" in res.output
