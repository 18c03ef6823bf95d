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

import io
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from evalkit.codec.container import atomic_write_bytes

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
        buf = io.BytesIO()
        torch.save({"format": FORMAT, "key": key, "state": state}, buf)
        try:
            atomic_write_bytes(self.path, buf.getvalue())
        except OSError as exc:
            self.every_s = 0.0  # off for the rest of the job
            return f"checkpoint {self.path} not written ({type(exc).__name__}: {exc}); training goes on without checkpoints"
        self._last = time.monotonic()
        return None

    def load(self, key: str) -> dict[str, Any] | None:
        """The state of a checkpoint of this ``key``, or None: there is none, or it cannot be used
        (unreadable, another format or setting: moved aside, and ``rejected`` says why)."""
        if not self.enabled or not self.path.is_file():
            return None
        try:
            blob = torch.load(self.path, map_location="cpu", weights_only=False)
        except Exception as exc:  # damaged, truncated, not a checkpoint
            self.reject(f"unreadable ({type(exc).__name__}: {exc})")
            return None
        if not isinstance(blob, dict) or blob.get("format") != FORMAT:
            self.reject("written by another evalkit version")
            return None
        if blob.get("key") != key:
            self.reject("made with another configuration or seed")
            return None
        return blob["state"]

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
            self.path.unlink(missing_ok=True)
