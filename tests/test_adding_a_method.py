"""The README's "Adding a method", followed by the toy method of tests/toy_method: its package,
its spec and a registry entry (for this test only) are all it takes to run through `evalkit run`
and `evalkit check` end to end."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from rich.console import Console
from typer.testing import CliRunner

from evalkit import cli
from evalkit.methods import registry
from evalkit.results import read_record, record_path
from evalkit.specs import specs_dir

TOY = Path(__file__).parent / "toy_method"


@pytest.fixture
def toy_installed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    specs = tmp_path / "specs"
    for kind in ("datasets", "methods"):
        shutil.copytree(specs_dir() / kind, specs / kind)
    shutil.copy(TOY / "mean-colour.toml", specs / "methods" / "mean-colour.toml")  # methods/<name>.toml
    monkeypatch.setenv("EVALKIT_SPECS_DIR", str(specs))
    monkeypatch.setattr(cli, "console", Console(width=500, color_system=None))
    with registry.registered("mean-colour", "tests.toy_method:MeanColour"):  # the registry line
        yield


def invoke(*args) -> str:
    res = CliRunner().invoke(cli.app, [str(a) for a in args])
    assert res.exit_code == 0, res.output
    return res.output


def test_a_new_method_runs_end_to_end(toy_installed, tmp_path: Path, synth_scene_dir) -> None:
    assert "mean-colour" in invoke("methods")
    data = tmp_path / "data"
    (data / "synthetic").mkdir(parents=True)
    (data / "synthetic" / "spheres").symlink_to(synth_scene_dir("dnerf"))
    out = tmp_path / "results"
    # inline: the registration above lives in this process only (a registry line in registry.py, as
    # the README says, reaches the child workers of the default executor)
    invoke("run", "--method", "mean-colour", "--dataset", "synthetic", "--data-root", data, "--out", out,
           "--device", "cpu", "--executor", "inline")
    low, high = (read_record(record_path(out, "synthetic", "spheres", "mean-colour", r)) for r in ("low", "high"))
    assert low.status == high.status == "ok"
    assert low.config == {"gain": 0.9, "bits": 2} and low.config_effective  # spec + rate point
    assert low.metrics["psnr"] < high.metrics["psnr"] < high.stage_metrics["unquantised"]["psnr"] + 1e-6
    assert low.size["components"]["colour"] == 12  # three int32
    ref = tmp_path / "ref.json"
    invoke("check", out, "--reference", ref, "--write-reference")
    assert {r["method"] for r in json.loads(ref.read_text())["records"]} == {"mean-colour"}
    invoke("check", out, "--reference", ref)
    assert "skipped" in invoke("run", "--method", "mean-colour", "--dataset", "synthetic", "--data-root", data,
                               "--out", out, "--device", "cpu", "--executor", "inline").lower()
