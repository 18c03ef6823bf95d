"""The ``evalkit`` command line. Thin: parse, call one function, print."""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="Benchmark compressed dynamic Gaussian Splatting: train, encode, decode, render, measure, report.")
datasets_app = typer.Typer(no_args_is_help=True, help="Inspect datasets and generate the built-in synthetic scene.")
app.add_typer(datasets_app, name="datasets")
console = Console()
err = Console(stderr=True)


def _fail(msg: str, code: int = 2) -> None:
    err.print(f"[bold red]error:[/] {msg}")
    raise typer.Exit(code)


def _percent(value: str) -> float:
    """'2%' -> 0.02, '0.02' -> 0.02."""
    v = value.strip()
    try:
        return float(v[:-1]) / 100.0 if v.endswith("%") else float(v)
    except ValueError:
        raise typer.BadParameter(f"{value!r} is not a number or percentage") from None


@app.command()
def run(
    method: list[str] = typer.Option(..., "--method", "-m", help="Method name(s) (see `evalkit methods`), e.g. 4dgs-cc and its variants."),
    dataset: str = typer.Option(..., "--dataset", "-d", help="Dataset spec name: dnerf, hypernerf, neu3d, synthetic."),
    scene: Optional[list[str]] = typer.Option(None, "--scene", "-s", help="Scene folder(s); default: all spec scenes present."),
    rate: Optional[list[str]] = typer.Option(None, "--rate", "-r", help="Rate point name(s); default: all of the method's."),
    data_root: Optional[Path] = typer.Option(None, "--data-root", help="Folder with <dataset>/<scene>/ (default $EVALKIT_DATA_ROOT or ~/evalkit-data)."),
    out: Path = typer.Option(Path("results"), "--out", "-o", help="Results folder (records, bitstreams, logs)."),
    iterations: Optional[int] = typer.Option(None, "--iterations", help="Total training iterations (schedules scale with it)."),
    quick: bool = typer.Option(False, "--quick", help="Honest short schedule (fewer iterations, lower resolution), marked in every record."),
    resolution_scale: Optional[float] = typer.Option(None, "--resolution-scale", help="Extra image scale on top of the dataset's protocol scale."),
    device: Optional[str] = typer.Option(None, "--device", help="torch device, e.g. cuda:0 or cpu (default: cuda if available)."),
    seed: int = typer.Option(0, "--seed"),
    force: bool = typer.Option(False, "--force", help="Rerun jobs whose record already exists."),
    threads: Optional[int] = typer.Option(None, "--threads", help="torch CPU threads (default: one per core); lower it when several jobs share a host."),
) -> None:
    """Train, encode, decode, render and measure every (scene, rate point) job; write one record per job."""
    from evalkit.runner import Reporter, RunError, RunOptions, run as run_sweep

    opts = RunOptions(out=out, iterations=iterations, quick=quick, resolution_scale=resolution_scale,
                      device=device, seed=seed, force=force, threads=threads)
    with Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TextColumn("{task.fields[info]}"), TimeElapsedColumn(), TimeRemainingColumn(),
                  console=console, transient=False) as progress:
        jobs_task = progress.add_task("jobs", total=None, info="")
        it_task = progress.add_task("", total=None, info="", visible=False)

        def job_started(job, i, n):
            progress.update(jobs_task, total=n, completed=i, info=job.label)
            progress.reset(it_task, total=None, description="", info="")

        def job_finished(outcome):
            progress.advance(jobs_task)
            progress.update(it_task, visible=False)
            rec = outcome.record
            if outcome.status == "failed":
                progress.console.print(f"[red]FAILED[/] {outcome.job.label}: {outcome.error}")
            elif outcome.status == "skipped":
                progress.console.print(f"[dim]skipped (record exists)[/] {outcome.job.label}")
            else:
                progress.console.print(
                    f"[green]done[/] {outcome.job.label}: PSNR {_fmt(rec.metrics.get('psnr'), '.2f')} dB, "
                    f"SSIM {_fmt(rec.metrics.get('ssim'), '.4f')}, {rec.size['total_bytes'] / 1e6:.3f} MB, "
                    f"{rec.fps['fps']:.0f} FPS ({rec.fps['label']}), {rec.num_primitives} primitives"
                    + (" [yellow](times contended: shared GPU or busy host, see the record's notes)[/]"
                       if rec.timings_contended else ""))

        def phase(msg):
            progress.update(it_task, description=msg, visible=True)

        def iteration(it, total, stats):
            info = "  ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in stats.items())
            progress.update(it_task, total=total, completed=it, info=info, visible=True)

        try:
            result = run_sweep(method, dataset, scenes=scene, rates=rate, data_root=data_root, opts=opts,
                               reporter=Reporter(job_started, job_finished, phase, iteration))
        except RunError as exc:
            progress.stop()
            _fail(str(exc))
            return
    for note in result.notes:
        console.print(f"[yellow]note:[/] {note}")
    n_failed = len(result.failed)
    console.print(f"{len(result.outcomes)} job(s): {len(result.outcomes) - n_failed} ok or skipped, "
                  f"{n_failed} failed. Records in {out}/ (logs beside them).")
    raise typer.Exit(1 if n_failed else 0)


def _fmt(v, spec: str) -> str:
    return "n/a" if v is None else format(v, spec)


@app.command()
def report(
    results: Path = typer.Argument(Path("results"), help="Results folder written by `evalkit run`."),
    out: Path = typer.Option(Path("reports"), "--out", "-o"),
    anchor: Optional[str] = typer.Option(None, "--anchor", help="BD-rate anchor method (default: see index.md)."),
) -> None:
    """Tables (md/tex/csv), BD-rate, RD and bit-allocation plots, and an index.md."""
    from evalkit.report import build_report
    from evalkit.results import RecordError
    from evalkit.specs import SpecError, all_report_specs

    if not results.is_dir():
        _fail(f"{results}: no such results folder")
    try:
        index = build_report(results, out, anchor=anchor, dataset_specs=all_report_specs())
    except (RecordError, SpecError) as exc:  # a corrupt record or spec: name the file, no traceback
        _fail(str(exc))
        return
    console.print(f"report written: {index}")


@app.command()
def check(
    results: Path = typer.Argument(..., help="Results folder to check."),
    reference: Path = typer.Option(..., "--reference", help="Reference JSON (see `evalkit check --write-reference`)."),
    max_rate_increase: Optional[str] = typer.Option(None, "--max-rate-increase", help="e.g. 2% (default: the reference's, else 2%)."),
    max_psnr_drop: Optional[float] = typer.Option(None, "--max-psnr-drop", help="dB (default: the reference's, else 0.1)."),
    write_reference: bool = typer.Option(False, "--write-reference", help="Write REFERENCE from RESULTS instead of checking."),
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
    console.print(res.table)
    console.print("[green]check passed[/]" if res.ok else "[bold red]check FAILED[/]")
    raise typer.Exit(0 if res.ok else 1)


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
    out: Path = typer.Option(..., "--out", "-o", help="Output .ply (canonical) or folder (with --times)."),
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
    from evalkit.runner import RunError, resolve_device
    from evalkit.specs import SpecError
    from evalkit.views import ViewsError, write_views

    try:
        dev = resolve_device(device)
        written = write_views(record, data_root, out, every=every, device=dev)
    except (ViewsError, SpecError, RunError) as exc:
        _fail(str(exc))
        return
    table = Table("frame", "time", "PSNR (dB)", "record (dB)")
    for v in written:
        table.add_row(v.name, f"{v.time:.4f}", f"{v.psnr:.3f}", "—" if v.record_psnr is None else f"{v.record_psnr:.3f}")
    console.print(table)
    console.print(f"wrote {len(written)} images and views.csv to {out}")


def torch_device():
    import torch
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


@datasets_app.command("info")
def datasets_info(path: Path = typer.Argument(..., help="A scene folder.")) -> None:
    """Detected format, cameras, frames per split, resolution, time range, point count."""
    from evalkit.data.info import describe
    from evalkit.data.scene import DatasetError

    try:
        console.print(describe(path))
    except DatasetError as exc:
        _fail(str(exc))


@datasets_app.command("synth")
def datasets_synth(
    out: Path = typer.Argument(..., help="Folder to write the scene into."),
    format: str = typer.Option("dnerf", "--format", "-f", help="dnerf | hypernerf | neu3d"),
    seed: int = typer.Option(0, "--seed"),
) -> None:
    """Write the procedural dynamic scene (analytic ray casting) in a real dataset format."""
    from evalkit.data.synth import generate

    if format not in ("dnerf", "hypernerf", "neu3d"):
        _fail(f"--format must be dnerf, hypernerf or neu3d, not {format!r}")
    generate(format, out, seed=seed)
    console.print(f"wrote a synthetic {format} scene to {out}")


def main() -> None:  # pragma: no cover
    app()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(app())
