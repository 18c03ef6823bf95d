"""seed_spread: per-job statistics over several results folders, refusing the same run twice."""
from __future__ import annotations

import math
from pathlib import Path

import pytest

from rich.console import Console

from evalkit.bench.seed_spread import main, spread, table
from evalkit.results import RecordError, read_record, write_record

REPO = Path(__file__).resolve().parents[1]
MUTANT = REPO / "results" / "reference" / "h200" / "dnerf" / "mutant" / "4dgs" / "default.json"


def seed_folder(root: Path, seed: int, psnr: float, size: int) -> Path:
    """A results folder holding the committed mutant record, with ``seed`` / ``psnr`` / ``size``."""
    rec = read_record(MUTANT)
    rec.seed, rec.metrics["psnr"] = seed, psnr
    rec.size = {**rec.size, "total_bytes": size}
    folder = root / f"seed{seed}"
    dst = folder / "dnerf" / "mutant" / "4dgs" / "default.json"
    dst.parent.mkdir(parents=True)
    write_record(rec, dst)
    return folder


def test_spread_over_seeds_matches_hand_computed_statistics(tmp_path):
    folders = [seed_folder(tmp_path, s, p, b) for s, p, b in ((2, 38.3, 3_000_000), (0, 37.0, 1_000_000),
                                                               (1, 37.5, 2_000_000))]
    row = spread(folders).iloc[0]
    assert (row.dataset, row.scene, row.method, row.rate, row.runs, row.seeds) == ("dnerf", "mutant", "4dgs",
                                                                                   "default", 3, "0,1,2")
    # deviations from 37.6: -0.6, -0.1, +0.7; squares sum 0.86 over n - 1 = 2 -> std sqrt(0.43)
    assert math.isclose(row.psnr_mean, 37.6) and math.isclose(row.psnr_std, math.sqrt(0.43))
    assert (row.psnr_min, row.psnr_max) == (37.0, 38.3)
    assert row.size_bytes_mean == 2_000_000


def test_one_run_has_no_std(tmp_path):
    row = spread([seed_folder(tmp_path, 0, 37.0, 10)]).iloc[0]
    assert row.runs == 1 and math.isnan(row.psnr_std)


def test_repeats_of_a_seed_count_as_runs_but_a_folder_given_twice_is_refused(tmp_path):
    a = seed_folder(tmp_path / "a", 0, 37.0, 10)  # e.g. the same job on two machines
    b = seed_folder(tmp_path / "b", 0, 37.2, 10)
    row = spread([a, b]).iloc[0]
    assert row.runs == 2 and row.seeds == "0x2" and math.isclose(row.psnr_mean, 37.1)
    with pytest.raises(RecordError, match="given twice"):
        spread([a, b, tmp_path / "a" / "." / "seed0"])


def test_runs_with_other_settings_are_refused(tmp_path):
    a = seed_folder(tmp_path, 0, 37.0, 10)
    b = seed_folder(tmp_path, 1, 37.2, 10)
    path = b / "dnerf" / "mutant" / "4dgs" / "default.json"
    rec = read_record(path)
    rec.quick, rec.iterations = True, 800  # a shortened schedule is another experiment
    write_record(rec, path)
    with pytest.raises(RecordError, match=r"with other settings than in .*seed0 \(quick, iterations differ\)"):
        spread([a, b])
    rec.quick, rec.iterations, rec.eval_split = False, read_record(MUTANT).iterations, "val"  # a tuning run
    write_record(rec, path)
    with pytest.raises(RecordError, match=r"\(eval_split differ\)"):
        spread([a, b])


def test_a_missing_psnr_leaves_every_psnr_statistic_missing(tmp_path):
    a = seed_folder(tmp_path, 0, 37.0, 10)
    b = seed_folder(tmp_path, 1, 37.2, 10)
    path = b / "dnerf" / "mutant" / "4dgs" / "default.json"
    rec = read_record(path)
    rec.metrics["psnr"] = None
    write_record(rec, path)
    df = spread([a, b])
    row = df.iloc[0]
    assert row.runs == 2 and all(math.isnan(v) for v in (row.psnr_mean, row.psnr_std, row.psnr_min, row.psnr_max))
    assert not math.isnan(row.ssim_mean)
    console = Console(width=300, record=True)
    console.print(table(df))
    line = next(ln for ln in console.export_text().splitlines() if ln.startswith("│"))
    cells = [c.strip() for c in line.split("│")]
    assert cells[7:10] == ["—", "—", "—"]  # PSNR mean, std, range


def test_method_filter_and_no_ok_records(tmp_path):
    a = seed_folder(tmp_path, 0, 37.0, 10)
    assert spread([a], "4dgs-cc").empty
    with pytest.raises(SystemExit, match="error: no ok records of method 4dgs-cc"):
        main([str(a), "--method", "4dgs-cc"])


def test_a_folder_of_seed_folders_is_a_one_line_error_naming_them(tmp_path, capsys):
    for s in (0, 1):
        seed_folder(tmp_path / "runs", s, 37.0, 10)
    with pytest.raises(SystemExit) as exc:
        main([str(tmp_path / "runs")])
    msg = str(exc.value)
    assert msg.startswith("error: ") and "\n" not in msg
    assert f"these folders below it have records: {tmp_path / 'runs' / 'seed0'}, {tmp_path / 'runs' / 'seed1'}" in msg


def test_committed_hypernerf_runs_are_gathered():
    """HyperNeRF basketball, commit 3b86578: seed 0 (the earlier reference record, now a rerun) and
    the seed 1 and 2 records of the same code; the README quotes 17.81 dB mean, sample std 1.28,
    16.42-18.92 dB."""
    folders = [REPO / "results" / "reruns" / "h200_3b86578"] + [REPO / "results" / "seeds" / "h200" / f"seed{s}"
                                                                for s in (1, 2)]
    df = spread(folders, "4dgs").set_index(["dataset", "scene"])
    hn = df.loc[("hypernerf", "basketball")]
    assert hn.runs == 3 and hn.seeds == "0,1,2"
    assert round(hn.psnr_mean, 2) == 17.81 and round(hn.psnr_std, 2) == 1.28
    assert (round(hn.psnr_min, 2), round(hn.psnr_max, 2)) == (16.42, 18.92)


def test_committed_neu3d_runs_are_gathered():
    """Neu3D basketball, commit 68461e1 (near plane 0.01): seed 0 (the earlier reference record, now a
    rerun) and seeds 1-3; the README quotes 22.75 dB mean, sample std 3.00, 18.43-24.94 dB."""
    folders = [REPO / "results" / "reruns" / "h200_68461e1"] + [REPO / "results" / "seeds" / "h200_68461e1" / f"seed{s}"
                                                                for s in (1, 2, 3)]
    df = spread(folders, "4dgs").set_index(["dataset", "scene"])
    n3 = df.loc[("neu3d", "basketball")]
    assert n3.runs == 4 and n3.seeds == "0,1,2,3"
    assert round(n3.psnr_mean, 2) == 22.75 and round(n3.psnr_std, 2) == 3.00
    assert (round(n3.psnr_min, 2), round(n3.psnr_max, 2)) == (18.43, 24.94)


def test_near_plane_runs_are_not_mixed_with_older_ones():
    """The near plane is part of the stored config: the 0.01 runs of commit 68461e1 and the current
    0.2 record are refused as one experiment, and the 0.2 runs gather: Neu3D basketball, the record
    (seed 0, commit 77f207a) and seeds 0/2/4/5 of commit 24467b0: 22.39 dB mean, std 3.04,
    19.23-26.05 dB; HyperNeRF basketball, the record and seeds 0-2 of commit 77f207a: 19.07 dB mean,
    std 0.73, 18.06-19.77 dB (the README quotes both)."""
    with pytest.raises(RecordError, match="config differ"):
        spread([REPO / "results" / "reference" / "h200", REPO / "results" / "seeds" / "h200_68461e1" / "seed1"], "4dgs")
    ref = REPO / "results" / "reference" / "h200"
    n3 = spread([ref] + [REPO / "results" / "seeds" / "h200_24467b0" / f"seed{s}" for s in (0, 2, 4, 5)],
                "4dgs").set_index(["dataset", "scene"]).loc[("neu3d", "basketball")]
    assert n3.runs == 5 and n3.seeds == "0x2,2,4,5"
    assert (round(n3.psnr_mean, 2), round(n3.psnr_std, 2)) == (22.39, 3.04)
    assert (round(n3.psnr_min, 2), round(n3.psnr_max, 2)) == (19.23, 26.05)
    hn = spread([ref] + [REPO / "results" / "seeds" / "h200_77f207a" / f"seed{s}" for s in (0, 1, 2)],
                "4dgs").set_index(["dataset", "scene"]).loc[("hypernerf", "basketball")]
    assert hn.runs == 4 and hn.seeds == "0x2,1,2"
    assert (round(hn.psnr_mean, 2), round(hn.psnr_std, 2)) == (19.07, 0.73)
    assert (round(hn.psnr_min, 2), round(hn.psnr_max, 2)) == (18.06, 19.77)


def test_runs_that_differ_in_a_speed_option_only_are_one_experiment(tmp_path):
    """4dgs-cc's `cuda_graphs` replays the same computation: as in the report, such runs are compared."""
    folders = [seed_folder(tmp_path, s, 37.0 + s, 10) for s in (0, 1)]
    for s, folder in enumerate(folders):
        path = folder / "dnerf" / "mutant" / "4dgs" / "default.json"
        rec = read_record(path)
        rec.method, rec.config = "4dgs-cc", {**rec.config, "cuda_graphs": bool(s)}
        dst = folder / "dnerf" / "mutant" / "4dgs-cc" / "high.json"
        rec.rate = "high"
        dst.parent.mkdir(parents=True)
        write_record(rec, dst)
        path.unlink()
    assert spread(folders).iloc[0].runs == 2
    rec.config["lr_scale"] = 2.0  # a key that changes the computation
    write_record(rec, dst)
    with pytest.raises(RecordError, match=r"\(config differ\)"):
        spread(folders)
