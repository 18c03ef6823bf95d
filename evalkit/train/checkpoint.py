"""Training checkpoints: a long job killed part-way (a lost machine, a pre-empted node, Ctrl-C)
continues from its last checkpoint when it is run again, instead of from step 0.

The runner gives each job a ``TrainCheckpoint`` (beside the job's record); a method that supports
it calls ``load`` once before its loop, ``due`` / ``save`` in it. A checkpoint carries a ``key``
(the method's digest of its effective configuration and seed), so a checkpoint of another setting
is never resumed. Writes are atomic (a temporary file, then a rename): a kill during a save leaves
the previous checkpoint. A checkpoint that cannot be read or restored is moved aside (``.bad``)
and the job starts over; the method says so in its record.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

FORMAT = 1  # bump when what ``save`` writes changes incompatibly


@dataclass
class TrainCheckpoint:
    """Where one job's checkpoint lives and how often to write it. ``path=None``: checkpoints off."""

    path: Path | None = None
    every_s: float = 600.0
    _last: float = field(default_factory=time.monotonic, repr=False)
    rejected: str | None = None  # why a checkpoint found at ``load`` was not resumed (for the record)

    @property
    def enabled(self) -> bool:
        return self.path is not None and self.every_s > 0

    def due(self) -> bool:
        """Time to write one (``every_s`` since the last write or since the job started)."""
        return self.enabled and time.monotonic() - self._last >= self.every_s

    def save(self, key: str, state: dict[str, Any]) -> str | None:
        """Write the checkpoint; None, or why it could not be written (a full disk, a read-only
        folder: training goes on without checkpoints, and the caller logs the reason)."""
        assert self.path is not None
        tmp = self.path.with_name(self.path.name + ".tmp")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            torch.save({"format": FORMAT, "key": key, "state": state}, tmp)
            os.replace(tmp, self.path)
        except OSError as exc:
            if tmp.parent.is_dir():
                tmp.unlink(missing_ok=True)
            self.every_s = 0.0  # off for the rest of the job
            return f"checkpoint {self.path} not written ({type(exc).__name__}: {exc}); training goes on without checkpoints"
        self._last = time.monotonic()
        return None

    def load(self, key: str) -> tuple[dict[str, Any] | None, str | None]:
        """``(state, None)`` for a checkpoint of this ``key``; ``(None, why)`` when there is one that
        cannot be used (unreadable, another format or setting: it is moved aside); ``(None, None)``
        when there is none."""
        if not self.enabled or not self.path.is_file():
            return None, None
        try:
            blob = torch.load(self.path, map_location="cpu", weights_only=False)
        except Exception as exc:  # damaged, truncated, not a checkpoint
            return None, self.reject(f"unreadable ({type(exc).__name__}: {exc})")
        if not isinstance(blob, dict) or blob.get("format") != FORMAT:
            return None, self.reject("written by another evalkit version")
        if blob.get("key") != key:
            return None, self.reject("made with another configuration or seed")
        return blob["state"], None

    def reject(self, why: str) -> str:
        """Move the checkpoint aside (kept for inspection, never resumed) and say why."""
        assert self.path is not None
        bad = self.path.with_name(self.path.name + ".bad")
        os.replace(self.path, bad)
        self.rejected = f"checkpoint {self.path} not resumed: {why}; moved to {bad.name}, training starts over"
        return self.rejected

    def discard(self) -> None:
        """Remove the checkpoint (the job finished, or is forced to start over)."""
        if self.path is not None:
            for p in (self.path, self.path.with_name(self.path.name + ".tmp")):
                p.unlink(missing_ok=True)
