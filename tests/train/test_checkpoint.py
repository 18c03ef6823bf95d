"""Training checkpoints: atomic writes, and a checkpoint of another setting or a damaged file is
never resumed (it is moved aside, and the reason names the file)."""
from __future__ import annotations

import torch

from evalkit.train.checkpoint import TrainCheckpoint


def test_round_trip_and_discard(tmp_path) -> None:
    ck = TrainCheckpoint(tmp_path / "job.ckpt", every_s=1e-9)
    assert ck.load("k") is None and ck.rejected is None  # none yet
    assert ck.due()
    assert ck.save("k", {"step": 7, "w": torch.arange(3.0)}) is None
    assert [f.name for f in tmp_path.iterdir()] == ["job.ckpt"]  # no temporary file left
    state = ck.load("k")
    assert ck.rejected is None and state["step"] == 7 and torch.equal(state["w"], torch.arange(3.0))
    ck.discard()
    assert not (tmp_path / "job.ckpt").exists()


def test_another_setting_is_moved_aside_not_resumed(tmp_path) -> None:
    path = tmp_path / "job.ckpt"
    TrainCheckpoint(path).save("key-a", {"step": 3})
    ck = TrainCheckpoint(path)
    assert ck.load("key-b") is None
    assert str(path) in ck.rejected and "another configuration" in ck.rejected
    assert not path.exists() and (tmp_path / "job.ckpt.bad").is_file()
    again = TrainCheckpoint(path)
    assert again.load("key-a") is None and again.rejected is None  # the rejected file is never picked up again


def test_damaged_file_is_reported_with_its_name(tmp_path) -> None:
    path = tmp_path / "job.ckpt"
    TrainCheckpoint(path).save("k", {"step": 3, "w": torch.zeros(1000)})
    path.write_bytes(path.read_bytes()[:200])  # truncated
    ck = TrainCheckpoint(path)
    assert ck.load("k") is None and ck.rejected.startswith(f"checkpoint {path} not resumed: unreadable")


def test_off_when_no_path_or_no_interval(tmp_path) -> None:
    assert not TrainCheckpoint().enabled and not TrainCheckpoint().due()
    ck = TrainCheckpoint(tmp_path / "job.ckpt", every_s=0)
    assert not ck.enabled and not ck.due() and ck.load("k") is None


def test_a_failed_write_turns_checkpoints_off_and_says_why(tmp_path) -> None:
    """A checkpoint that cannot be written (here its folder is a file) does not stop training: the
    reason names the file, and no further write is attempted."""
    blocker = tmp_path / "results"
    blocker.write_text("not a folder")
    ck = TrainCheckpoint(blocker / "job.ckpt", every_s=1e-9)
    why = ck.save("k", {"step": 1})
    assert why is not None and str(blocker / "job.ckpt") in why and "training goes on" in why
    assert not ck.enabled and not ck.due()
