"""The benchmark runner: jobs (method, dataset, scene, rate point) -> records.

Each job trains on the train split, encodes to a bitstream file, decodes *that file* into a
fresh model (nothing is carried over in memory), renders every test view, measures quality,
FPS and size, and writes one JSON record. Records and bitstreams are written atomically; a job
whose record exists with status "ok" is skipped (``force`` reruns it), so a killed sweep
resumes where it stopped. A failing job records its error and the sweep goes on.

The runner knows no method's internals: it talks to methods through the registry and the
``Method`` / ``Model`` protocol only.
"""
from __future__ import annotations

import gc
import math
import os
import time
import traceback
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import torch

from evalkit.codec.container import Bitstream
from evalkit.data.detect import EXPECTED, is_layout
from evalkit.data.scene import DatasetError, Scene
from evalkit.methods.base import (Budget, ContractError, Method, Model, RatePoint, TrainContext, TrainedModel,
                                 check_contract)
from evalkit.methods.registry import UnknownMethod, get_method
from evalkit.metrics.contention import ContentionWatch
from evalkit.results import (EVAL_SPLITS, Record, bitstream_path, collect_env, json_plain, read_record, record_path,
                             write_record)
from evalkit.specs import DatasetSpec, MethodSpec, SpecError, load_dataset_spec, load_method_spec
from evalkit.train.checkpoint import TrainCheckpoint
from evalkit.metrics.fps import synced_clock


class RunError(Exception):
    """A problem with the request itself (no data, unknown scene...), reported before any job runs."""


def default_data_root() -> Path:
    """``$EVALKIT_DATA_ROOT``, else ``~/evalkit-data``."""
    env = os.environ.get("EVALKIT_DATA_ROOT")
    return Path(env).expanduser() if env else Path.home() / "evalkit-data"


def default_cache_dir() -> Path:
    env = os.environ.get("EVALKIT_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "evalkit"


@dataclass
class Job:
    method: str
    dataset: str
    scene: str
    rate: RatePoint
    scene_dir: Path
    in_spec: bool = True

    @property
    def label(self) -> str:
        return f"{self.method} / {self.dataset} / {self.scene} / {self.rate.name}"


@dataclass
class RunOptions:
    out: Path = Path("results")
    iterations: int | None = None
    quick: bool = False
    resolution_scale: float | None = None  # multiplies the dataset's own scale
    device: str | None = None
    seed: int = 0
    force: bool = False
    fps_warmup: int = 5
    fps_repeats: int = 3
    # torch CPU threads for the sweep (None: torch's default, one per core). Lower it when several
    # jobs share a host, so their CPU phases (entropy coding) do not compete for every core.
    threads: int | None = None
    # Neu3D: train on videos whose decoder reported damage (concealed frames); noted in the record
    allow_corrupt_video: bool = False
    # The views scored: "test" (the protocol) or "val" (tuning runs: records say so, reports leave them out)
    eval_split: str = "test"
    # Minutes between training checkpoints (beside each job's record; a rerun resumes from it,
    # removed when the job ends ok). 0: none. Only methods that support it write them.
    checkpoint_minutes: float = 10.0
    # How the jobs are spread (evalkit.sweep.dispatch.SweepOptions: local workers, SLURM, Ray);
    # None runs them here, one after the other.
    sweep: object | None = None


@dataclass
class JobOutcome:
    job: Job
    status: str  # "ok" | "failed" | "skipped" | "claimed" (another worker holds or ran it)
    record: Record | None = None
    error: str | None = None


@dataclass
class Reporter:
    """Callbacks the CLI fills with rich progress; the defaults stay silent (tests, library use)."""

    job_started: Callable[[Job, int, int], None] = lambda job, i, n: None
    job_finished: Callable[[JobOutcome], None] = lambda outcome: None
    phase: Callable[[str], None] = lambda msg: None
    iteration: Callable[[int, int, dict], None] = lambda it, total, stats: None
    planned: Callable[[int], None] = lambda n: None  # the number of jobs, once planned


def resolve_device(device: str | None) -> torch.device:
    if device:
        dev = torch.device(device)
        if dev.type == "cuda" and not torch.cuda.is_available():
            raise RunError(f"--device {device}: CUDA is not available on this machine")
        return dev
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def ensure_synthetic(spec: DatasetSpec, root: Path) -> None:
    """Generate the built-in synthetic scenes on first use (atomically: a partial scene left by a
    killed run is detected and rebuilt, see ``evalkit.data.synth.ensure_generated``)."""
    from evalkit.data.synth import ensure_generated

    for scene in spec.scenes:
        ensure_generated(spec.format, root / spec.folder / scene)


def _folders(base: Path) -> list[str]:
    return sorted(p.name for p in base.iterdir() if p.is_dir())


def _not_in_spec(scene: str, dataset: str) -> str:
    return f"scene {scene!r} is not in datasets/{dataset}.toml: no paper numbers exist for it"


def scenes_present(base: Path, dspec: DatasetSpec) -> tuple[list[str], list[str]]:
    """The scenes a run without ``--scene`` takes from ``base`` (the dataset's folder), and notes:
    the spec's scenes present, then other folders in the dataset's layout (none for a generated
    dataset), leaving out a second name (link) of a folder already taken."""
    chosen = [s for s in dspec.scenes if (base / s).is_dir()]
    notes: list[str] = []
    if dspec.generated:
        return chosen, notes
    seen = {(base / s).resolve() for s in chosen}
    for s in _folders(base):
        path = base / s
        if s in dspec.scenes or not is_layout(path, dspec.format):
            continue
        if path.resolve() in seen:  # it would train the same folder twice
            notes.append(f"scene folder {path} is the same folder as another scene: left out")
            continue
        seen.add(path.resolve())
        notes.append(_not_in_spec(s, dspec.key))
        chosen.append(s)
    return chosen, notes


def plan_jobs(method: str, dataset: str, data_root: Path | None = None, scenes: list[str] | None = None,
              rates: list[str] | None = None) -> tuple[list[Job], list[str]]:
    """Expand a request into jobs. Returns (jobs, notes). Raises RunError with guidance when data is missing."""
    get_method(method)  # first: an unknown name is "unknown method ...; available: ...", not a spec path
    dspec = load_dataset_spec(dataset)
    mspec = load_method_spec(method)
    notes: list[str] = []
    if dspec.generated:
        root = data_root or default_cache_dir() / "data"
        ensure_synthetic(dspec, root)
    else:
        root = data_root or default_data_root()
    base = root / dspec.folder
    if not base.is_dir():
        raise RunError(f"no {dspec.name} data at {base}. Put one folder per scene there "
                       f"(e.g. {base / (dspec.scenes[0] if dspec.scenes else 'SCENE')}), or pass --data-root. "
                       f"Download: {dspec.download}")
    if scenes:
        chosen = []
        for s in scenes:
            if not (base / s).is_dir():
                raise RunError(f"scene folder {base / s} not found; present: {', '.join(_folders(base)) or 'none'}")
            if s not in dspec.scenes:
                notes.append(_not_in_spec(s, dataset))
            chosen.append(s)
    else:
        chosen, found = scenes_present(base, dspec)
        notes += found
        if not chosen:
            present = _folders(base)
            raise RunError(f"none of the {dspec.name} scenes of the spec ({', '.join(dspec.scenes)}) is in {base}"
                           + (f"; present: {', '.join(present)}, none in the {dspec.format} layout "
                              f"({EXPECTED.get(dspec.format, dspec.format)}; name a scene with --scene to "
                              "see what its folder lacks)" if present else "")
                           + f". Download: {dspec.download}")
    jobs = [Job(method, dataset, s, r, base / s, in_spec=s in dspec.scenes)
            for s in chosen for r in mspec.rate_points(dataset, rates)]
    return jobs, notes


@contextmanager
def _job_log(path: Path) -> Iterator[Callable[[str], None]]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as fh:
        def log(msg: str) -> None:
            fh.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {msg}\n")
            fh.flush()
        yield log


def schedule_label(opts: RunOptions) -> str:
    """How the training schedule is chosen, as records store it (``Record.schedule``)."""
    if opts.iterations is not None:
        return ("--quick " if opts.quick else "") + f"--iterations {opts.iterations}"
    return "quick" if opts.quick else "protocol"


def settings_changed(old: Record, job: Job, opts: RunOptions) -> list[str]:
    """What differs between an existing record and the job as this sweep would run it: seed,
    schedule, image scale, rate-point parameters, the configuration the method would train with
    (``Method.effective_config``: inherited keys, variant, schedule). Empty when it matches."""
    dspec, mspec = load_dataset_spec(job.dataset), load_method_spec(job.method)
    out = []
    if old.seed != opts.seed:
        out.append(f"seed {old.seed} (this run: {opts.seed})")
    if old.eval_split != opts.eval_split:
        out.append(f"evaluated on the {old.eval_split} views (this run: {opts.eval_split})")
    if old.schedule is not None and old.schedule != schedule_label(opts):
        out.append(f"schedule {old.schedule} (this run: {schedule_label(opts)})")
    elif old.schedule is None and old.quick != (opts.quick or opts.iterations is not None):
        out.append(f"{'a shortened' if old.quick else 'the protocol'} schedule (this run: {schedule_label(opts)})")
    scale = scene_scale(dspec, opts) or 1.0
    if not math.isclose(old.resolution_scale, scale, rel_tol=1e-9):
        out.append(f"image scale {old.resolution_scale:g} (this run: {scale:g})")
    method = get_method(job.method)
    if old.config_effective:
        ctx = _train_context(job, opts, mspec, torch.device("cpu"))
        config = method.effective_config(job.rate, ctx)
    else:  # a record made before the effective configuration was stored holds the spec's
        config = mspec.config(job.dataset, job.scene)
    for what, have, want in (("rate point", old.rate_params, dict(job.rate.params)), ("config", old.config, config)):
        have, want = json_plain(have), json_plain(want)
        keys = sorted(k for k in set(have) | set(want)
                      if have.get(k) != want.get(k) and k not in method.speed_options)
        if keys:
            shown = ", ".join(f"{k} {have.get(k, '(unset)')!r:.40} -> {want.get(k, '(unset)')!r:.40}" for k in keys[:4])
            out.append(f"{what}: {shown}" + (f" (+{len(keys) - 4} more)" if len(keys) > 4 else ""))
    return out


def refused_configs(jobs: list[Job], opts: RunOptions) -> list[str]:
    """Each job whose configuration its method refuses (``Method.effective_config`` raising
    ``ValueError``, ``TypeError``, ``KeyError`` or ``SpecError``: an unknown option, a value of the
    wrong type, a missing base spec), checked at planning so a wrong spec stops the sweep before
    hours of other jobs."""
    out, specs = [], {}
    for job in jobs:
        if job.method not in specs:  # read once per method, not per job
            specs[job.method] = (load_method_spec(job.method), get_method(job.method))
        mspec, method = specs[job.method]
        ctx = _train_context(job, opts, mspec, torch.device("cpu"))
        try:
            method.effective_config(job.rate, ctx)
        except (ValueError, TypeError, KeyError, SpecError) as exc:  # a bad option, type or base spec
            out.append(f"{job.label}: {exc}")
    return out


def _existing_ok(job: Job, opts: RunOptions) -> Record | None:
    """The job's ``ok`` record already in ``opts.out``, if any (an unreadable one is redone)."""
    path = record_path(opts.out, job.dataset, job.scene, job.method, job.rate.name)
    try:
        old = read_record(path) if path.is_file() else None
    except Exception:
        return None
    return old if old is not None and old.status == "ok" else None


def scene_scale(dspec: DatasetSpec, opts: RunOptions) -> float | None:
    """Image scale for the loader: the dataset's protocol scale times --resolution-scale and the
    quick schedule's scale. None leaves the format's default to the loader."""
    extra = (opts.resolution_scale or 1.0) * (dspec.quick_resolution_scale if opts.quick else 1.0)
    if dspec.resolution_scale is None and extra == 1.0:
        return None
    return (dspec.resolution_scale or 1.0) * extra


def protocol_scene(scene_dir: Path, dspec: DatasetSpec, resolution_scale: float | None, eval_split: str = "test",
                   *, allow_corrupt_video: bool = False, frames: bool = True) -> Scene:
    """A scene as the protocol loads it (the spec's format, background and split), scored on
    ``eval_split``; ``frames=False``: the layout only (no video is decoded). The runner and
    ``evalkit views`` load through here, so a record's views are the ones it scored."""
    from evalkit.data.detect import load_scene

    neu3d = dspec.format == "neu3d"
    scene = load_scene(scene_dir, format=dspec.format, resolution_scale=resolution_scale,
                       background=dspec.background, cache_dir=default_cache_dir() / "frames",
                       **({"split": dspec.split} if dspec.split else {}),
                       **({"allow_corrupt_video": True} if allow_corrupt_video and neu3d else {}),
                       **({"prefetch": False} if neu3d and not frames else {}))
    return scene.evaluated_on(eval_split)


def _load_scene(job: Job, dspec: DatasetSpec, opts: RunOptions, *, frames: bool = True) -> Scene:
    return protocol_scene(job.scene_dir, dspec, scene_scale(dspec, opts), opts.eval_split,
                          allow_corrupt_video=opts.allow_corrupt_video, frames=frames)


def unscorable_scenes(jobs: list[Job], opts: RunOptions) -> list[str]:
    """With ``--eval-split`` other than test: each scene without those views, found at planning
    (the layout is read, no frame decoded) rather than by every job in turn."""
    if opts.eval_split == "test":
        return []
    out, seen = [], set()
    for job in jobs:
        if job.scene_dir in seen:
            continue
        seen.add(job.scene_dir)
        try:
            _load_scene(job, load_dataset_spec(job.dataset), opts, frames=False)
        except DatasetError as exc:
            out.append(str(exc))
    return out


def _budget(mspec: MethodSpec, opts: RunOptions) -> Budget:
    quick_iters = int(mspec.quick["iterations"]) if opts.quick and "iterations" in mspec.quick else None
    return Budget(iterations=opts.iterations or quick_iters, resolution_scale=opts.resolution_scale or 1.0,
                  quick=opts.quick, seed=opts.seed)


def _train_context(job: Job, opts: RunOptions, mspec: MethodSpec, device: torch.device, **hooks) -> TrainContext:
    """The job's ``TrainContext``; ``hooks``: progress, log, cache."""
    return TrainContext(device=device, budget=_budget(mspec, opts), config=mspec.config(job.dataset, job.scene),
                        dataset=job.dataset, scene_name=job.scene, **hooks)


def _new_record(job: Job, opts: RunOptions) -> Record:
    record = Record(method=job.method, dataset=job.dataset, scene=job.scene, rate=job.rate.name,
                    rate_params=dict(job.rate.params), seed=opts.seed, env=collect_env(),
                    schedule=schedule_label(opts),
                    # Anything but the protocol schedule is flagged: tables mark it, the gate
                    # never compares it with a full run.
                    quick=opts.quick or opts.iterations is not None, eval_split=opts.eval_split)
    if opts.eval_split != "test":
        record.notes.append(f"evaluated on the {opts.eval_split} views, not the test views: a tuning run, "
                            "left out of reports and gates")
    if not job.in_spec:
        record.notes.append(f"scene {job.scene!r} is not in datasets/{job.dataset}.toml: no paper numbers")
    if opts.quick:
        record.notes.append("quick schedule: fewer iterations and lower resolution than the protocol")
    if opts.iterations is not None:
        record.notes.append(f"--iterations {opts.iterations}: not the protocol's training schedule")
    return record


@dataclass
class _Clock:
    """Timing and contention bookkeeping of one job, in one place: every phase is announced to the
    reporter, timed (synchronising the GPU at both ends) into ``timings`` and sampled for
    contention when it ends (training: all along)."""

    device: torch.device
    reporter: Reporter
    watch: ContentionWatch
    timings: dict[str, float] = field(default_factory=dict)

    @contextmanager
    def phase(self, label: str, timing: str, sample: str | None = None, *, during: str | None = None) -> Iterator[None]:
        self.reporter.phase(label)
        t0 = synced_clock(self.device)
        with self.watch.during(during) if during else nullcontext():
            yield
        self.timings[timing] = synced_clock(self.device) - t0
        if sample:
            self.watch.sample(sample)

    def close(self, record: Record, log: Callable[[str], None]) -> None:
        """The job's timings and contention summary (and notes) into its record."""
        record.timings = dict(self.timings)
        record.env["contention"] = self.watch.summary()
        for note in self.watch.notes():
            record.notes.append(note)
            log(f"note: {note}")


@dataclass
class _JobRun:
    """One job's pipeline: load, train, encode, write, decode, evaluate, record. Each step is a
    method; ``run_job`` calls them in that order."""

    job: Job
    opts: RunOptions
    method: Method
    mspec: MethodSpec
    dspec: DatasetSpec
    device: torch.device
    record: Record
    clock: _Clock
    log: Callable[[str], None]
    bits_path: Path
    checkpoint: TrainCheckpoint

    def load(self, scene_cache: dict) -> tuple[Scene, dict]:
        """The scene (one in memory at a time) and what its rate points share."""
        key = (self.job.dataset, self.job.scene)
        if key not in scene_cache:
            self.clock.reporter.phase(f"loading {self.job.scene_dir}")
            scene_cache.clear()
            scene_cache[key] = {"scene": _load_scene(self.job, self.dspec, self.opts), "shared": {}}
        self.record.notes += scene_cache[key]["scene"].extra.get("notes", [])  # e.g. a damaged video used on request
        self.record.resolution_scale = scene_scale(self.dspec, self.opts) or 1.0
        return scene_cache[key]["scene"], scene_cache[key]["shared"]

    def train(self, scene: Scene, shared: dict) -> TrainedModel:
        if self.opts.force:  # a forced job starts over
            self.checkpoint.discard()
        ctx = _train_context(self.job, self.opts, self.mspec, self.device, progress=self.clock.reporter.iteration,
                             log=self.log, cache=shared, checkpoint=self.checkpoint)
        predicted = self.method.effective_config(self.job.rate, ctx)
        # one-time setup (e.g. compiling GPU kernels on first use) is not training: timed apart
        with self.clock.phase("preparing training", "training_setup_s"):
            self.method.prepare_training(self.job.rate, ctx)
        self.log(f"training setup: {self.clock.timings['training_setup_s']:.1f} s (not part of the training time)")
        with self.clock.phase("training", "train_s", "trained", during="training"):
            trained = self.method.train(scene, self.job.rate, ctx)
        check_contract(type(trained), TrainedModel, self.job.method)
        config = trained.effective_config()
        if config is not None and json_plain(config) != json_plain(predicted):
            diff = sorted(k for k in set(config) | set(predicted) if config.get(k) != predicted.get(k))
            raise RuntimeError(f"method {self.job.method!r} trained with another configuration than its "
                               f"effective_config predicted (keys {diff[:6]}): a resumed sweep could not compare it")
        self.record.config, self.record.config_effective = (predicted if config is None else config), True
        self.record.iterations = int(trained.iterations or ctx.budget.iterations or 0)
        self.record.reused = trained.reused
        if self.checkpoint.rejected:
            self.record.notes.append(self.checkpoint.rejected)
        if trained.resumed:
            earlier = float(trained.resumed.get("earlier_train_s", 0.0))
            self.clock.timings["train_resumed_part_s"] = self.clock.timings["train_s"]
            self.clock.timings["train_s"] += earlier
            self.record.notes.append(
                f"training resumed from a checkpoint at step {trained.resumed.get('from_step')}: train_s adds "
                f"{earlier:.1f} s of earlier runs (other processes, contention not watched); not a timing of "
                f"one uninterrupted run")
        self.log(f"trained in {self.clock.timings['train_s']:.1f} s, {trained.num_primitives()} primitives")
        return trained

    def encode_and_write(self, trained: TrainedModel) -> int:
        """Encode (the coder's one-time setup timed apart) and write the bitstream; its bytes."""
        with self.clock.phase("preparing the coder", "coding_setup_s"):
            self.method.prepare_coding()
        self.log(f"coder setup: {self.clock.timings['coding_setup_s']:.1f} s (not part of the encode time)")
        with self.clock.phase("encoding", "encode_s", "encoded"):
            bits = trained.encode()
        return bits.write(self.bits_path)

    def coding_steps(self, trained: TrainedModel, scene: Scene, gts: list[torch.Tensor]) -> None:
        """Quality of the trained model before each lossy step (``quality_stages``) into
        ``record.stage_metrics``. After encoding, so ``encode_s`` is the encoder's time alone. A
        failure here is a diagnostic lost, not a failed job: it is logged and noted."""
        try:
            stages = trained.quality_stages()
            if not stages:
                return
            with self.clock.phase("evaluating the coding steps", "stages_s"):
                self.record.stage_metrics = _evaluate_stages(stages, scene, gts, self.device)
        except Exception as exc:
            self.record.stage_metrics = {}
            self.clock.timings.pop("stages_s", None)
            self.record.notes.append(f"quality by coding step not measured: {type(exc).__name__}: {exc}")
            self.log("coding-step evaluation FAILED (the job goes on)\n" + traceback.format_exc())
            _free(self.device)
            return
        self.log("test quality by coding step: " + "; ".join(
            f"{k}: PSNR {v['psnr']} dB, SSIM {v['ssim']}" for k, v in self.record.stage_metrics.items()))

    def decode(self, nbytes: int) -> Model:
        """A fresh model from the file on disk alone; checks the size accounting."""
        with self.clock.phase("decoding", "decode_s", "decoded"):
            on_disk = Bitstream.read(self.bits_path)
            decoded = self.method.decode(on_disk, self.device, source=str(self.bits_path))
        check_contract(type(decoded), Model, self.job.method)
        sizes = on_disk.sizes()
        if sizes["total"] != nbytes or self.bits_path.stat().st_size != nbytes:
            raise RuntimeError(f"{self.bits_path}: size accounting mismatch ({sizes['total']} vs {nbytes} bytes)")
        self.record.size = {"total_bytes": nbytes, "components": {k: v for k, v in sizes.items() if k != "total"}}
        self.record.bitstream = str(self.bits_path.relative_to(self.opts.out))
        return decoded

    def evaluate(self, decoded: Model, scene: Scene, gts: list[torch.Tensor]) -> None:
        before = len(self.record.notes)
        with self.clock.phase("evaluating", "eval_s", "evaluated"):
            _evaluate(decoded, scene, gts, self.record, self.device, self.opts)
        for note in self.record.notes[before:]:  # e.g. a model that draws nothing
            self.log(note)
        self.record.num_primitives = int(decoded.num_primitives())


def still_valid(existing: Record | None, opts: RunOptions) -> bool:
    """An ok record of this job (made with these settings) whose bitstream, if it has one, is still
    there: the job is skipped."""
    return existing is not None and (existing.bitstream is None or (opts.out / existing.bitstream).is_file())


def run_job(job: Job, opts: RunOptions, reporter: Reporter, scene_cache: dict,
            existing: Record | None = None) -> JobOutcome:
    """Run one job, or skip it when ``existing`` (its ok record, made with these settings: ``run``
    checks) still has its bitstream. Self-contained: everything it needs is in its arguments."""
    if still_valid(existing, opts):
        return JobOutcome(job, "skipped", existing)
    rec_path = record_path(opts.out, job.dataset, job.scene, job.method, job.rate.name)
    record = _new_record(job, opts)
    device = resolve_device(opts.device)
    clock = _Clock(device, reporter, ContentionWatch(device))
    clock.watch.sample("start")
    checkpoint = TrainCheckpoint(rec_path.with_suffix(".ckpt"), opts.checkpoint_minutes * 60.0)
    with _job_log(rec_path.with_suffix(".log")) as log:
        log(f"job {job.label} on {device}")
        try:
            run = _JobRun(job, opts, get_method(job.method), load_method_spec(job.method),
                          load_dataset_spec(job.dataset), device, record, clock, log,
                          bitstream_path(opts.out, job.dataset, job.scene, job.method, job.rate.name), checkpoint)
            scene, shared = run.load(scene_cache)
            trained = run.train(scene, shared)
            nbytes = run.encode_and_write(trained)
            gts = _ground_truth(scene)  # loaded once for the coding steps and the evaluation
            run.coding_steps(trained, scene, gts)
            del trained
            _free(device)
            decoded = run.decode(nbytes)
            run.evaluate(decoded, scene, gts)
            del decoded
            record.status = "ok"
            checkpoint.discard()
            log(f"PSNR {record.metrics.get('psnr')} dB, {nbytes} bytes, FPS {record.fps['fps']:.1f} ({record.fps['label']})")
        except Exception as exc:  # the sweep goes on; the record says what failed
            record.status, record.error = "failed", f"{type(exc).__name__}: {exc}"
            log("FAILED\n" + traceback.format_exc())
        finally:
            _free(device)
        clock.close(record, log)
    return JobOutcome(job, *_write(record, rec_path))


def _write(record: Record, path: Path) -> tuple[str, Record, str | None]:
    """Write the record; one JSON cannot store is replaced by a failed record saying why."""
    try:
        write_record(record, path)
    except Exception as exc:
        record = Record(method=record.method, dataset=record.dataset, scene=record.scene, rate=record.rate,
                        status="failed", error=f"record could not be written: {type(exc).__name__}: {exc}",
                        env=record.env)
        write_record(record, path)
    return record.status, record, record.error



def _free(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


_EVAL_NAME = {"dssim": "d_ssim"}  # record key -> evaluate_images key
_RECORD_NAME = {v: k for k, v in _EVAL_NAME.items()}


def _ground_truth(scene: Scene) -> list[torch.Tensor]:
    if not scene.test:
        raise RuntimeError(f"{scene.path}: the scene has no test frames")
    return [torch.from_numpy(f.load()) for f in scene.test]


@torch.no_grad()
def _renders(render, scene: Scene) -> list[torch.Tensor]:
    return [render(f.camera, f.time).float().cpu() for f in scene.test]


def _evaluate_stages(stages, scene: Scene, gts: list[torch.Tensor],
                     device: torch.device) -> dict[str, dict[str, float | None]]:
    """PSNR / SSIM of each intermediate model (``Model.quality_stages``) on the test views."""
    from evalkit.metrics.evaluate import evaluate_images

    out: dict[str, dict[str, float | None]] = {}
    for label, render in stages:
        if str(label) in out:
            raise ValueError(f"quality_stages: duplicate stage label {label!r}")
        ev = evaluate_images(_renders(render, scene), gts, [f.image_name for f in scene.test], device=device,
                             lpips_nets=())
        out[str(label)] = {k: (v if v is not None and math.isfinite(v) else None)  # JSON has no inf
                           for k, v in ((k, ev.means[k]) for k in ("psnr", "ssim"))}
    return out


def _evaluate(model, scene: Scene, gts: list[torch.Tensor], record: Record, device: torch.device,
              opts: RunOptions) -> None:
    from evalkit.metrics.evaluate import evaluate_images
    from evalkit.metrics.flat_render import render_check, render_check_note
    from evalkit.metrics.fps import measure_fps

    frames = scene.test
    preds = _renders(model.render, scene)
    ev = evaluate_images(preds, gts, [f.image_name for f in frames], device=device)
    if (flat := render_check(preds, scene.background)) is not None:  # a collapsed model scores like a weak one
        record.env["render_check"] = flat
        record.notes.append(render_check_note(flat))
    missing = {_RECORD_NAME.get(k, k): v for k, v in ev.missing.items()}

    def finite(name: str, v):  # JSON has no inf: PSNR of a pixel-exact render is recorded as missing
        if v is not None and not math.isfinite(v):
            missing.setdefault(name, "infinite (render equals ground truth exactly)")
            return None
        return v

    record.metrics = {k: finite(k, ev.means.get(_EVAL_NAME.get(k, k))) for k in record.metrics}
    record.metrics_missing = missing
    if ev.lpips_weights:  # which weight files the LPIPS numbers come from, with their SHA-256
        record.env["lpips_weights"] = ev.lpips_weights
    record.per_frame = [{"name": f.image_name, "time": f.time,
                         **{_RECORD_NAME.get(k, k): finite(_RECORD_NAME.get(k, k), v)
                            for k, v in ev.per_frame[f.image_name].items()}} for f in frames]
    w, h = frames[0].camera.width, frames[0].camera.height
    record.resolution = [w, h]
    fps = measure_fps(lambda i: model.render(frames[i].camera, frames[i].time), len(frames),
                      warmup=opts.fps_warmup, repeats=opts.fps_repeats, device=device, resolution=(w, h))
    record.fps = {"fps": fps.fps, "ms_per_frame": fps.ms_per_frame, "device": fps.device_kind,
                  "gpu_name": fps.device_name if fps.device_kind == "cuda" else None,
                  "resolution": [w, h], "frames": fps.frames, "label": fps.label}


@dataclass
class SweepResult:
    outcomes: list[JobOutcome] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def failed(self) -> list[JobOutcome]:
        return [o for o in self.outcomes if o.status == "failed"]


def plan(method: str | list[str], dataset: str, *, scenes: list[str] | None = None, rates: list[str] | None = None,
         data_root: Path | None = None, opts: RunOptions | None = None
         ) -> tuple[list[Job], list[str], dict[str, Record]]:
    """The jobs of a sweep, its notes and the existing ok records it would skip, after every check
    made before a job runs (options, specs, refused configurations, unscorable scenes, existing
    records made with other settings); raises ``RunError``. ``run`` starts with it; a caller that
    runs several sweeps (one per seed) checks them all first."""
    opts = opts or RunOptions()
    if opts.threads is not None and opts.threads < 1:
        raise RunError(f"--threads {opts.threads}: needs a positive number of CPU threads")
    if opts.eval_split not in EVAL_SPLITS:
        raise RunError(f"--eval-split {opts.eval_split!r}: one of {', '.join(EVAL_SPLITS)}")
    jobs, notes = [], []
    try:
        for m in [method] if isinstance(method, str) else list(dict.fromkeys(method)):
            j, n = plan_jobs(m, dataset, data_root, scenes, rates)
            jobs += j
            notes += [x for x in n if x not in notes]
    except (SpecError, UnknownMethod, ContractError) as exc:  # a spec without a registry entry, or the reverse
        raise RunError(str(exc)) from None
    config_errors = refused_configs(jobs, opts) + unscorable_scenes(jobs, opts)
    if config_errors:
        raise RunError(f"refused before any job ran ({len(config_errors)} problem(s)):\n  " + "\n  ".join(config_errors))
    # Existing ok records, read once: skipped when made with this sweep's settings; otherwise
    # skipping would report other settings as this run and rerunning would lose them.
    existing = {} if opts.force else {job.label: old for job in jobs if (old := _existing_ok(job, opts))}
    stale = [f"{record_path(opts.out, j.dataset, j.scene, j.method, j.rate.name)}: " + "; ".join(diff)
             for j in jobs if j.label in existing and (diff := settings_changed(existing[j.label], j, opts))]
    if stale:
        raise RunError(f"{len(stale)} existing record(s) in {opts.out} were made with other settings:\n  "
                       + "\n  ".join(stale) + "\nPass --force to replace them, or --out another folder.")
    return jobs, notes, existing


def run(method: str | list[str], dataset: str, *, scenes: list[str] | None = None, rates: list[str] | None = None,
        data_root: Path | None = None, opts: RunOptions | None = None,
        reporter: Reporter | None = None) -> SweepResult:
    """Run every job of one or more methods (e.g. a method and its ablation variants). Jobs run
    scene by scene, so a scene is loaded once and shared stages (4DGS-CC's coarse stage) are
    trained once per scene."""
    opts = opts or RunOptions()
    reporter = reporter or Reporter()
    jobs, notes, existing = plan(method, dataset, scenes=scenes, rates=rates, data_root=data_root, opts=opts)
    order = {scene: i for i, scene in enumerate(dict.fromkeys(job.scene for job in jobs))}
    jobs.sort(key=lambda job: order[job.scene])  # stable: methods and rates keep their order
    result = SweepResult(notes=notes)
    reporter.planned(len(jobs))
    if opts.sweep is not None and getattr(opts.sweep, "executor", "inline") != "inline":
        from evalkit.sweep.dispatch import run_sweep

        result.outcomes = run_sweep(jobs, opts, existing, reporter)
        return result
    from evalkit.sweep.worker import run_claimed

    scene_cache: dict = {}
    default_threads = torch.get_num_threads()
    if opts.threads is not None:
        torch.set_num_threads(opts.threads)
    try:
        for i, job in enumerate(jobs):
            reporter.job_started(job, i, len(jobs))
            outcome = run_claimed(job, opts, reporter, scene_cache, existing.get(job.label))  # run_job, claimed
            result.outcomes.append(outcome)
            reporter.job_finished(outcome)
    finally:  # library callers keep their own setting
        torch.set_num_threads(default_threads)
    return result
