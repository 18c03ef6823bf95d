"""The reference comparison reads the committed H200 records and the spec's reference numbers."""
from __future__ import annotations

from pathlib import Path

from rich.console import Console

from evalkit.bench.vs_reference import compare

REPO = Path(__file__).resolve().parents[1]


def test_compare_prints_ratios_from_committed_records():
    console = Console(width=200, record=True)
    console.print(compare(REPO / "results" / "reference" / "h200", "4dgs"))
    text = console.export_text()
    # lego: 214.51 s vs 371 s and 2.71 ms vs 1.2185 ms per frame (records vs datasets/dnerf.toml)
    assert "lego" in text and "0.58x" in text and "2.22x" in text
    # jumpingjacks: 171.68 s vs 342 s (0.502: not at most half), 35.23 vs 35.42 dB
    assert "jumpingjacks" in text and "-0.19" in text and "0.50x" in text and "train MISSED" in text
    assert "mutant" not in text  # no reference numbers for it


def test_contended_records_are_not_compared(tmp_path):
    from evalkit.results import read_record, write_record
    src = REPO / "results" / "reference" / "h200" / "dnerf" / "lego" / "4dgs" / "default.json"
    rec = read_record(src)
    rec.env["contention"] = {"contended": True, "annotated": "two jobs on one GPU"}
    dst = tmp_path / "dnerf" / "lego" / "4dgs" / "default.json"
    dst.parent.mkdir(parents=True)
    write_record(rec, dst)
    console = Console(width=200, record=True)
    console.print(compare(tmp_path, "4dgs"))
    text = console.export_text()
    assert "lego" in text and "not compared" in text and "0.58x" not in text and "met" not in text
