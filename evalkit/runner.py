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
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import torch

from evalkit.codec.container import Bitstream
from evalkit.data.scene import Scene
from evalkit.methods.base import Budget, RatePoint, TrainContext
from evalkit.methods.registry import UnknownMethod, get_method
from evalkit.metrics.contention import ContentionWatch
from evalkit.results import (Record, bitstream_path, collect_env, json_plain, read_record, record_path,
                             write_record)
from evalkit.specs import DatasetSpec, SpecError, load_dataset_spec, load_method_spec


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
                present = sorted(p.name for p in base.iterdir() if p.is_dir())
                raise RunError(f"scene folder {base / s} not found; present: {', '.join(present) or 'none'}")
            if s not in dspec.scenes:
                notes.append(f"scene {s!r} is not in datasets/{dataset}.toml: no paper numbers exist for it")
            chosen.append(s)
    else:
        chosen = [s for s in dspec.scenes if (base / s).is_dir()]
        if not chosen:
            present = sorted(p.name for p in base.iterdir() if p.is_dir())
            raise RunError(f"none of the {dspec.name} scenes of the spec ({', '.join(dspec.scenes)}) is in {base}"
                           + (f"; present: {', '.join(present)} (name them with --scene)" if present else "")
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
    schedule, image scale, rate-point parameters, method configuration. Empty when it matches."""
    dspec, mspec = load_dataset_spec(job.dataset), load_method_spec(job.method)
    out = []
    if old.seed != opts.seed:
        out.append(f"seed {old.seed} (this run: {opts.seed})")
    if old.schedule is not None and old.schedule != schedule_label(opts):
        out.append(f"schedule {old.schedule} (this run: {schedule_label(opts)})")
    elif old.schedule is None and old.quick != (opts.quick or opts.iterations is not None):
        out.append(f"{'a shortened' if old.quick else 'the protocol'} schedule (this run: {schedule_label(opts)})")
    scale = scene_scale(dspec, opts) or 1.0
    if not math.isclose(old.resolution_scale, scale, rel_tol=1e-9):
        out.append(f"image scale {old.resolution_scale:g} (this run: {scale:g})")
    for what, have, want in (("rate point", old.rate_params, dict(job.rate.params)),
                             ("config", old.config, mspec.config(job.dataset, job.scene))):
        have, want = json_plain(have), json_plain(want)
        keys = sorted(k for k in set(have) | set(want) if have.get(k) != want.get(k))
        if keys:
            shown = ", ".join(f"{k} {have.get(k, '(unset)')!r:.40} -> {want.get(k, '(unset)')!r:.40}" for k in keys[:4])
            out.append(f"{what}: {shown}" + (f" (+{len(keys) - 4} more)" if len(keys) > 4 else ""))
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


def _load_scene(job: Job, dspec: DatasetSpec, opts: RunOptions) -> Scene:
    from evalkit.data.detect import load_scene

    return load_scene(job.scene_dir, format=dspec.format, resolution_scale=scene_scale(dspec, opts),
                      background=dspec.background, cache_dir=default_cache_dir() / "frames",
                      **({"split": dspec.split} if dspec.split else {}),
                      **({"allow_corrupt_video": True} if opts.allow_corrupt_video and dspec.format == "neu3d" else {}))


def run_job(job: Job, opts: RunOptions, reporter: Reporter, scene_cache: dict,
            existing: Record | None = None) -> JobOutcome:
    """Run one job, or skip it when ``existing`` (its ok record, made with these settings: ``run``
    checks) still has its bitstream."""
    rec_path = record_path(opts.out, job.dataset, job.scene, job.method, job.rate.name)
    if existing is not None and (existing.bitstream is None or (opts.out / existing.bitstream).is_file()):
        return JobOutcome(job, "skipped", existing)
    bits_path = bitstream_path(opts.out, job.dataset, job.scene, job.method, job.rate.name)
    dspec = load_dataset_spec(job.dataset)
    mspec = load_method_spec(job.method)
    method = get_method(job.method)
    device = resolve_device(opts.device)
    config = mspec.config(job.dataset, job.scene)
    iterations = opts.iterations or (int(mspec.quick["iterations"]) if opts.quick and "iterations" in mspec.quick else None)
    budget = Budget(iterations=iterations, resolution_scale=opts.resolution_scale or 1.0, quick=opts.quick, seed=opts.seed)
    record = Record(method=job.method, dataset=job.dataset, scene=job.scene, rate=job.rate.name,
                    rate_params=dict(job.rate.params), config=config, seed=opts.seed, env=collect_env(),
                    schedule=schedule_label(opts),
                    # Anything but the protocol schedule is flagged: tables mark it, the gate
                    # never compares it with a full run.
                    quick=opts.quick or opts.iterations is not None)
    if not job.in_spec:
        record.notes.append(f"scene {job.scene!r} is not in datasets/{job.dataset}.toml: no paper numbers")
    if opts.quick:
        record.notes.append("quick schedule: fewer iterations and lower resolution than the protocol")
    if opts.iterations is not None:
        record.notes.append(f"--iterations {opts.iterations}: not the protocol's training schedule")

    watch = ContentionWatch(device)
    watch.sample("start")
    with _job_log(rec_path.with_suffix(".log")) as log:
        log(f"job {job.label} on {device}")
        try:
            key = (job.dataset, job.scene)
            if key not in scene_cache:
                reporter.phase(f"loading {job.scene_dir}")
                scene_cache.clear()  # one scene in memory at a time
                scene_cache[key] = {"scene": _load_scene(job, dspec, opts), "shared": {}}
            scene: Scene = scene_cache[key]["scene"]
            record.notes += scene.extra.get("notes", [])  # e.g. a damaged video used on request
            record.resolution_scale = scene_scale(dspec, opts) or 1.0
            ctx = TrainContext(device=device, budget=budget, config=config, progress=reporter.iteration,
                               log=log, cache=scene_cache[key]["shared"], dataset=job.dataset,
                               scene_name=job.scene)

            train_setup_s = _one_time_setup(getattr(method, "prepare_training", None), (job.rate, ctx),
                                            reporter, log, "preparing training", "training ready", "training")
            reporter.phase("training")
            t0 = time.perf_counter()
            with watch.during("training"):
                trained = method.train(scene, job.rate, ctx)
            train_s = time.perf_counter() - t0
            record.iterations = int(getattr(trained, "iterations", 0) or (iterations or 0))
            record.reused = getattr(trained, "reused", None)
            log(f"trained in {train_s:.1f} s, {trained.num_primitives()} primitives")
            watch.sample("trained")
            setup_s = _one_time_setup(getattr(method, "prepare_coding", None), (), reporter, log,
                                      "preparing the coder", "coder ready", "encode")
            reporter.phase("encoding")
            t0 = _sync_time(device)
            bits = trained.encode()
            encode_s = _sync_time(device) - t0
            nbytes = bits.write(bits_path)
            del bits
            watch.sample("encoded")
            gts = _ground_truth(scene)  # loaded once for the coding steps and the evaluation
            stages_s = _stage_metrics(trained, scene, gts, record, device, reporter, log)
            del trained
            _free(device)

            reporter.phase("decoding")
            t0 = _sync_time(device)
            on_disk = Bitstream.read(bits_path)
            decoded = method.decode(on_disk, device, source=str(bits_path))
            decode_s = _sync_time(device) - t0
            watch.sample("decoded")
            sizes = on_disk.sizes()
            if sizes["total"] != nbytes or bits_path.stat().st_size != nbytes:
                raise RuntimeError(f"{bits_path}: size accounting mismatch ({sizes['total']} vs {nbytes} bytes)")

            reporter.phase("evaluating")
            t0 = time.perf_counter()
            _evaluate(decoded, scene, gts, record, device, opts)
            eval_s = time.perf_counter() - t0
            watch.sample("evaluated")
            record.size = {"total_bytes": nbytes, "components": {k: v for k, v in sizes.items() if k != "total"}}
            record.bitstream = str(bits_path.relative_to(opts.out))
            record.num_primitives = int(decoded.num_primitives())
            record.timings = {"train_s": train_s, "encode_s": encode_s, "decode_s": decode_s, "eval_s": eval_s,
                              **({"stages_s": stages_s} if stages_s is not None else {}),
                              **({"coding_setup_s": setup_s} if setup_s is not None else {}),
                              **({"training_setup_s": train_setup_s} if train_setup_s is not None else {})}
            record.status = "ok"
            log(f"PSNR {record.metrics.get('psnr')} dB, {nbytes} bytes, FPS {record.fps['fps']:.1f} ({record.fps['label']})")
            del decoded
        except Exception as exc:  # the sweep goes on; the record says what failed
            record.status = "failed"
            record.error = f"{type(exc).__name__}: {exc}"
            log("FAILED\n" + traceback.format_exc())
        finally:
            _free(device)
        record.env["contention"] = watch.summary()
        for note in watch.notes():
            record.notes.append(note)
            log(f"note: {note}")
    try:
        write_record(record, rec_path)
    except Exception as exc:  # e.g. a value JSON cannot store: record the failure, keep the sweep going
        record = Record(method=job.method, dataset=job.dataset, scene=job.scene, rate=job.rate.name,
                        status="failed", error=f"record could not be written: {type(exc).__name__}: {exc}",
                        env=record.env)
        write_record(record, rec_path)
    return JobOutcome(job, record.status, record, record.error)


def _one_time_setup(hook, args: tuple, reporter, log, phase: str, ready: str, timed: str) -> float | None:
    """Run a method's optional one-time setup ``hook(*args)`` (``prepare_training``: e.g. compiling
    GPU kernels; ``prepare_coding``: e.g. building the arithmetic coder) outside the timer of the
    work it prepares: a compiler running on first use is neither training nor encoding (it once put
    37 s into a 2 s encode). Returns its seconds, or None when the method has no such hook."""
    if hook is None:
        return None
    reporter.phase(phase)
    t0 = time.perf_counter()
    hook(*args)
    setup_s = time.perf_counter() - t0
    log(f"{ready} in {setup_s:.1f} s (one-time setup, not part of the {timed} time)")
    return setup_s


def _sync_time(device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()


def _free(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


_EVAL_NAME = {"dssim": "d_ssim"}  # record key -> evaluate_images key
_RECORD_NAME = {v: k for k, v in _EVAL_NAME.items()}


def _stage_metrics(trained, scene: Scene, gts: list[torch.Tensor], record: Record, device: torch.device,
                   reporter, log) -> float | None:
    """Evaluate ``trained.quality_stages()`` (if any) into ``record.stage_metrics``; returns the
    seconds it took. Runs after encoding (``encode_s`` stays the encoder's time alone). A failure
    here is a diagnostic lost, not a failed job: it is logged and noted."""
    stages = getattr(trained, "quality_stages", None)
    if not callable(stages):
        return None
    reporter.phase("evaluating the coding steps")
    t0 = time.perf_counter()
    try:
        record.stage_metrics = _evaluate_stages(stages(), scene, gts, device)
    except Exception as exc:
        record.stage_metrics = {}
        record.notes.append(f"quality by coding step not measured: {type(exc).__name__}: {exc}")
        log("coding-step evaluation FAILED (the job goes on)\n" + traceback.format_exc())
        _free(device)
        return None
    log("test quality by coding step: " + "; ".join(
        f"{k}: PSNR {v['psnr']} dB, SSIM {v['ssim']}" for k, v in record.stage_metrics.items()))
    return time.perf_counter() - t0


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
    from evalkit.metrics.fps import measure_fps

    frames = scene.test
    preds = _renders(model.render, scene)
    ev = evaluate_images(preds, gts, [f.image_name for f in frames], device=device)
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


def run(method: str | list[str], dataset: str, *, scenes: list[str] | None = None, rates: list[str] | None = None,
        data_root: Path | None = None, opts: RunOptions | None = None,
        reporter: Reporter | None = None) -> SweepResult:
    """Run every job of one or more methods (e.g. a method and its ablation variants). Jobs run
    scene by scene, so a scene is loaded once and shared stages (4DGS-CC's coarse stage) are
    trained once per scene."""
    opts = opts or RunOptions()
    reporter = reporter or Reporter()
    if opts.threads is not None and opts.threads < 1:
        raise RunError(f"--threads {opts.threads}: needs a positive number of CPU threads")
    jobs, notes = [], []
    try:
        for m in [method] if isinstance(method, str) else list(dict.fromkeys(method)):
            j, n = plan_jobs(m, dataset, data_root, scenes, rates)
            jobs += j
            notes += [x for x in n if x not in notes]
    except (SpecError, UnknownMethod) as exc:  # a spec without a registry entry, or the reverse
        raise RunError(str(exc)) from None
    # Existing ok records, read once: skipped when made with this sweep's settings; otherwise
    # skipping would report other settings as this run and rerunning would lose them.
    existing = {} if opts.force else {job.label: old for job in jobs if (old := _existing_ok(job, opts))}
    stale = [f"{record_path(opts.out, j.dataset, j.scene, j.method, j.rate.name)}: " + "; ".join(diff)
             for j in jobs if j.label in existing and (diff := settings_changed(existing[j.label], j, opts))]
    if stale:
        raise RunError(f"{len(stale)} existing record(s) in {opts.out} were made with other settings:\n  "
                       + "\n  ".join(stale) + "\nPass --force to replace them, or --out another folder.")
    order = {scene: i for i, scene in enumerate(dict.fromkeys(job.scene for job in jobs))}
    jobs.sort(key=lambda job: order[job.scene])  # stable: methods and rates keep their order
    result = SweepResult(notes=notes)
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
