"""seed_spread: per-job statistics over several results folders, refusing the same run twice."""
from __future__ import annotations

import math
import statistics
from pathlib import Path

import pytest

from evalkit.bench.seed_spread import main, spread
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
    assert math.isclose(row.psnr_std, statistics.stdev([37.0, 37.5, 38.3]))


def test_one_run_has_no_std(tmp_path):
    row = spread([seed_folder(tmp_path, 0, 37.0, 10)]).iloc[0]
    assert row.runs == 1 and math.isnan(row.psnr_std)


def test_the_same_seed_twice_is_refused(tmp_path):
    a = seed_folder(tmp_path / "a", 0, 37.0, 10)
    b = seed_folder(tmp_path / "b", 0, 37.2, 10)
    with pytest.raises(RecordError, match=f"seed 0 here and in {a}: the same run twice"):
        spread([a, b])


def test_a_folder_of_seed_folders_is_a_one_line_error_naming_them(tmp_path, capsys):
    for s in (0, 1):
        seed_folder(tmp_path / "runs", s, 37.0, 10)
    with pytest.raises(SystemExit) as exc:
        main([str(tmp_path / "runs")])
    msg = str(exc.value)
    assert msg.startswith("error: ") and "\n" not in msg
    assert f"these folders below it have records: {tmp_path / 'runs' / 'seed0'}, {tmp_path / 'runs' / 'seed1'}" in msg


def test_committed_hypernerf_runs_are_gathered():
    """The reference record (seed 0) and the two seed records of HyperNeRF basketball."""
    folders = [REPO / "results" / "reference" / "h200"] + [REPO / "results" / "seeds" / "h200x4" / f"seed{s}"
                                                           for s in (1, 2, 3)]
    df = spread(folders, "4dgs").set_index(["dataset", "scene"])
    hn = df.loc[("hypernerf", "basketball")]
    assert hn.runs == 3 and hn.seeds == "0,1,2" and hn.psnr_min < 17.5 and hn.psnr_max > 18.8
