"""Seeds in a report: one row / point per job, the mean over its seeds, with the PSNR spread; BD on the means."""
from __future__ import annotations

import csv
import io
import math
import statistics
from pathlib import Path

import pytest

from evalkit.report import build_report
from evalkit.report.bdrate import bd_pair
from evalkit.report.seeds import seed_means
from evalkit.results import RecordError, record_path, records_to_frame, write_record

SPECS = {"hypernerf": {"name": "HyperNeRF", "table_metrics": ["psnr", "ssim"]}}

# method -> rate -> (bytes, PSNR) per seed. Single seeds of "cc" do not rise with size (as 4dgs-cc's
# capture points); their means do.
RUNS = {
    "cc": {"low": [(2_000_000, 20.0), (2_100_000, 18.6), (1_900_000, 18.8)],
           "mid": [(3_000_000, 18.7), (3_200_000, 19.9), (2_800_000, 19.8)],
           "high": [(4_000_000, 19.2), (4_100_000, 19.5), (3_900_000, 20.6)]},
    "adc": {"low": [(1_000_000, 18.0), (1_100_000, 18.4), (900_000, 18.2)],
            "mid": [(1_600_000, 19.0), (1_700_000, 19.5), (1_500_000, 19.3)],
            "high": [(2_500_000, 19.8), (2_600_000, 20.3), (2_400_000, 20.1)]},
}


def _stores(root: Path) -> list[Path]:
    from report_fixtures import make_record

    stores = [root / f"seed{s}" for s in range(3)]
    for s, store in enumerate(stores):
        for method, rates in RUNS.items():
            for rate, runs in rates.items():
                size, psnr = runs[s]
                r = make_record(method, "hypernerf", "basketball", rate, size, psnr, seed=s)
                r.timings = {"train_s": 100.0 * (s + 1), "encode_s": 1.0, "decode_s": 1.0}
                write_record(r, record_path(store, r.dataset, r.scene, r.method, r.rate))
    return stores


def _csv(path: Path) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(path.read_text())))


def test_seed_means_of_a_job_average_the_ok_runs_and_keep_the_spread() -> None:
    from report_fixtures import make_record

    a = make_record("m", "d", "s", "mid", 1_000, 30.0, seed=0)
    b = make_record("m", "d", "s", "mid", 1_200, 32.0, seed=1)
    b.env = {"contention": {"contended": True}}  # its FPS and times were taken on a shared GPU
    b.fps = {**b.fps, "fps": 100.0}
    b.timings = {**b.timings, "train_s": 9.0}
    c = make_record("m", "d", "s", "mid", 0, None, status="failed", seed=2)
    one = make_record("m", "d", "s", "low", 500, 28.0, seed=0)
    df = seed_means(records_to_frame([a, b, c, one]))
    assert len(df) == 2
    mid = df[df["rate"] == "mid"].iloc[0]
    assert mid["status"] == "ok" and mid["seeds"] == 2 and mid["failed_seeds"] == 1
    assert mid["psnr"] == pytest.approx(31.0) and mid["size_bytes"] == pytest.approx(1_100)
    assert mid["psnr_sd"] == pytest.approx(statistics.stdev([30.0, 32.0]))
    assert mid["fps"] == pytest.approx(200.0) and mid["train_s"] == pytest.approx(1.0)  # the run timed alone only
    assert not mid["timings_contended"] and "seed(s) 2 failed" in mid["error"]
    low = df[df["rate"] == "low"].iloc[0]
    assert low["seeds"] == 1 and math.isnan(low["psnr_sd"]) and low["psnr"] == 28.0


def test_a_report_of_three_seed_stores_uses_the_means_for_tables_bd_and_plots(tmp_path: Path) -> None:
    index = build_report(_stores(tmp_path), tmp_path / "rep", dataset_specs=SPECS, anchor="cc")
    out = index.parent / "hypernerf"

    scene = {(r["method"], r["rate"]): r for r in _csv(out / "scenes" / "basketball.csv")}
    for method, rates in RUNS.items():
        for rate, runs in rates.items():
            row = scene[(method, rate)]
            assert float(row["psnr"]) == pytest.approx(statistics.mean(p for _, p in runs))
            assert float(row["psnr_sd"]) == pytest.approx(statistics.stdev(p for _, p in runs))
            assert float(row["size_bytes"]) == pytest.approx(statistics.mean(b for b, _ in runs))
            assert row["seeds"] == "3"
    assert "Seeds per scene" in (out / "summary.md").read_text()

    # BD of the means equals bd_pair on the means computed here; no single seed of "cc" rises with size.
    def means(method: str) -> tuple[list[float], list[float]]:
        rates = RUNS[method].values()
        return [statistics.mean(b for b, _ in r) for r in rates], [statistics.mean(p for _, p in r) for r in rates]

    want = bd_pair(*means("cc"), *means("adc"))
    assert want.bd_rate is not None
    got = _csv(out / "bd_scenes.csv")[0]
    assert got["method"] == "adc" and float(got["bd_rate"]) == pytest.approx(want.bd_rate)
    assert float(got["bd_psnr"]) == pytest.approx(want.bd_psnr)
    for s in range(3):
        one = bd_pair(*[[r[s][i] for r in RUNS["cc"].values()] for i in (0, 1)],
                      *[[r[s][i] for r in RUNS["adc"].values()] for i in (0, 1)])
        assert s == 2 or one.bd_rate is None  # seeds 0 and 1 alone: BD-rate n/a

    times = _csv(out / "times.csv")  # one row per run, named by its seed
    assert sorted((r["method"], r["rate"], r["seed"], r["train_s"]) for r in times if r["method"] == "adc"
                  and r["rate"] == "low") == [("adc", "low", "0", "100.0"), ("adc", "low", "1", "200.0"),
                                              ("adc", "low", "2", "300.0")]
    survey = list(csv.reader(io.StringIO((index.parent / "survey" / "adc" / "hypernerf" / "basketball.csv").read_text())))
    assert float(survey[-1][4]) == pytest.approx(statistics.mean(b for b, _ in RUNS["adc"]["low"]))


def test_bit_allocation_averages_each_component_over_the_seeds(tmp_path: Path) -> None:
    from evalkit.report.seeds import seed_mean_components
    from evalkit.results import components_frame, read_stores

    records, _ = read_stores(_stores(tmp_path), seeds=True)
    comps = seed_mean_components(components_frame(records), seed_means(records_to_frame(records)))
    row = comps[(comps["method"] == "adc") & (comps["rate"] == "low") & (comps["component"] == "canonical")]
    assert row["bytes"].tolist() == pytest.approx([statistics.mean(b // 2 for b, _ in RUNS["adc"]["low"])])


def test_the_same_seed_twice_is_refused_naming_both_files(tmp_path: Path) -> None:
    import shutil

    stores = _stores(tmp_path)
    shutil.copytree(stores[0], tmp_path / "copy")
    with pytest.raises(RecordError, match=r"a second record of job \w+/hypernerf/basketball/\w+ .*"
                                          r"two stores given\) with the same seed 0"):
        build_report([stores[0], tmp_path / "copy"], tmp_path / "rep", dataset_specs=SPECS)


def test_a_job_is_flagged_contended_only_where_every_seed_was(tmp_path: Path) -> None:
    from report_fixtures import make_record

    from evalkit.report.html import row_flags
    from evalkit.report.tables import scene_table, timings_table

    recs = [make_record("m", "hypernerf", "basketball", rate, 1_000 + s, 20.0 + s, seed=s)
            for rate in ("low", "high") for s in (0, 1)]
    for r in recs:
        if r.rate == "high" or r.seed == 1:  # low: seed 1 shared its GPU, seed 0 ran alone; high: both shared
            r.env = {"contention": {"contended": True}}
    df = seed_means(records_to_frame(recs))
    t = scene_table(df, "hypernerf", "basketball", SPECS["hypernerf"])
    flags = {row[1]: f for row, f in zip(t.rows, row_flags(t, recs, "basketball"))}
    assert "contended" not in flags["low"] and "contended" in flags["high"]
    fps = {row[1]: row[[c.key for c in t.columns].index("fps")] for row in t.rows}
    assert fps["low"] == 200.0 and fps["high"] is None  # FPS of the seed timed alone; none for high
    times = timings_table(recs, "hypernerf", "HyperNeRF")
    got = {(row[2], row[3]): "contended" in f for row, f in zip(times.rows, row_flags(times, recs))}
    assert got == {("high", 0): True, ("high", 1): True, ("low", 0): False, ("low", 1): True}


def test_folders_of_seed_stores_bad_layouts_and_speed_options(tmp_path: Path) -> None:
    from report_fixtures import make_record

    from evalkit.results import read_stores

    def put(store: Path, seed: int, folder: str | None = None, **config) -> None:
        r = make_record("4dgs-cc", "hypernerf", "basketball", "mid", 1_000 + seed, 20.0 + seed, seed=seed)
        r.config = {"lr": 1e-3, **config}
        write_record(r, record_path(store, r.dataset, r.scene, folder or r.method, r.rate))

    runs = tmp_path / "runs"
    put(runs / "seed0", 0, cuda_graphs=True)
    put(runs / "seed1", 1, cuda_graphs=False)  # a speed option: the same computation, averaged
    (runs / "seed²").mkdir()  # not a seed folder (a Unicode digit)
    cams = runs / "seed7" / "data" / "scene" / "cams" / "c.json"  # not a store: no record in it
    cams.parent.mkdir(parents=True)
    cams.write_text('{"focal": 1}')
    records, _ = read_stores([runs], seeds=True)
    assert sorted(r.seed for r in records) == [0, 1]

    put(runs / "seed1", 2, lr=2e-3)  # a configuration key that changes the computation
    with pytest.raises(RecordError, match=r"seed 2 ran with other settings than seed 0 .*\(config differ\)"):
        read_stores([runs], seeds=True)
    put(runs / "seed1", 1)
    put(runs / "seed1", 3, folder="4dgs-cc_old")  # a second record of the job in one store, other seed
    with pytest.raises(RecordError, match=r"a second record of job 4dgs-cc/hypernerf/basketball/mid"):
        read_stores([runs], seeds=True)
    (runs / "seed1" / "hypernerf" / "basketball" / "4dgs-cc_old" / "mid.json").unlink()

    put(runs, 4)  # records of its own beside seed stores: reading either alone would drop the other
    with pytest.raises(RecordError, match=r"holds records of its own .* and seed stores \(seed0, seed1\)"):
        read_stores([runs], seeds=True)


def test_a_scene_table_says_which_seeds_failed() -> None:
    from report_fixtures import make_record

    from evalkit.report.tables import scene_table

    recs = [make_record("m", "hypernerf", "basketball", "mid", 1_000, 20.0, seed=0),
            make_record("m", "hypernerf", "basketball", "mid", 0, None, status="failed", seed=1)]
    t = scene_table(seed_means(records_to_frame(recs)), "hypernerf", "basketball", SPECS["hypernerf"])
    assert len(t.rows) == 1 and t.rows[0][2] == 20.0
    assert "Averaged without the failed seeds: m mid (seed(s) 1 failed: CUDA out of memory)." in t.footnotes
