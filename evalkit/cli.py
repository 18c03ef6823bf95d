"""The ``evalkit`` command line. Thin: parse, call one function, print."""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from evalkit.progress_lines import ProgressLines

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="Benchmark compressed dynamic Gaussian Splatting: train, encode, decode, render, measure, report.")
datasets_app = typer.Typer(no_args_is_help=True, help="Inspect datasets and generate the built-in synthetic scene.")
app.add_typer(datasets_app, name="datasets")
console = Console()
err = Console(stderr=True)
FLAG = ""  # metavar of boolean flags: typer would show "<bool>" as if they took a value


def _fail(msg: str, code: int = 2) -> None:
    err.print(f"[bold red]error:[/] {msg}", soft_wrap=True)  # one line, whatever the width
    raise typer.Exit(code)


def _percent(value: str) -> float:
    """'2%' -> 0.02, '0.02' -> 0.02; a tolerance, so negative (or NaN) is refused."""
    v = value.strip()
    try:
        out = float(v[:-1]) / 100.0 if v.endswith("%") else float(v)
    except ValueError:
        raise typer.BadParameter(f"{value!r} is not a number or percentage") from None
    if not out >= 0 or out == float("inf"):
        raise typer.BadParameter(f"{value!r}: a tolerance must be a finite number >= 0")
    return out


@app.command()
def run(
    method: list[str] = typer.Option(..., "--method", "-m", help="Method name(s) (see `evalkit methods`), e.g. 4dgs-cc and its variants."),
    dataset: str = typer.Option(..., "--dataset", "-d", help="Dataset spec name: dnerf, hypernerf, neu3d, synthetic."),
    scene: Optional[list[str]] = typer.Option(None, "--scene", "-s", help="Scene folder(s); default: every scene present (spec scenes first, then other folders in the layout)."),
    rate: Optional[list[str]] = typer.Option(None, "--rate", "-r", help="Rate point name(s); default: all of the method's."),
    data_root: Optional[Path] = typer.Option(None, "--data-root", help="Folder with <dataset>/<scene>/ (default $EVALKIT_DATA_ROOT or ~/evalkit-data)."),
    out: Path = typer.Option(Path("results"), "--out", "-o", help="Results folder (records, bitstreams, logs)."),
    iterations: Optional[int] = typer.Option(None, "--iterations", help="Total training iterations (schedules scale with it)."),
    quick: bool = typer.Option(False, "--quick", metavar=FLAG, help="Honest short schedule (fewer iterations, lower resolution), marked in every record."),
    resolution_scale: Optional[float] = typer.Option(None, "--resolution-scale", help="Extra image scale on top of the dataset's protocol scale."),
    device: Optional[str] = typer.Option(None, "--device", help="torch device, e.g. cuda:0 or cpu (default: cuda if available)."),
    seed: list[int] = typer.Option([0], "--seed", help="Training seed; repeat it for several (e.g. --seed 0 --seed 1 "
                                   "--seed 2): each seed's records go to OUT/seed<N>/, one store per seed, run one "
                                   "seed after another; `evalkit report OUT` then reports each job as the mean over "
                                   "its seeds."),
    force: bool = typer.Option(False, "--force", metavar=FLAG, help="Rerun jobs whose record already exists."),
    threads: Optional[int] = typer.Option(None, "--threads", help="torch CPU threads (default: one per core, shared among local workers); lower it when several jobs share a host."),
    executor: str = typer.Option("local", "--executor", envvar="EVALKIT_EXECUTOR", help="local (child-process workers on this machine; default: one), slurm (submitit job array), ray, or inline (in this process, no crash isolation)."),
    gpus: Optional[str] = typer.Option(None, "--gpus", help="local: one worker per GPU, e.g. 0,1,3 or all (pinned with CUDA_VISIBLE_DEVICES)."),
    jobs_per_gpu: int = typer.Option(1, "--jobs-per-gpu", help="local: workers sharing each GPU (small scenes); their records say the GPU was shared."),
    workers: Optional[int] = typer.Option(None, "--workers", help="local without --gpus: number of workers on --device (e.g. CPU workers)."),
    gpus_per_job: Optional[int] = typer.Option(None, "--gpus-per-job", help="slurm / ray: override the method spec's resources table (gpus)."),
    cpus_per_job: Optional[int] = typer.Option(None, "--cpus-per-job", help="slurm / ray: override the spec's cpus."),
    mem_gb: Optional[int] = typer.Option(None, "--mem-gb", help="slurm / ray: override the spec's mem_gb."),
    time_min: Optional[int] = typer.Option(None, "--time-min", help="Per-job time limit in minutes (slurm's timeout; a claim older than it is stale)."),
    partition: Optional[str] = typer.Option(None, "--partition", help="slurm partition."),
    slurm_cluster: Optional[str] = typer.Option(None, "--slurm-cluster", help="submitit cluster: default slurm; 'local' runs the array here (tests)."),
    ray_address: Optional[str] = typer.Option(None, "--ray-address", help="ray.init(address=...), e.g. auto or ray://head:10001; default: a local Ray."),
    eval_split: str = typer.Option("test", "--eval-split", help="Views to score: test (the protocol) or val (tuning runs: the records say so; reports and gates leave them out)."),
    allow_corrupt_video: bool = typer.Option(False, "--allow-corrupt-video", metavar=FLAG, help="Neu3D: train on videos whose decoder reported damage (concealed frames); the record notes it."),
    offline: bool = typer.Option(False, "--offline", metavar=FLAG, help="Never download (LPIPS weights missing -> LPIPS recorded as missing, with the reason)."),
    checkpoint_minutes: float = typer.Option(10.0, "--checkpoint-minutes", help="Minutes between training checkpoints (next to each job's record; running the same command again resumes an interrupted job from it; removed when the job ends ok). 0: none. Every built-in method supports it."),
) -> None:
    """Train, encode, decode, render and measure every (scene, rate point) job; write one record per job."""
    from evalkit.codec.container import BitstreamError
    from evalkit.data.scene import DatasetError
    from evalkit.metrics.lpips_metric import OFFLINE_ENV
    from evalkit.runner import Reporter, RunError, RunOptions, run as run_sweep
    from evalkit.sweep.dispatch import EXECUTORS, SweepOptions

    from evalkit.sweep.worker import load_plugins

    if offline:
        import os

        os.environ[OFFLINE_ENV] = "1"
    load_plugins()  # $EVALKIT_PLUGINS: out-of-tree methods
    if executor not in EXECUTORS:
        _fail(f"--executor {executor!r}: one of {', '.join(EXECUTORS)}")
    if not checkpoint_minutes >= 0:
        _fail(f"--checkpoint-minutes {checkpoint_minutes}: minutes between checkpoints, 0 or more (0: none)")
    sweep = None if executor == "inline" else SweepOptions(
        executor=executor, gpus=[g.strip() for g in gpus.split(",") if g.strip()] if gpus else None,
        jobs_per_gpu=jobs_per_gpu, workers=workers, gpus_per_job=gpus_per_job, cpus_per_job=cpus_per_job,
        mem_gb=mem_gb, time_min=time_min, slurm_partition=partition, slurm_cluster=slurm_cluster,
        ray_address=ray_address)
    seeds = list(dict.fromkeys(seed))  # a seed given twice runs once
    if any(s < 0 for s in seeds):
        _fail(f"--seed {min(seeds)}: seeds are 0 or more")
    # A store holds one record per job, so several seeds (or one more into a folder of seed stores)
    # get one store each, OUT/seed<N>; one seed alone writes to OUT.
    from evalkit.results import seed_stores

    per_seed = len(seeds) > 1 or (out.is_dir() and bool(seed_stores(out)))
    outs = [(s, out / f"seed{s}" if per_seed else out) for s in seeds]
    opts = RunOptions(out=outs[0][1], iterations=iterations, quick=quick, resolution_scale=resolution_scale,
                      device=device, seed=seeds[0], force=force, threads=threads, sweep=sweep,
                      allow_corrupt_video=allow_corrupt_video, eval_split=eval_split,
                      checkpoint_minutes=checkpoint_minutes)
    # The bar starts with the first job, so an error found while planning prints no empty bar.
    progress = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                        TextColumn("{task.fields[info]}"), TimeElapsedColumn(), TimeRemainingColumn(),
                        console=console, transient=False)
    jobs_task = progress.add_task("jobs", total=None, info="")
    it_task = progress.add_task("", total=None, info="", visible=False)
    n_jobs: list = [None]
    # output to a file or a batch log: rich draws no bar there, so plain lines say how a job goes
    lines = None if console.is_terminal else ProgressLines(lambda s: console.print(s, markup=False, highlight=False, soft_wrap=True))

    def planned(n):
        n_jobs[0] = n
        progress.update(jobs_task, total=n)

    def job_started(job, i, n):
        if not progress.live.is_started:
            progress.start()
        progress.update(jobs_task, total=n, completed=i, info=job.label)
        progress.reset(it_task, total=None, description="", info="")
        if lines is not None:
            lines.started("run", job.label, f"[{i + 1}/{n}] " if n else "")

    def say(text: str) -> None:  # one line each, never wrapped (logs are grepped); labels / errors escaped
        progress.console.print(text, soft_wrap=True)

    def job_finished(outcome):
        progress.advance(jobs_task)
        progress.update(it_task, visible=False)
        rec = outcome.record
        if sweep is not None:
            progress.update(jobs_task, total=n_jobs[0])
        if outcome.status == "failed":
            say(f"[red]FAILED[/] {escape(outcome.job.label)}: {escape(str(outcome.error))}")
        elif outcome.status == "claimed":
            say(f"[dim]skipped ({escape(str(outcome.error))})[/] {escape(outcome.job.label)}")
        elif outcome.status == "skipped":
            say(f"[dim]skipped (record exists)[/] {escape(outcome.job.label)}")
        else:
            say(
                f"[green]done[/] {escape(outcome.job.label)}: PSNR {_fmt(rec.metrics.get('psnr'), '.2f')} dB, "
                f"SSIM {_fmt(rec.metrics.get('ssim'), '.4f')}, {rec.size['total_bytes'] / 1e6:.3f} MB, "
                f"{rec.fps['fps']:.0f} FPS ({escape(str(rec.fps['label']))}), {rec.num_primitives} primitives"
                + (" [yellow](times contended: shared GPU or busy host, see the record's notes)[/]"
                   if rec.timings_contended else ""))
            if rec.draws_nothing:
                from evalkit.results import DRAWS_NOTHING
                say(f"[yellow]warning:[/] {escape(outcome.job.label)}: {DRAWS_NOTHING}")

    def phase(msg):
        progress.update(it_task, description=msg, visible=True)
        if lines is not None:
            lines.phase("run", msg)

    def iteration(it, total, stats):
        info = "  ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in stats.items())
        progress.update(it_task, total=total, completed=it, info=info, visible=True)
        if lines is not None:
            lines.iteration("run", it, total, info)

    worker_tasks: dict = {}

    def worker_event(worker, ev):  # executors: one line per worker under the jobs bar
        if worker == "-":
            return
        if not progress.live.is_started:
            progress.start()
        if worker not in worker_tasks:
            worker_tasks[worker] = progress.add_task(worker, total=None, info="")
        task, kind = worker_tasks[worker], ev.get("kind")
        if kind == "started":
            progress.reset(task, total=None, description=f"{worker}", info=ev["label"])
            if lines is not None:
                lines.started(worker, ev["label"], f"{worker} ")
        elif kind == "phase":
            progress.update(task, info=f"{ev['msg']}")
            if lines is not None:
                lines.phase(worker, ev["msg"])
        elif kind == "iteration":
            progress.update(task, total=ev["total"], completed=ev["it"])
            if lines is not None:
                lines.iteration(worker, ev["it"], ev["total"])
        elif kind == "finished":
            progress.update(task, info=f"idle ({ev['status']}: {ev['label']})")

    reporter = Reporter(job_started, job_finished, phase, iteration, planned)
    if sweep is not None:
        reporter.worker_event = worker_event
        progress.update(it_task, visible=False)
    outcomes, notes = [], []
    try:
        if len(outs) > 1:  # every seed's checks (stale records, specs) before any job trains
            from dataclasses import replace

            from evalkit.runner import plan

            for s, store in outs[1:]:
                plan(method, dataset, scenes=scene, rates=rate, data_root=data_root, opts=replace(opts, seed=s, out=store))
        for s, store in outs:
            opts.seed, opts.out = s, store
            if len(outs) > 1:  # each seed's sweep counts its own jobs on the bar
                progress.reset(jobs_task, total=None, description=f"jobs, seed {s}", info="")
            result = run_sweep(method, dataset, scenes=scene, rates=rate, data_root=data_root, opts=opts,
                               reporter=reporter)
            outcomes += result.outcomes
            notes += [n for n in result.notes if n not in notes]
    except (RunError, BitstreamError, DatasetError) as exc:
        progress.stop()
        _fail(str(exc))
        return
    except KeyboardInterrupt:
        progress.stop()
        err.print("[yellow]stopped:[/] the jobs in flight were abandoned (no record written for them, "
                  "their claims released); run the same command again to go on.")
        raise typer.Exit(130)
    progress.stop()
    for note in notes:
        console.print(f"[yellow]note:[/] {escape(note)}", soft_wrap=True)
    n_failed = sum(1 for o in outcomes if o.status == "failed")
    n_claimed = sum(1 for o in outcomes if o.status == "claimed")
    where = f"{out}/" if not per_seed else f"{out}/seed<N>/ for seed(s) {', '.join(map(str, seeds))}"
    runs = "job(s)" if len(outs) == 1 else f"run(s) ({len(outs)} seeds)"
    console.print(f"{len(outcomes)} {runs}: {len(outcomes) - n_failed - n_claimed} ok or skipped, "
                  f"{n_failed} failed" + (f", {n_claimed} left to other workers (claimed)" if n_claimed else "")
                  + f". Records in {escape(where)} (logs beside them).", soft_wrap=True)
    raise typer.Exit(1 if n_failed else 0)


def _fmt(v, spec: str) -> str:
    return "n/a" if v is None else format(v, spec)


@app.command()
def report(
    results: Optional[list[Path]] = typer.Argument(
        None, help="Results folder(s) written by `evalkit run` (default: results). Several (e.g. one per machine) "
                   "are read together; a job recorded in two with the same seed is an error, with other seeds (one store "
                   "per seed, same settings) it is reported as the mean over its seeds."),
    out: Path = typer.Option(Path("reports"), "--out", "-o"),
    anchor: Optional[str] = typer.Option(None, "--anchor", help="BD-rate anchor method (default: see index.md)."),
    html: bool = typer.Option(False, "--html", help="Also write the static site (index.html, a page per scene) "
                              "into the report folder: opens from disk, no server."),
    views_frames: int = typer.Option(3, "--views-frames", help="--html: test frames per rate point in the view "
                                     "strips (0: none)."),
    data_root: Optional[Path] = typer.Option(None, "--data-root", help="--html: the data root the jobs ran on, "
                                             "for the view strips (default as `evalkit run`)."),
    device: Optional[str] = typer.Option(None, "--device", help="--html: torch device for the view strips."),
    copy_bitstreams: bool = typer.Option(True, "--copy-bitstreams/--no-copy-bitstreams",
                                         help="--html: copy each bitstream into the site (it links to it)."),
) -> None:
    """Tables (md/tex/csv), BD-rate, RD and bit-allocation plots, and an index.md (--html: and index.html)."""
    from evalkit.report import build_report
    from evalkit.results import RecordError
    from evalkit.specs import SpecError, all_report_specs

    results = results or [Path("results")]
    for folder in results:
        if not folder.is_dir():
            _fail(f"{folder}: no such results folder")
    site = None
    if html:
        from evalkit.report.html import SiteOptions

        site = SiteOptions(views_frames=views_frames, data_root=data_root, device=device,
                           copy_bitstreams=copy_bitstreams)
    try:
        index = build_report(results, out, anchor=anchor, dataset_specs=all_report_specs(), html=site)
    except (RecordError, SpecError) as exc:  # a corrupt record or spec: name the file, no traceback
        _fail(str(exc))
        return
    console.print(f"report written: {index}")
    if html:
        console.print(f"site written: {index.with_suffix('.html')} (open it from disk; the folder is self-contained)")


@app.command()
def check(
    results: Path = typer.Argument(..., help="Results folder to check."),
    reference: Path = typer.Option(..., "--reference", help="Reference JSON (see `evalkit check --write-reference`)."),
    max_rate_increase: Optional[str] = typer.Option(None, "--max-rate-increase", help="e.g. 2% (default: the reference's, else 2%)."),
    max_psnr_drop: Optional[float] = typer.Option(None, "--max-psnr-drop", min=0.0, help="dB (default: the reference's, else 0.1)."),
    write_reference: bool = typer.Option(False, "--write-reference", metavar=FLAG, help="Write REFERENCE from RESULTS instead of checking."),
) -> None:
    """CI gate: fail when a record's size grows or its PSNR drops beyond tolerance."""
    from evalkit.report.check import CheckError, check as run_check, write_reference as write_ref
    from evalkit.results import RecordError

    try:
        if write_reference:
            console.print(f"reference written: {write_ref(results, reference)}")
            return
        res = run_check(results, reference, max_rate_increase=_percent(max_rate_increase) if max_rate_increase else None,
                        max_psnr_drop=max_psnr_drop)
    except (CheckError, RecordError) as exc:  # RecordError: a corrupt record under RESULTS
        _fail(str(exc))
        return
    # Never cut to the terminal (CI logs are 80 columns): the plain table at its natural width.
    console.print(res.text(width=max(console.width, 200)).rstrip("\n").rsplit("\n", 1)[0], markup=False,
                  highlight=False, soft_wrap=True)
    for w in res.warnings:
        console.print(f"[yellow]warning:[/] {w}")
    console.print("[green]check passed[/]" if res.ok else "[bold red]check FAILED[/]")
    raise typer.Exit(0 if res.ok else 1)


@app.command()
def status(
    results: Path = typer.Argument(Path("results"), help="Results folder of one or more sweeps."),
    all_jobs: bool = typer.Option(False, "--all", help="List done jobs too (default: counts only for them)."),
) -> None:
    """Done / running (where, for how long) / failed (first line of the error) / pending, per
    method, dataset and rate point."""
    from evalkit.sweep.status import collect_status, render_status

    if not results.is_dir():
        _fail(f"{results}: no such results folder")
    console.print(render_status(collect_status(results), all_jobs=all_jobs))


@app.command()
def methods() -> None:
    """List registered methods and their rate points."""
    from evalkit.methods.registry import method_names
    from evalkit.specs import SpecError, load_method_spec, method_variants

    t = Table("method", "paper", "rate points", "variants (--method NAME:VARIANT)")
    broken = []
    for name in method_names():
        try:
            spec = load_method_spec(name)
        except SpecError as exc:  # registered without a readable spec: list the others, then fail
            broken.append(str(exc))
            t.add_row(name, "[red]no usable spec[/]", "")
            continue
        t.add_row(name, spec.paper, ", ".join(spec.rates),
                  ", ".join(v.partition(":")[2] for v in method_variants(name)))
    console.print(t)
    if broken:
        _fail("; ".join(broken))


@app.command()
def export(
    bitstream: Path = typer.Argument(..., help="A .evk bitstream written by `evalkit run`."),
    out: Path = typer.Option(..., "--out", "-o", help="Output .ply (canonical) or folder (with --time)."),
    times: Optional[list[float]] = typer.Option(None, "--time", "-t", help="Also write the Gaussians deformed to these times."),
) -> None:
    """Decode a bitstream and export standard 3DGS PLY files for splat viewers."""
    from evalkit.codec.container import Bitstream, BitstreamError
    from evalkit.methods.base import ContractError
    from evalkit.methods.registry import UnknownMethod, get_method

    try:
        bits = Bitstream.read(bitstream)
        method = get_method(bits.header.get("method", "?"))
        model = method.decode(bits, torch_device(), source=str(bitstream))
    except (BitstreamError, UnknownMethod, ContractError) as exc:
        _fail(str(exc))
        return
    bad_times = [t for t in times or [] if not 0.0 <= t <= 1.0]
    if bad_times:
        _fail(f"--time {bad_times[0]}: times are normalised to [0, 1]")
        return
    try:
        if times:
            out.mkdir(parents=True, exist_ok=True)
            paths = [model.export_ply(out / "canonical.ply", None)] + [model.export_ply(out / f"t_{t:.4f}.ply", t)
                                                                       for t in times]
        else:
            paths = [model.export_ply(out, None)]
    except NotImplementedError:  # Model.export_ply's default
        _fail(f"method {method.name!r} has no PLY export")
        return
    for p in paths:
        console.print(f"wrote {p}")


@app.command()
def views(
    record: Path = typer.Argument(..., help="A job's record (.json) written by `evalkit run`; its .evk beside it."),
    out: Path = typer.Option(..., "--out", "-o", help="Folder for the images (<frame>.png) and views.csv."),
    data_root: Optional[Path] = typer.Option(None, "--data-root", help="The data root the job ran on (default as `evalkit run`)."),
    every: int = typer.Option(1, "--every", help="Every k-th test frame."),
    device: Optional[str] = typer.Option(None, "--device", help="torch device (default: cuda if available)."),
) -> None:
    """Decode a job's bitstream and write its test views: ground truth | render | error x4, with each
    frame's PSNR beside the record's."""
    from evalkit.codec.container import BitstreamError
    from evalkit.data.scene import DatasetError
    from evalkit.runner import RunError, resolve_device
    from evalkit.specs import SpecError
    from evalkit.views import ViewsError, write_views

    try:
        dev = resolve_device(device)
        written = write_views(record, data_root, out, every=every, device=dev)
    except (ViewsError, SpecError, RunError, BitstreamError, DatasetError) as exc:
        _fail(str(exc))
        return
    table = Table("frame", "time", "PSNR (dB)", "record (dB)")
    for v in written:
        table.add_row(v.name, f"{v.time:.4f}", f"{v.psnr:.3f}", "—" if v.record_psnr is None else f"{v.record_psnr:.3f}")
    console.print(table)
    console.print(f"wrote {len(written)} images and views.csv to {out}")


@app.command()
def view(
    result: Path = typer.Argument(..., help="A bitstream (.evk) or a job's record (.json, its .evk beside it)."),
    data_root: Optional[Path] = typer.Option(None, "--data-root", help="Where the scene is, for the test-camera "
                                             "presets (default as `evalkit run`)."),
    device: Optional[str] = typer.Option(None, "--device", help="torch device (default: cuda if available)."),
    host: str = typer.Option("127.0.0.1", "--host"),
    port: int = typer.Option(8080, "--port", help="0: any free port."),
    max_side: Optional[int] = typer.Option(None, "--max-side", help="Render at most this many pixels on the longer "
                                           "side (default 800 on CUDA, 256 on CPU: the CPU renderer is slow)."),
    open_browser: bool = typer.Option(True, "--open/--no-open", help="Open the viewer in the default browser."),
) -> None:
    """Decode a bitstream and look at the model in the browser (viser): time slider, play / pause, the
    dataset's test cameras as presets. Frames are rendered here (gsplat on CUDA, else the CPU reference)."""
    import time as _time
    import webbrowser

    from evalkit.runner import RunError, resolve_device
    from evalkit.viewer import ViewerError, serve

    try:
        dev = resolve_device(device)
        side = max_side or (800 if dev.type == "cuda" else 256)
        viewer = serve(result, data_root=data_root, device=dev, host=host, port=port, max_side=side)
    except (ViewerError, RunError) as exc:
        _fail(str(exc))
        return
    url = f"http://{host}:{viewer.port}"
    console.print(f"viewer at {url} ({len(viewer.presets)} test cameras; rendering on {dev}); Ctrl-C to stop")
    if open_browser:
        webbrowser.open(url)
    try:
        while True:
            _time.sleep(1.0)
    except KeyboardInterrupt:
        viewer.stop()


@app.command()
def doctor() -> None:
    """What this machine can do: CUDA and GPU, gsplat / torchac built, LPIPS weights, data root and
    the dataset scenes it holds, the spec folder in use. Builds and downloads nothing."""
    from evalkit.doctor import diagnose

    t = Table("check", "", "detail", show_lines=False)
    for c in diagnose():
        t.add_row(c.name, {True: "[green]ok[/]", False: "[red]no[/]", None: "[yellow]–[/]"}[c.ok], c.detail)
    console.print(t)


def torch_device():
    import torch
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


@datasets_app.command("info")
def datasets_info(
    path: Path = typer.Argument(..., help="A scene folder."),
    deep: bool = typer.Option(False, "--deep", metavar=FLAG, help="Also decode every image and video frame and report decoder errors."),
    split: Optional[str] = typer.Option(None, "--split", help="HyperNeRF: vrig or interp (an empty val_ids needs interp)."),
) -> None:
    """Detected format, cameras, frames per split, resolution, time range, point count. Loading
    runs the loaders' validation, so a file `run` would refuse is an error here too (exit 2)."""
    from evalkit.data.info import deep_check, describe
    from evalkit.data.scene import DatasetError

    try:
        console.print(describe(path, **({"split": split} if split else {})))
        if deep:
            problems, checked = deep_check(path, **({"split": split} if split else {}))
            for p in problems:
                err.print(f"[bold red]error:[/] {p}", markup=True, highlight=False)
            if problems:
                raise typer.Exit(2)
            console.print(f"deep check: {checked} decoded without errors")
    except (DatasetError, ValueError) as exc:
        _fail(str(exc))


@datasets_app.command("synth")
def datasets_synth(
    out: Path = typer.Argument(..., help="Folder to write the scene into."),
    format: str = typer.Option("dnerf", "--format", "-f", help="dnerf | hypernerf | neu3d"),
    seed: int = typer.Option(0, "--seed"),
    scene: str = typer.Option("spheres", "--scene", help="spheres (small, quick to fit) | skeleton (41 thin, "
                              "finely banded bones walking: a T-Rex-like stand-in)"),
    size: Optional[str] = typer.Option(None, "--size", help="Image size WxH (default: small, per format), e.g. 800x800."),
    frames: Optional[int] = typer.Option(None, "--frames", help="D-NeRF train images (plus a third as many test, a "
                                         "sixth as many val); HyperNeRF time steps; Neu3D frames per video."),
    workers: int = typer.Option(1, "--workers", help="D-NeRF: processes rendering the images."),
) -> None:
    """Write the procedural dynamic scene (analytic ray casting) in a real dataset format."""
    from evalkit.data.synth import SCENES, generate_atomic

    if format not in ("dnerf", "hypernerf", "neu3d"):
        _fail(f"--format must be dnerf, hypernerf or neu3d, not {format!r}")
    if scene not in SCENES:
        _fail(f"--scene must be one of {', '.join(sorted(SCENES))}, not {scene!r}")
    wh = None
    if size is not None:
        parts = size.lower().split("x")
        if len(parts) != 2 or not all(p.isdigit() and int(p) > 0 for p in parts):
            _fail(f"--size {size!r}: give width x height in pixels, e.g. 800x800")
        wh = (int(parts[0]), int(parts[1]))
    if frames is not None and frames < 2:
        _fail(f"--frames {frames}: at least 2")
    if workers < 1:
        _fail(f"--workers {workers}: at least 1")
    try:
        generate_atomic(format, out, seed=seed, scene=scene, size=wh, num_frames=frames, workers=workers)
    except (FileExistsError, ValueError) as exc:
        _fail(str(exc))
    console.print(f"wrote a synthetic {format} scene ({scene}) to {out}")


def main() -> None:  # pragma: no cover
    app()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(app())
