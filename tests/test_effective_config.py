"""The record holds the configuration that was really trained (``effective_config``), and a
resumed sweep compares it: a change in an inherited spec makes a record stale, naming the key."""
from __future__ import annotations

import shutil
from dataclasses import fields
from pathlib import Path

import pytest
import torch

from evalkit.methods.base import Budget, RatePoint, TrainContext
from evalkit.methods.registry import get_method
from evalkit.models.fourdgs.config import FourDGSConfig
from evalkit.results import Record, record_path, write_record
from evalkit.runner import RunError, RunOptions, plan_jobs, run
from evalkit.specs import load_method_spec, specs_dir

CPU = torch.device("cpu")


def _ctx(method: str, dataset: str = "dnerf", scene: str = "lego", iterations: int | None = None) -> TrainContext:
    return TrainContext(device=CPU, budget=Budget(iterations=iterations),
                        config=load_method_spec(method).config(dataset, scene), dataset=dataset, scene_name=scene)


def test_4dgs_cc_config_is_complete() -> None:
    """Every inherited 4DGS key (with 4dgs.toml's per-scene values), the variant's override and
    the rate point's parameters, the schedule after --iterations scaling."""
    rate = load_method_spec("4dgs-cc").rate_points("dnerf", ["high"])[0]
    full = get_method("4dgs-cc").effective_config(rate, _ctx("4dgs-cc"))
    assert {f.name for f in fields(FourDGSConfig)} <= set(full)
    assert full["resolution"] == [64, 64, 64, 25] and full["iterations"] == 20000  # methods/4dgs.toml, lego
    assert (full["base"], full["lambda_e"], full["codebook_size"]) == ("4dgs", 1e-5, 8192)
    variant = get_method("4dgs-cc:wo-vqcc").effective_config(rate, _ctx("4dgs-cc:wo-vqcc"))
    assert full["vqcc"] is True and variant["vqcc"] is False
    assert {k for k in full if full[k] != variant[k]} == {"vqcc"}
    short = get_method("4dgs-cc").effective_config(rate, _ctx("4dgs-cc", iterations=400))
    assert short["coarse_iterations"] + short["iterations"] == 400 and short["densify_until_iter"] < 15000


def test_4dgs_config_is_its_trainer_config() -> None:
    rate = RatePoint("default", {})
    cfg = get_method("4dgs").effective_config(rate, _ctx("4dgs", iterations=300))
    assert FourDGSConfig.from_dict(cfg) == FourDGSConfig.from_dict(load_method_spec("4dgs").config("dnerf", "lego"))\
        .scaled_schedule(300)


@pytest.fixture
def specs_copy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = tmp_path / "specs"
    for kind in ("datasets", "methods"):
        shutil.copytree(specs_dir() / kind, root / kind)
    monkeypatch.setenv("EVALKIT_SPECS_DIR", str(root))
    return root


def test_an_edited_base_spec_makes_a_4dgs_cc_record_stale(tmp_path: Path, specs_copy: Path, synth_scene_dir) -> None:
    data = tmp_path / "data" / "synthetic"
    data.mkdir(parents=True)
    (data / "spheres").symlink_to(synth_scene_dir("dnerf"))
    out = tmp_path / "results"
    opts = RunOptions(out=out, iterations=40, device="cpu")
    [job] = plan_jobs("4dgs-cc", "synthetic", tmp_path / "data", rates=["low"])[0]
    ctx = TrainContext(device=CPU, budget=Budget(iterations=40), config=load_method_spec("4dgs-cc").config(
        "synthetic", "spheres"), dataset="synthetic", scene_name="spheres")
    # an ok record as a finished job leaves it (no bitstream needed for the comparison)
    write_record(Record(method="4dgs-cc", dataset="synthetic", scene="spheres", rate="low",
                        rate_params=dict(job.rate.params), seed=0, schedule="--iterations 40", quick=True,
                        config=get_method("4dgs-cc").effective_config(job.rate, ctx), config_effective=True,
                        size={"total_bytes": 1, "components": {"all": 1}}),
                 record_path(out, "synthetic", "spheres", "4dgs-cc", "low"))

    unchanged = run("4dgs-cc", "synthetic", rates=["low"], data_root=tmp_path / "data", opts=opts)
    assert [o.status for o in unchanged.outcomes] == ["skipped"]

    spec = specs_copy / "methods" / "4dgs.toml"
    spec.write_text(spec.read_text().replace("percent_dense = 0.01", "percent_dense = 0.02"))
    with pytest.raises(RunError) as err:
        run("4dgs-cc", "synthetic", rates=["low"], data_root=tmp_path / "data", opts=opts)
    assert "4dgs-cc/low.json" in str(err.value) and "percent_dense 0.01 -> 0.02" in str(err.value)
