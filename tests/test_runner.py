"""The benchmark runner end to end with a tiny toy method (no real training).

The toy method "trains" a constant colour (the mean training colour times the rate point's
``scale``), encodes it coarsely quantised (4 bits per channel) plus ``pad_bytes`` of filler,
and decodes a *new* model from the bytes alone. Because the quantisation changes the colour,
the recorded PSNR tells whether the runner evaluated the decoded file or the trained model.

``ToyMethod`` and the ``toy_bench`` fixture are also used by tests/test_cli.py.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import torch

from evalkit.codec.container import Bitstream
from evalkit.data.detect import load_scene
from evalkit.data.scene import Camera, Scene
from evalkit.methods import registry
from evalkit.methods.base import Method, RatePoint, TrainContext, TrainedModel
from evalkit.metrics.flat_render import render_check_note
from evalkit.results import bitstream_path, read_record, read_records, record_path
from evalkit.runner import RunError, RunOptions, plan_jobs, run
from evalkit.specs import SpecError, load_method_spec

QUANT_LEVELS = 15  # 4 bits per channel: coarse enough that decoding visibly changes the colour
SCENES = ("alpha", "beta")
RATES = {"low": {"scale": 0.8, "pad_bytes": 10}, "high": {"scale": 1.0, "pad_bytes": 40}}
NUM_TRAIN = 6  # generate(): plus a third as many test views


@dataclass
class ToyState:
    """What the toy method saw; reset for every test by the ``toy_bench`` fixture."""

    fail_once: set[tuple[str, str]] = field(default_factory=set)  # (scene, rate) to fail on the next train
    train_calls: list[tuple[str, str]] = field(default_factory=list)
    decoded_bytes: list[bytes] = field(default_factory=list)
    trained_colour: dict[tuple[str, str], np.ndarray] = field(default_factory=dict)
    gains: list[tuple[str, float]] = field(default_factory=list)  # (scene, config gain) per train call


STATE = ToyState()


class ToyModel(TrainedModel):
    def __init__(self, colour: np.ndarray, pad_bytes: int = 0) -> None:
        self.colour = np.asarray(colour, dtype=np.float32)
        self.pad_bytes = pad_bytes

    def render(self, camera: Camera, t: float) -> torch.Tensor:
        return torch.from_numpy(self.colour).expand(camera.height, camera.width, 3).clone()

    def num_primitives(self) -> int:
        return 1

    def quality_stages(self):
        """The trained (unquantised) colour as the one stage before coding."""
        return [("unquantised", self.render)]

    def encode(self) -> Bitstream:
        q = np.rint(np.clip(self.colour, 0.0, 1.0) * QUANT_LEVELS).astype(np.uint8)
        return Bitstream(header={"method": "toy", "levels": QUANT_LEVELS},
                         components={"colour": q.tobytes(), "padding": bytes(self.pad_bytes)})


class ToyMethod(Method):
    name = "toy"

    def train(self, scene: Scene, rate: RatePoint, ctx: TrainContext) -> ToyModel:
        key = (ctx.scene_name, rate.name)
        STATE.train_calls.append(key)
        if key in STATE.fail_once:
            STATE.fail_once.discard(key)
            raise RuntimeError(f"toy failure on {key}")
        mean = np.mean([f.load().reshape(-1, 3).mean(axis=0) for f in scene.train], axis=0)
        gain = float(ctx.config.get("gain", 1.0))  # a spec variant changes it
        STATE.gains.append((ctx.scene_name, gain))
        colour = np.clip(mean * float(rate.params["scale"]) * gain, 0.0, 1.0)
        STATE.trained_colour[key] = colour
        for it in (1, 2):  # a training trace, as real methods report it
            ctx.progress(it, 2, {"loss": 0.5})
        return ToyModel(colour, int(rate.params["pad_bytes"]))

    def decode(self, bits: Bitstream, device: torch.device, source: str = "<bitstream>") -> ToyModel:
        STATE.decoded_bytes.append(bits.to_bytes())
        q = np.frombuffer(bits.component("colour"), dtype=np.uint8)
        return ToyModel(q.astype(np.float32) / bits.header["levels"])


# -- fixtures ------------------------------------------------------------------------------
@dataclass
class ToyBench:
    specs: Path
    data_root: Path
    out: Path

    def opts(self, **kw) -> RunOptions:
        return RunOptions(out=self.out, device="cpu", fps_warmup=1, fps_repeats=1, **kw)

    def record(self, scene: str, rate: str):
        return read_record(record_path(self.out, "toy", scene, "toy", rate))


def write_toy_specs(root: Path) -> None:
    (root / "datasets").mkdir(parents=True)
    (root / "methods").mkdir(parents=True)
    (root / "datasets" / "toy.toml").write_text(
        'name = "Toy"\nformat = "dnerf"\nfolder = "toyset"\n'
        'download = "https://example.org/toy.zip"\nresolution_scale = 1.0\n'
        f"scenes = {json.dumps(list(SCENES))}\n")
    rates = "".join(f"[rates.{n}]\nscale = {p['scale']}\npad_bytes = {p['pad_bytes']}\n" for n, p in RATES.items())
    (root / "methods" / "toy.toml").write_text(
        'name = "toy"\ntitle = "Toy"\npaper = "none"\n[defaults]\nknob = 3\n'
        '[variants.dim]\ntitle = "half gain"\ngain = 0.5\n' + rates)


@pytest.fixture
def toy_bench(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, synth_scene_dir) -> ToyBench:
    global STATE
    STATE = ToyState()
    monkeypatch.setattr(registry, "METHODS", {**registry.METHODS, "toy": f"{__name__}:ToyMethod"})
    specs = tmp_path / "specs"
    write_toy_specs(specs)
    monkeypatch.setenv("EVALKIT_SPECS_DIR", str(specs))
    data_root = tmp_path / "data"
    (data_root / "toyset").mkdir(parents=True)
    for i, scene in enumerate(SCENES):  # two different scenes (seeds), read-only symlinks
        (data_root / "toyset" / scene).symlink_to(synth_scene_dir("dnerf", size=(32, 32), num_frames=NUM_TRAIN, seed=i))

    # LPIPS needs big backbone checkpoints; without them it is recorded as missing, which keeps
    # these tests fast and identical on machines that have the weights.
    from evalkit.metrics import evaluate
    from evalkit.metrics.lpips_metric import LPIPSUnavailable

    def no_lpips(net, device):
        raise LPIPSUnavailable(f"LPIPS {net} disabled in the runner tests")

    monkeypatch.setattr(evaluate, "LPIPSMetric", no_lpips)
    return ToyBench(specs, data_root, tmp_path / "results")


def _status(bench: ToyBench) -> dict[tuple[str, str], str]:
    return {(r.scene, r.rate): r.status for r in read_records(bench.out)}


ALL_JOBS = {(s, r) for s in SCENES for r in RATES}


# -- tuning runs on the val views ----------------------------------------------------------------
def test_a_val_run_scores_the_val_views_and_says_so(toy_bench: ToyBench) -> None:
    """--eval-split val: the record scores the val views (not the test views) and says so; a later
    test-split run into the same folder is told the settings differ instead of skipping it."""
    from evalkit.data.detect import load_scene
    from evalkit.results import read_record

    result = run("toy", "toy", scenes=["alpha"], rates=["high"], data_root=toy_bench.data_root,
                 opts=toy_bench.opts(eval_split="val"))
    assert [o.status for o in result.outcomes] == ["ok"]
    path = toy_bench.out / "toy" / "alpha" / "toy" / "high.json"
    rec = read_record(path)
    scene = load_scene(toy_bench.data_root / "toyset" / "alpha")
    assert [f["name"] for f in rec.per_frame] == [f.image_name for f in scene.split("val")]
    assert rec.eval_split == "val" and any("val views" in n for n in rec.notes)
    assert json.loads(path.read_text())["eval_split"] == "val"
    with pytest.raises(RunError, match="evaluated on the val views .this run: test"):
        run("toy", "toy", scenes=["alpha"], rates=["high"], data_root=toy_bench.data_root, opts=toy_bench.opts())
    with pytest.raises(RunError, match="--eval-split 'train'"):
        run("toy", "toy", data_root=toy_bench.data_root, opts=toy_bench.opts(eval_split="train"))


def test_a_val_run_on_a_scene_without_val_views_is_refused_at_planning(toy_bench: ToyBench) -> None:
    """A scene without val views is named once, before any job trains (not by each job in turn)."""
    import shutil

    beta = toy_bench.data_root / "toyset" / "beta"
    copy = toy_bench.data_root / "beta_copy"
    shutil.copytree(beta.resolve(), copy)
    beta.unlink()
    (copy / "transforms_val.json").unlink()
    beta.symlink_to(copy)
    with pytest.raises(RunError) as exc:
        run("toy", "toy", data_root=toy_bench.data_root, opts=toy_bench.opts(eval_split="val"))
    msg = str(exc.value)
    assert "refused before any job ran (1 problem(s))" in msg and "no 'val' frames" in msg and "beta" in msg
    assert STATE.train_calls == []


def test_reports_and_gates_leave_tuning_runs_out(toy_bench: ToyBench, tmp_path: Path) -> None:
    from evalkit.report import build_report
    from evalkit.report.check import check, write_reference

    run("toy", "toy", scenes=["alpha"], rates=["low"], data_root=toy_bench.data_root,
        opts=toy_bench.opts(eval_split="val"))
    run("toy", "toy", scenes=["alpha"], rates=["high"], data_root=toy_bench.data_root, opts=toy_bench.opts())
    index = build_report(toy_bench.out, tmp_path / "report").read_text()
    assert "1 records" in index and "Left out: 1 tuning record(s)" in index and "low on val" in index
    ref = write_reference(toy_bench.out, tmp_path / "ref.json")
    assert [(r["rate"]) for r in json.loads(ref.read_text())["records"]] == ["high"]
    assert check(toy_bench.out, ref).ok


def test_evaluated_on_swaps_the_scored_views(synth_scene_dir) -> None:
    from evalkit.data.detect import load_scene
    from evalkit.data.scene import DatasetError

    scene = load_scene(synth_scene_dir("dnerf", size=(32, 32), num_frames=NUM_TRAIN))
    val = scene.evaluated_on("val")
    assert [f.image_name for f in val.test] == [f.image_name for f in scene.split("val")]
    assert [f.image_name for f in val.train] == [f.image_name for f in scene.train]
    assert not val.split("val") and scene.evaluated_on("test") is scene
    with pytest.raises(DatasetError, match=r"no 'val' frames.*splits present: train\)"):
        dataclasses.replace(scene, frames=scene.train).evaluated_on("val")


# -- resumability ---------------------------------------------------------------------------
def test_failed_job_is_recorded_and_only_it_reruns(toy_bench: ToyBench) -> None:
    STATE.fail_once = {("alpha", "high")}
    result = run("toy", "toy", data_root=toy_bench.data_root, opts=toy_bench.opts())

    # The sweep went on past the failure (alpha/high is the 2nd of 4 jobs).
    assert sorted(STATE.train_calls) == sorted(ALL_JOBS)
    assert [(o.job.scene, o.job.rate.name) for o in result.failed] == [("alpha", "high")]
    assert "toy failure on ('alpha', 'high')" in result.failed[0].error
    assert _status(toy_bench) == {**{k: "ok" for k in ALL_JOBS}, ("alpha", "high"): "failed"}
    failed = toy_bench.record("alpha", "high")
    assert failed.error == "RuntimeError: toy failure on ('alpha', 'high')"
    assert failed.size is None and failed.metrics["psnr"] is None
    log = record_path(toy_bench.out, "toy", "alpha", "toy", "high").with_suffix(".log").read_text()
    assert "FAILED" in log and "Traceback" in log and "toy failure" in log

    # Rerun: only the failed job is trained again; the others are skipped.
    STATE.train_calls.clear()
    ok_before = toy_bench.record("beta", "low").created
    result = run("toy", "toy", data_root=toy_bench.data_root, opts=toy_bench.opts())
    assert STATE.train_calls == [("alpha", "high")]
    assert {(o.job.scene, o.job.rate.name): o.status for o in result.outcomes} == {
        **{k: "skipped" for k in ALL_JOBS}, ("alpha", "high"): "ok"}
    assert not result.failed
    records = read_records(toy_bench.out)
    assert sorted((r.scene, r.rate) for r in records) == sorted(ALL_JOBS)  # exactly one record per job
    assert all(r.status == "ok" for r in records)
    assert toy_bench.record("beta", "low").created == ok_before  # untouched

    # Third run: nothing left to do.
    STATE.train_calls.clear()
    result = run("toy", "toy", data_root=toy_bench.data_root, opts=toy_bench.opts())
    assert STATE.train_calls == []
    assert {o.status for o in result.outcomes} == {"skipped"}

    # --force reruns everything.
    result = run("toy", "toy", data_root=toy_bench.data_root, opts=toy_bench.opts(force=True))
    assert sorted(STATE.train_calls) == sorted(ALL_JOBS)
    assert {o.status for o in result.outcomes} == {"ok"}


def test_method_and_variant_run_scene_by_scene_with_own_records(toy_bench: ToyBench) -> None:
    """`--method toy --method toy:dim`: one sweep, jobs grouped by scene (each scene loaded once),
    the variant's options reach the method and its records live under its own name."""
    result = run(["toy", "toy:dim"], "toy", data_root=toy_bench.data_root, opts=toy_bench.opts())
    assert not result.failed and len(result.outcomes) == 2 * len(ALL_JOBS)
    scenes = [s for s, _ in STATE.gains]
    assert scenes == sorted(scenes, key=list(SCENES).index)  # scene-major order
    assert sorted({g for _, g in STATE.gains}) == [0.5, 1.0]
    for scene in SCENES:
        base = read_record(record_path(toy_bench.out, "toy", scene, "toy", "high"))
        dim = read_record(record_path(toy_bench.out, "toy", scene, "toy:dim", "high"))
        assert dim.method == "toy:dim" and dim.config["gain"] == 0.5 and base.config.get("gain") is None
        assert dim.metrics["psnr"] != base.metrics["psnr"]
    # the variant's folder is a portable name ("toy_dim", no ':'); reports still read its real name
    assert (toy_bench.out / "toy" / SCENES[0] / "toy_dim" / "high.json").is_file()
    assert {r.method for r in read_records(toy_bench.out)} == {"toy", "toy:dim"}


def test_variant_with_its_own_rate_points(toy_bench: ToyBench) -> None:
    """A variant's `[variants.<v>.rates.<r>]` tables replace the spec's rate points (e.g. one point
    for a variant that is not rate-scalable): only those jobs are planned, trained and recorded."""
    spec = toy_bench.specs / "methods" / "toy.toml"
    spec.write_text(spec.read_text() + '[variants.one]\ngain = 0.5\n[variants.one.rates.only]\nscale = 1.0\n'
                    'pad_bytes = 5\n[variants.bad]\nrates = 3\n')
    result = run("toy:one", "toy", data_root=toy_bench.data_root, opts=toy_bench.opts())
    assert not result.failed and sorted(STATE.train_calls) == [(s, "only") for s in SCENES]
    assert {(r.scene, r.rate) for r in read_records(toy_bench.out)} == {(s, "only") for s in SCENES}
    assert [r.name for r in load_method_spec("toy").rate_points("toy")] == list(RATES)
    with pytest.raises(SpecError, match="variant 'bad': 'rates' must be"):
        load_method_spec("toy:bad")


def test_a_variant_overrides_the_dataset_and_scene_tables(toy_bench: ToyBench) -> None:
    """A variant is the method with its settings changed everywhere: its options win over the
    dataset's and a scene's own values (e.g. a tuning variant of a per-dataset threshold)."""
    spec = toy_bench.specs / "methods" / "toy.toml"
    spec.write_text(spec.read_text() + '[datasets.toy]\ngain = 0.8\nknob = 4\n[datasets.toy.scenes.beta]\n'
                    'gain = 0.9\n[variants.up]\ngain = 2.0\n')
    assert load_method_spec("toy").config("toy", "alpha") == {"knob": 4, "gain": 0.8}
    assert load_method_spec("toy").config("toy", "beta")["gain"] == 0.9
    up = load_method_spec("toy:up")
    assert up.config("toy", "alpha") == {"knob": 4, "gain": 2.0} and up.config("toy", "beta")["gain"] == 2.0


def test_unreadable_record_is_redone(toy_bench: ToyBench) -> None:
    run("toy", "toy", scenes=["alpha"], rates=["low"], data_root=toy_bench.data_root, opts=toy_bench.opts())
    rec = record_path(toy_bench.out, "toy", "alpha", "toy", "low")
    rec.write_text('{"method": "toy", "dataset": ')  # e.g. written by a tool that is not atomic
    STATE.train_calls.clear()
    result = run("toy", "toy", scenes=["alpha"], rates=["low"], data_root=toy_bench.data_root, opts=toy_bench.opts())
    assert STATE.train_calls == [("alpha", "low")] and result.outcomes[0].status == "ok"
    assert toy_bench.record("alpha", "low").status == "ok"


def test_ok_record_whose_bitstream_was_deleted_is_redone(toy_bench: ToyBench) -> None:
    opts = toy_bench.opts()
    run("toy", "toy", scenes=["alpha"], rates=["low"], data_root=toy_bench.data_root, opts=opts)
    (toy_bench.out / toy_bench.record("alpha", "low").bitstream).unlink()
    STATE.train_calls.clear()
    run("toy", "toy", scenes=["alpha"], rates=["low"], data_root=toy_bench.data_root, opts=opts)
    assert STATE.train_calls == [("alpha", "low")]
    assert (toy_bench.out / toy_bench.record("alpha", "low").bitstream).is_file()


def test_unwritable_record_value_fails_the_job_not_the_sweep(toy_bench: ToyBench, monkeypatch) -> None:
    """A method handing back something JSON cannot store fails its own job only."""
    original = ToyMethod.train

    def train_with_bad_reuse(self, scene, rate, ctx):
        model = original(self, scene, rate, ctx)
        if rate.name == "low":
            model.reused = {"state": object()}
        return model

    monkeypatch.setattr(ToyMethod, "train", train_with_bad_reuse)
    result = run("toy", "toy", scenes=["alpha"], data_root=toy_bench.data_root, opts=toy_bench.opts())
    assert {o.job.rate.name: o.status for o in result.outcomes} == {"low": "failed", "high": "ok"}
    status = _status(toy_bench)
    assert status == {("alpha", "low"): "failed", ("alpha", "high"): "ok"}
    assert "record could not be written" in toy_bench.record("alpha", "low").error


# -- decoding from the file, sizes ------------------------------------------------------------
def _psnr_8bit(pred: np.ndarray, gt: np.ndarray) -> float:
    """PSNR of 8-bit-quantised images (the protocol's convention), in float64 numpy."""
    q = lambda x: np.floor(255.0 * np.clip(x.astype(np.float64), 0, 1) + 0.5) / 255.0  # noqa: E731
    mse = np.mean((q(pred) - q(gt)) ** 2)
    return float(-10.0 * math.log10(mse))


def test_decoded_model_comes_from_the_bitstream_file(toy_bench: ToyBench, monkeypatch: pytest.MonkeyPatch) -> None:
    reads: list[Path] = []
    real_read = Bitstream.read.__func__

    def counting_read(cls, path):
        reads.append(Path(path))
        return real_read(cls, path)

    monkeypatch.setattr(Bitstream, "read", classmethod(counting_read))
    result = run("toy", "toy", scenes=["alpha"], rates=["low"], data_root=toy_bench.data_root, opts=toy_bench.opts())
    assert [o.status for o in result.outcomes] == ["ok"], result.outcomes[0].error

    evk = bitstream_path(toy_bench.out, "toy", "alpha", "toy", "low")
    on_disk = evk.read_bytes()
    assert evk in reads  # the runner read the file back ...
    assert STATE.decoded_bytes == [on_disk]  # ... and decode got exactly its bytes, once

    rec = toy_bench.record("alpha", "low")
    assert rec.bitstream == str(evk.relative_to(toy_bench.out))
    assert rec.size["total_bytes"] == os.path.getsize(evk) == len(on_disk)
    comps = rec.size["components"]
    assert comps["colour"] == 3 and comps["padding"] == RATES["low"]["pad_bytes"]
    assert sum(comps.values()) == rec.size["total_bytes"]  # framing is counted under "header"

    # The recorded PSNR is that of the colour stored in the file, not of the trained colour.
    scene = load_scene(toy_bench.data_root / "toyset" / "alpha", resolution_scale=1.0)
    decoded = np.frombuffer(Bitstream.from_bytes(on_disk).components["colour"], np.uint8) / QUANT_LEVELS
    trained = STATE.trained_colour[("alpha", "low")]
    psnr_of = lambda c: np.mean([_psnr_8bit(np.broadcast_to(c, f.load().shape), f.load())  # noqa: E731
                                 for f in scene.test])
    assert rec.metrics["psnr"] == pytest.approx(psnr_of(decoded), abs=1e-4)
    assert abs(psnr_of(trained) - psnr_of(decoded)) > 0.05  # the test can tell the two apart


# -- record content ------------------------------------------------------------------------
def test_ok_record_schema_and_values(toy_bench: ToyBench) -> None:
    run("toy", "toy", scenes=["beta"], rates=["high"], data_root=toy_bench.data_root, opts=toy_bench.opts(seed=7))
    rec = toy_bench.record("beta", "high")
    assert (rec.method, rec.dataset, rec.scene, rec.rate, rec.status) == ("toy", "toy", "beta", "high", "ok")
    # the toy's flat (not background) colour is its only note
    assert rec.error is None and rec.notes == [render_check_note(rec.env["render_check"])]
    assert not rec.env["render_check"]["empty"]
    assert rec.quick is False and rec.seed == 7
    assert rec.rate_params == RATES["high"]
    # Method.effective_config's default: methods/toy.toml [defaults] with the rate point's parameters
    assert rec.config == {"knob": 3, **RATES["high"]} and rec.config_effective
    assert rec.num_primitives == 1 and rec.resolution == [32, 32] and rec.resolution_scale == 1.0

    scene = load_scene(toy_bench.data_root / "toyset" / "beta", resolution_scale=1.0)
    test = scene.test
    assert len(test) >= 2
    colour = np.frombuffer(Bitstream.read(toy_bench.out / rec.bitstream).components["colour"], np.uint8) / QUANT_LEVELS
    expected = [_psnr_8bit(np.broadcast_to(colour, f.load().shape), f.load()) for f in test]
    assert [row["name"] for row in rec.per_frame] == [f.image_name for f in test]
    assert [row["time"] for row in rec.per_frame] == [f.time for f in test]
    assert [row["psnr"] for row in rec.per_frame] == pytest.approx(expected, abs=1e-4)
    assert rec.metrics["psnr"] == pytest.approx(np.mean(expected), abs=1e-4)
    assert 0.0 < rec.metrics["ssim"] < 1.0  # a flat colour is not the image
    assert all(0.0 < row["ssim"] < 1.0 for row in rec.per_frame)
    # Missing metrics are null with a reason, never 0.
    for m in ("ms_ssim", "dssim", "lpips_alex", "lpips_vgg"):
        assert rec.metrics[m] is None and rec.metrics_missing[m]
    assert "32x32" in rec.metrics_missing["ms_ssim"]

    assert rec.fps["label"] == "CPU (not comparable to GPU FPS)" and rec.fps["device"] == "cpu"
    assert rec.fps["fps"] > 0 and rec.fps["frames"] == len(test) and rec.fps["resolution"] == [32, 32]
    assert rec.env["python"] and rec.env["torch"] and rec.env["evalkit"]
    assert set(rec.timings) == {"train_s", "encode_s", "decode_s", "eval_s", "stages_s", "training_setup_s",
                                "coding_setup_s"}
    assert all(v >= 0 for v in rec.timings.values())
    # the intermediate model (before the 4-bit coding) is evaluated on the same test views
    trained = STATE.trained_colour[("beta", "high")]
    unq = np.mean([_psnr_8bit(np.broadcast_to(trained, f.load().shape), f.load()) for f in test])
    assert list(rec.stage_metrics) == ["unquantised"]
    assert rec.stage_metrics["unquantised"]["psnr"] == pytest.approx(unq, abs=1e-4)
    assert 0.0 < rec.stage_metrics["unquantised"]["ssim"] < 1.0


def test_failing_coding_step_evaluation_does_not_fail_the_job(toy_bench: ToyBench, monkeypatch) -> None:
    def broken(self):
        raise RuntimeError("out of memory while rendering a stage")

    monkeypatch.setattr(ToyModel, "quality_stages", broken)
    run("toy", "toy", scenes=["alpha"], rates=["low"], data_root=toy_bench.data_root, opts=toy_bench.opts())
    rec = toy_bench.record("alpha", "low")
    assert rec.status == "ok" and rec.size["total_bytes"] > 0 and rec.metrics["psnr"] is not None
    assert rec.stage_metrics == {} and "stages_s" not in rec.timings
    assert any("coding step not measured" in n and "out of memory" in n for n in rec.notes)


def test_quick_flag_is_recorded(toy_bench: ToyBench) -> None:
    run("toy", "toy", scenes=["alpha"], rates=["low"], data_root=toy_bench.data_root, opts=toy_bench.opts(quick=True))
    rec = toy_bench.record("alpha", "low")
    assert rec.quick is True and any("quick schedule" in n for n in rec.notes)


def test_explicit_iterations_mark_the_record_as_non_protocol(toy_bench: ToyBench) -> None:
    run("toy", "toy", scenes=["alpha"], rates=["low"], data_root=toy_bench.data_root,
        opts=toy_bench.opts(iterations=5))
    rec = toy_bench.record("alpha", "low")
    assert rec.iterations == 5  # the toy model has no 'iterations': the budget's is recorded
    assert rec.quick is True and any("--iterations 5" in n for n in rec.notes)


# -- atomic record writes -------------------------------------------------------------------
def test_crash_while_writing_a_record_leaves_no_partial_file(toy_bench: ToyBench,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    real_replace = os.replace

    def crash_on_json(src, dst, *a, **kw):
        if str(dst).endswith(".json"):
            raise OSError(28, "No space left on device")
        return real_replace(src, dst, *a, **kw)

    monkeypatch.setattr(os, "replace", crash_on_json)
    with pytest.raises(OSError, match="No space left"):
        run("toy", "toy", scenes=["alpha"], rates=["low"], data_root=toy_bench.data_root, opts=toy_bench.opts())
    job_dir = record_path(toy_bench.out, "toy", "alpha", "toy", "low").parent
    leftovers = sorted(p.name for p in job_dir.iterdir())
    assert leftovers == ["low.evk", "low.log"], leftovers  # no record, no temp file
    assert read_records(toy_bench.out) == []

    # A hard kill (no cleanup) can leave a half-written temp file: readers and the rerun ignore it.
    (job_dir / ".low.json.x1y2.tmp").write_text('{"method": "toy", "datas')
    monkeypatch.setattr(os, "replace", real_replace)
    STATE.train_calls.clear()
    result = run("toy", "toy", scenes=["alpha"], rates=["low"], data_root=toy_bench.data_root, opts=toy_bench.opts())
    assert STATE.train_calls == [("alpha", "low")] and [o.status for o in result.outcomes] == ["ok"]
    assert [(r.scene, r.rate, r.status) for r in read_records(toy_bench.out)] == [("alpha", "low", "ok")]


# -- planning -------------------------------------------------------------------------------
def test_plan_jobs_expands_scenes_and_rates(toy_bench: ToyBench) -> None:
    jobs, notes = plan_jobs("toy", "toy", toy_bench.data_root)
    assert [(j.scene, j.rate.name) for j in jobs] == [(s, r) for s in SCENES for r in RATES]
    assert notes == [] and all(j.in_spec for j in jobs)
    assert jobs[0].scene_dir == toy_bench.data_root / "toyset" / "alpha"
    jobs, _ = plan_jobs("toy", "toy", toy_bench.data_root, scenes=["beta"], rates=["high"])
    assert [(j.scene, j.rate.name, j.rate.params) for j in jobs] == [("beta", "high", RATES["high"])]


def test_unknown_scene_names_folder_and_lists_present(toy_bench: ToyBench) -> None:
    with pytest.raises(RunError) as exc:
        plan_jobs("toy", "toy", toy_bench.data_root, scenes=["gamma"])
    msg = str(exc.value)
    assert str(toy_bench.data_root / "toyset" / "gamma") in msg and "not found" in msg
    assert "present: alpha, beta" in msg


@pytest.mark.parametrize("error", [ValueError, TypeError])  # a refused value; a value of the wrong type
def test_a_refused_configuration_stops_the_sweep_before_any_job(toy_bench: ToyBench, error: type,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """A rate point the method refuses (``effective_config`` raises) is found at planning: the sweep
    names that job and the reason, and no job trains (not hours later, when its turn comes)."""
    def refuse_high(self, rate, ctx):
        if rate.name == "high":
            raise error("high is not for this toy")
        return {**ctx.config, **rate.params}

    monkeypatch.setattr(ToyMethod, "effective_config", refuse_high)
    with pytest.raises(RunError) as exc:
        run("toy", "toy", data_root=toy_bench.data_root, opts=toy_bench.opts())
    msg = str(exc.value)
    assert "refused before any job ran (2 problem(s))" in msg and "alpha" in msg and "beta" in msg and "high is not for this toy" in msg
    assert STATE.train_calls == [] and not toy_bench.out.exists()


def test_missing_dataset_folder_says_where_and_how(toy_bench: ToyBench, tmp_path: Path) -> None:
    empty = tmp_path / "nodata"
    with pytest.raises(RunError) as exc:
        plan_jobs("toy", "toy", empty)
    msg = str(exc.value)
    assert str(empty / "toyset") in msg and str(empty / "toyset" / "alpha") in msg
    assert "--data-root" in msg and "https://example.org/toy.zip" in msg


def test_spec_scenes_absent_lists_present_folders(toy_bench: ToyBench, tmp_path: Path) -> None:
    root = tmp_path / "other"
    (root / "toyset" / "mine").mkdir(parents=True)
    with pytest.raises(RunError) as exc:
        plan_jobs("toy", "toy", root)
    msg = str(exc.value)
    assert "alpha, beta" in msg and "present: mine, none in the dnerf layout" in msg and "--scene" in msg


def test_scenes_present_outside_the_spec_run_when_no_scene_is_named(toy_bench: ToyBench, synth_scene_dir,
                                                                     tmp_path: Path) -> None:
    """The headline use (``evalkit run --method M --dataset D``) runs every scene present in the
    dataset's layout: the spec's first, then the others with a note (no paper numbers); a folder
    in another layout is left out."""
    root = tmp_path / "mixed"
    (root / "toyset" / "notes").mkdir(parents=True)  # not a scene
    (root / "toyset" / "zeta").symlink_to(synth_scene_dir("dnerf", size=(32, 32), num_frames=NUM_TRAIN))
    jobs, notes = plan_jobs("toy", "toy", root, rates=["low"])
    assert [(j.scene, j.in_spec) for j in jobs] == [("zeta", False)]
    assert notes == ["scene 'zeta' is not in datasets/toy.toml: no paper numbers exist for it"]
    (root / "toyset" / "beta").symlink_to(toy_bench.data_root / "toyset" / "beta")
    jobs, notes = plan_jobs("toy", "toy", root, rates=["low"])
    assert [(j.scene, j.in_spec) for j in jobs] == [("beta", True), ("zeta", False)]
    (root / "toyset" / "zeta2").symlink_to(root / "toyset" / "zeta")  # a second name: not trained twice
    jobs, notes = plan_jobs("toy", "toy", root, rates=["low"])
    assert [j.scene for j in jobs] == ["beta", "zeta"] and "is the same folder as another scene" in notes[-1]


def test_unknown_rate_and_method_are_run_errors(toy_bench: ToyBench) -> None:
    with pytest.raises(RunError, match=r"unknown rate point\(s\) \['mid'\]"):
        run("toy", "toy", rates=["mid"], data_root=toy_bench.data_root, opts=toy_bench.opts())
    with pytest.raises(RunError, match="unknown method 'nope'"):
        run("nope", "toy", data_root=toy_bench.data_root, opts=toy_bench.opts())
    with pytest.raises(RunError, match="unknown dataset 'nope'"):
        run("toy", "nope", data_root=toy_bench.data_root, opts=toy_bench.opts())


def test_spec_without_registered_method_is_a_run_error(toy_bench: ToyBench) -> None:
    (toy_bench.specs / "methods" / "ghost.toml").write_text('name = "ghost"\n')
    with pytest.raises(RunError, match="unknown method 'ghost'"):
        run("ghost", "toy", data_root=toy_bench.data_root, opts=toy_bench.opts())


def test_scene_outside_the_spec_runs_with_a_note(toy_bench: ToyBench, synth_scene_dir) -> None:
    (toy_bench.data_root / "toyset" / "extra").symlink_to(synth_scene_dir("dnerf", size=(32, 32), num_frames=NUM_TRAIN))
    result = run("toy", "toy", scenes=["extra"], rates=["low"], data_root=toy_bench.data_root, opts=toy_bench.opts())
    assert [o.status for o in result.outcomes] == ["ok"]
    assert any("'extra' is not in datasets/toy.toml" in n for n in result.notes)
    rec = toy_bench.record("extra", "low")
    assert any("'extra' is not in datasets/toy.toml" in n for n in rec.notes)


def test_a_shared_gpu_is_flagged_in_the_record(toy_bench: ToyBench, monkeypatch) -> None:
    """The runner samples the GPU at each phase; other processes on it make a note and the
    record's times count as contended (the report then leaves out its FPS)."""
    from evalkit.metrics import contention
    counts = iter([0, 0, 2, 2, 1] + [0] * 100)
    monkeypatch.setattr(contention, "gpu_compute_processes", lambda device: next(counts))
    run("toy", "toy", data_root=toy_bench.data_root, opts=toy_bench.opts(), scenes=["alpha"], rates=["low"])
    rec = toy_bench.record("alpha", "low")
    c = rec.env["contention"]
    assert [s["phase"] for s in c["samples"]] == ["start", "trained", "encoded", "decoded", "evaluated"]
    assert c["gpu_other_processes_max"] == 2 and c["contended"] and rec.timings_contended
    assert any("encoded: 2, decoded: 2, evaluated: 1" in n for n in rec.notes)
    log = record_path(toy_bench.out, "toy", "alpha", "toy", "low").with_suffix(".log").read_text()
    assert all(n in log for n in rec.notes)  # the job log carries the record's notes
    # alone: no note, not contended
    counts = iter([0] * 100)
    run("toy", "toy", data_root=toy_bench.data_root, opts=toy_bench.opts(force=True), scenes=["alpha"], rates=["low"])
    rec = toy_bench.record("alpha", "low")
    assert not rec.timings_contended and rec.env["contention"]["gpu_other_processes_max"] == 0


class FakeClock:
    """The runner's clock (``runner.synced_clock``), advanced only by the test: timings without wall time."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self, device) -> float:
        return self.now


def test_one_time_coder_setup_is_not_timed_as_encoding(toy_bench: ToyBench, monkeypatch) -> None:
    """A method's ``prepare_coding`` (e.g. compiling torchac on first use) runs before the encode
    timer starts; its time is recorded apart, and the default hook costs nothing."""
    from evalkit import runner

    clock = FakeClock()
    monkeypatch.setattr(runner, "synced_clock", clock)
    calls: list[str] = []

    def prepare(self) -> None:
        calls.append("prepare")
        clock.now += 40.0

    def encode(self, _encode=ToyModel.encode):
        calls.append("encode")
        clock.now += 2.0
        return _encode(self)

    with monkeypatch.context() as m:
        m.setattr(ToyMethod, "prepare_coding", prepare)
        m.setattr(ToyModel, "encode", encode)
        run("toy", "toy", data_root=toy_bench.data_root, opts=toy_bench.opts(), scenes=["alpha"], rates=["low"])
    t = toy_bench.record("alpha", "low").timings
    assert calls == ["prepare", "encode"]
    assert (t["coding_setup_s"], t["encode_s"]) == (40.0, 2.0)
    run("toy", "toy", data_root=toy_bench.data_root, opts=toy_bench.opts(force=True), scenes=["alpha"], rates=["low"])
    assert toy_bench.record("alpha", "low").timings["coding_setup_s"] == 0.0


def test_one_time_training_setup_is_not_timed_as_training(toy_bench: ToyBench, monkeypatch) -> None:
    """A method's ``prepare_training`` (e.g. compiling GPU kernels on first use) gets the job's
    rate and context and runs before the training timer starts; its time is recorded apart."""
    from evalkit import runner

    clock = FakeClock()
    monkeypatch.setattr(runner, "synced_clock", clock)
    calls: list[tuple] = []

    def prepare(self, rate, ctx) -> None:
        calls.append(("prepare", rate.name, ctx.scene_name))
        clock.now += 30.0

    def train(self, *a, _train=ToyMethod.train):
        calls.append(("train",))
        clock.now += 3.0
        return _train(self, *a)

    with monkeypatch.context() as m:
        m.setattr(ToyMethod, "prepare_training", prepare)
        m.setattr(ToyMethod, "train", train)
        run("toy", "toy", data_root=toy_bench.data_root, opts=toy_bench.opts(), scenes=["alpha"], rates=["low"])
    t = toy_bench.record("alpha", "low").timings
    assert calls == [("prepare", "low", "alpha"), ("train",)]
    assert (t["training_setup_s"], t["train_s"]) == (30.0, 3.0)
    run("toy", "toy", data_root=toy_bench.data_root, opts=toy_bench.opts(force=True), scenes=["alpha"], rates=["low"])
    assert toy_bench.record("alpha", "low").timings["training_setup_s"] == 0.0


def test_a_failing_training_setup_is_a_failed_record(toy_bench: ToyBench, monkeypatch) -> None:
    def prepare(self, rate, ctx) -> None:
        raise RuntimeError("kernel compiler crashed")

    monkeypatch.setattr(ToyMethod, "prepare_training", prepare, raising=False)
    run("toy", "toy", data_root=toy_bench.data_root, opts=toy_bench.opts(), scenes=["alpha"], rates=["low"])
    rec = toy_bench.record("alpha", "low")
    assert rec.status == "failed" and rec.error == "RuntimeError: kernel compiler crashed"


def test_threads_option_applies_to_the_jobs_and_is_restored(toy_bench: ToyBench, monkeypatch) -> None:
    """--threads sets torch's CPU threads for the sweep (recorded in env.contention) and puts the
    caller's setting back; a non-positive count is refused before any job runs."""
    seen: list[int] = []
    train = ToyMethod.train
    monkeypatch.setattr(ToyMethod, "train", lambda self, *a: (seen.append(torch.get_num_threads()), train(self, *a))[1])
    before = torch.get_num_threads()
    want = 1 if before != 1 else 2
    run("toy", "toy", data_root=toy_bench.data_root, opts=toy_bench.opts(threads=want), scenes=["alpha"], rates=["low"])
    assert seen == [want] and torch.get_num_threads() == before
    assert toy_bench.record("alpha", "low").env["contention"]["torch_threads"] == want
    with pytest.raises(RunError, match="--threads 0"):
        run("toy", "toy", data_root=toy_bench.data_root, opts=toy_bench.opts(threads=0, force=True))
    assert seen == [want]


def test_a_record_made_with_other_settings_is_not_skipped_silently(toy_bench: ToyBench) -> None:
    """Resuming skips a job whose record exists only when the record was made with this sweep's
    settings; otherwise nothing runs and the error names each file and what differs (a skip
    would present other settings as this run, a rerun would lose the record)."""
    opts = toy_bench.opts()
    run("toy", "toy", data_root=toy_bench.data_root, opts=opts, scenes=["alpha"], rates=["low"])
    rec = toy_bench.record("alpha", "low")
    assert rec.schedule == "protocol" and rec.seed == 0
    path = record_path(toy_bench.out, "toy", "alpha", "toy", "low")
    STATE.train_calls.clear()

    with pytest.raises(RunError) as err:
        run("toy", "toy", data_root=toy_bench.data_root, opts=toy_bench.opts(seed=1, iterations=50),
            scenes=["alpha"], rates=["low"])
    msg = str(err.value)
    assert f"{path}: seed 0 (this run: 1); schedule protocol (this run: --iterations 50)" in msg
    assert "--force" in msg and STATE.train_calls == []
    assert toy_bench.record("alpha", "low").created == rec.created  # untouched

    # An edited rate point or method config is a change too; an unchanged one is skipped.
    toml = toy_bench.specs / "methods" / "toy.toml"
    toml.write_text(toml.read_text().replace("knob = 3", "knob = 4"))
    with pytest.raises(RunError, match=r"config: knob 3 -> 4"):
        run("toy", "toy", data_root=toy_bench.data_root, opts=opts, scenes=["alpha"], rates=["low"])
    toml.write_text(toml.read_text().replace("knob = 4", "knob = 3").replace("pad_bytes = 10", "pad_bytes = 11"))
    with pytest.raises(RunError, match=r"rate point: pad_bytes 10 -> 11"):
        run("toy", "toy", data_root=toy_bench.data_root, opts=opts, scenes=["alpha"], rates=["low"])
    toml.write_text(toml.read_text().replace("pad_bytes = 11", "pad_bytes = 10"))
    result = run("toy", "toy", data_root=toy_bench.data_root, opts=opts, scenes=["alpha"], rates=["low"])
    assert [o.status for o in result.outcomes] == ["skipped"] and STATE.train_calls == []

    # --force replaces it.
    run("toy", "toy", data_root=toy_bench.data_root, opts=toy_bench.opts(seed=1, force=True), scenes=["alpha"], rates=["low"])
    assert toy_bench.record("alpha", "low").seed == 1 and STATE.train_calls == [("alpha", "low")]


def test_records_without_a_stored_schedule_compare_the_quick_flag(toy_bench: ToyBench) -> None:
    """Records made before ``schedule`` was stored (None) are compared by their quick flag."""
    run("toy", "toy", data_root=toy_bench.data_root, opts=toy_bench.opts(quick=True), scenes=["alpha"], rates=["low"])
    path = record_path(toy_bench.out, "toy", "alpha", "toy", "low")
    data = json.loads(path.read_text())
    assert data["schedule"] == "quick"
    data["schedule"] = None
    path.write_text(json.dumps(data))
    with pytest.raises(RunError, match=r"a shortened schedule \(this run: protocol\)"):
        run("toy", "toy", data_root=toy_bench.data_root, opts=toy_bench.opts(), scenes=["alpha"], rates=["low"])
    result = run("toy", "toy", data_root=toy_bench.data_root, opts=toy_bench.opts(quick=True), scenes=["alpha"], rates=["low"])
    assert [o.status for o in result.outcomes] == ["skipped"]


def test_a_model_that_draws_only_the_background_is_flagged_and_fails_the_gate(toy_bench: ToyBench,
                                                                               tmp_path: Path) -> None:
    """A collapsed model (every test render the background) keeps its finite PSNR but says so: the
    record's ``env.render_check``, a note, a failed gate and a refused reference."""
    from evalkit.report.check import CheckError, check, write_reference

    spec = toy_bench.specs / "methods" / "toy.toml"
    spec.write_text(spec.read_text() + '[variants.blank]\ngain = 1000.0\n')  # clipped to white
    assert load_scene(toy_bench.data_root / "toyset" / "alpha").background.tolist() == [1.0, 1.0, 1.0]
    run("toy", "toy", scenes=["alpha"], rates=["high"], data_root=toy_bench.data_root, opts=toy_bench.opts())
    good = toy_bench.record("alpha", "high")
    assert not good.draws_nothing and good.env["render_check"]["empty"] is False  # flat grey, not empty
    ref = write_reference(toy_bench.out, tmp_path / "ref.json")

    blank_out = tmp_path / "blank"
    run("toy:blank", "toy", scenes=["alpha"], rates=["high"], data_root=toy_bench.data_root,
        opts=RunOptions(out=blank_out, device="cpu", fps_warmup=1, fps_repeats=1))
    rec = read_record(record_path(blank_out, "toy", "alpha", "toy:blank", "high"))
    assert rec.status == "ok" and rec.metrics["psnr"] is not None and rec.draws_nothing
    assert rec.env["render_check"] == {"flat_colour": [1.0, 1.0, 1.0], "background": [1.0, 1.0, 1.0], "empty": True}
    assert any("draws nothing" in n for n in rec.notes)
    from evalkit.report import build_report
    from evalkit.report.html import SiteOptions
    index = build_report(blank_out, tmp_path / "report", html=SiteOptions(views_frames=0))
    assert "toy:blank high on alpha: draws nothing" in index.read_text()
    page = (tmp_path / "report" / "toy" / "scenes" / "alpha.html").read_text()
    assert '<tr class="empty">' in page and 'class="badge empty"' in page  # the site marks the row
    with pytest.raises(CheckError, match="draws nothing"):
        write_reference(blank_out, tmp_path / "blank_ref.json")
    ref_json = json.loads(ref.read_text())  # the same job key, gated against the good reference
    for r in ref_json["records"]:
        r["method"] = "toy:blank"
    ref.write_text(json.dumps(ref_json))
    row = check(blank_out, ref).rows[0]
    assert row.verdict == "fail" and "background alone" in row.reason


def test_a_speed_option_change_keeps_existing_records(toy_bench: ToyBench, monkeypatch) -> None:
    """A method's ``speed_options`` (same computation, e.g. CUDA graphs) do not make a record stale;
    any other configuration change does."""
    monkeypatch.setattr(ToyMethod, "speed_options", frozenset({"turbo"}))
    run("toy", "toy", scenes=["alpha"], rates=["high"], data_root=toy_bench.data_root, opts=toy_bench.opts())
    spec = toy_bench.specs / "methods" / "toy.toml"
    spec.write_text(spec.read_text().replace("knob = 3\n", "knob = 3\nturbo = true\n"))
    result = run("toy", "toy", scenes=["alpha"], rates=["high"], data_root=toy_bench.data_root, opts=toy_bench.opts())
    assert [o.status for o in result.outcomes] == ["skipped"] and len(STATE.train_calls) == 1
    spec.write_text(spec.read_text().replace("knob = 3\n", "knob = 4\n"))
    with pytest.raises(RunError, match=r"made with other settings:\n.*config: knob 3 -> 4"):
        run("toy", "toy", scenes=["alpha"], rates=["high"], data_root=toy_bench.data_root, opts=toy_bench.opts())
