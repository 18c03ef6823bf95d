"""Throughput of one GPU with several jobs on it: ``--jobs-per-gpu`` 1, 2, 3... on the same sweep.

For each setting N, runs the sweep (``evalkit run --executor local --gpus G --jobs-per-gpu N``)
into its own folder ``OUT/jobs_per_gpu_N/`` and prints wall time, jobs per hour and the mean
quality (PSNR, SSIM) and size of the records, so that the throughput gain can be weighed against
any quality change (there should be none beyond run-to-run spread: the jobs are the same) and the
per-job training time (contended, so reports leave it out).

    python -m evalkit.bench.jobs_per_gpu --method 4dgs --dataset dnerf --data-root /data \\
        --gpu 0 --settings 1,2,3,4 --out bench_jpg/ [--scene lego --scene mutant] [--rate mid] [--quick]

Each setting starts from an empty folder (``--force`` is implied by separate folders); a setting
whose folder already holds a finished sweep is reported from its records without rerunning
(``--rerun`` reruns it).
"""
from __future__ import annotations

import argparse
import shutil
import statistics
import time
from pathlib import Path

from evalkit.results import read_records
from evalkit.runner import RunOptions, run
from evalkit.sweep.dispatch import SweepOptions


def run_setting(args, n: int) -> dict:
    out = Path(args.out) / f"jobs_per_gpu_{n}"
    if args.rerun and out.exists():
        shutil.rmtree(out)
    sweep = (SweepOptions(executor="local", workers=n) if args.gpu == "cpu"  # a smoke test without a GPU
             else SweepOptions(executor="local", gpus=[args.gpu], jobs_per_gpu=n))
    opts = RunOptions(out=out, iterations=args.iterations, quick=args.quick, seed=args.seed, sweep=sweep,
                      device="cpu" if args.gpu == "cpu" else None)
    t0 = time.perf_counter()
    res = run(args.method, args.dataset, scenes=args.scene, rates=args.rate, data_root=args.data_root, opts=opts)
    wall = time.perf_counter() - t0
    ran = [o for o in res.outcomes if o.status in ("ok", "failed")]
    recs = [r for r in read_records(out) if r.status == "ok"]
    mean = lambda xs: statistics.fmean(xs) if xs else float("nan")  # noqa: E731
    return {"jobs_per_gpu": n, "jobs_run": len(ran), "failed": len(res.failed), "wall_s": wall,
            "jobs_per_hour": 3600.0 * len(ran) / wall if ran and wall > 0 else float("nan"),
            "psnr": mean([r.metrics["psnr"] for r in recs if r.metrics.get("psnr") is not None]),
            "ssim": mean([r.metrics["ssim"] for r in recs if r.metrics.get("ssim") is not None]),
            "mb": mean([r.total_bytes / 1e6 for r in recs if r.total_bytes]),
            "train_s": mean([r.timings["train_s"] for r in recs if r.timings.get("train_s")]),
            "records": len(recs)}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--method", required=True)
    ap.add_argument("--dataset", required=True)
    ap.add_argument("--data-root", type=Path, default=None)
    ap.add_argument("--scene", action="append", default=None)
    ap.add_argument("--rate", action="append", default=None)
    ap.add_argument("--gpu", default="0", help="the one GPU (CUDA_VISIBLE_DEVICES id); cpu: CPU workers (smoke test)")
    ap.add_argument("--settings", default="1,2,3,4", help="jobs per GPU to try, comma-separated")
    ap.add_argument("--out", type=Path, default=Path("bench_jobs_per_gpu"))
    ap.add_argument("--iterations", type=int, default=None)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--rerun", action="store_true", help="empty each setting's folder first")
    args = ap.parse_args(argv)
    rows = [run_setting(args, int(n)) for n in args.settings.split(",") if n.strip()]
    print(f"{args.method} on {args.dataset}, GPU {args.gpu}; one folder per setting under {args.out}/")
    print(f"{'jobs/GPU':>8} {'jobs':>5} {'failed':>6} {'wall s':>8} {'jobs/h':>8} {'PSNR dB':>8} {'SSIM':>7} "
          f"{'MB':>8} {'train s/job':>11}")
    for r in rows:
        print(f"{r['jobs_per_gpu']:>8} {r['jobs_run']:>5} {r['failed']:>6} {r['wall_s']:>8.0f} {r['jobs_per_hour']:>8.1f} "
              f"{r['psnr']:>8.3f} {r['ssim']:>7.4f} {r['mb']:>8.3f} {r['train_s']:>11.1f}")
    print("jobs = jobs run by this invocation (a setting already done shows 0: use --rerun); quality and size are "
          "means over the setting's ok records; train s/job with N > 1 is contended (shared GPU).")


if __name__ == "__main__":
    main()
