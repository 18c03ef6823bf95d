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

import hashlib
import io
import json
import os
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
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


class ResumeError(RuntimeError):
    """A checkpoint of the right key whose state does not fit the model (the caller rejects it and
    starts over)."""


def rng_states() -> dict[str, Any]:
    """Every random stream training draws from (torch CPU and CUDA, Python, NumPy), on the host."""
    return {"torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
            "python": random.getstate(), "numpy": np.random.get_state()}


def set_rng_states(states: dict[str, Any]) -> None:
    """Put back what ``rng_states`` returned."""
    # (RNG states live on the CPU, also when a store loaded the rest onto the GPU)
    torch.set_rng_state(states["torch"].cpu())
    if states["cuda"] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in states["cuda"]])
    random.setstate(states["python"])
    np.random.set_state(states["numpy"])


def module_state(module: torch.nn.Module) -> dict[str, Any]:
    """``module.state_dict()`` copied to the host (host-side flags: ``FourDGSModel.training_flags``)."""
    return {k: (v.detach().cpu().clone() if isinstance(v, torch.Tensor) else v)
            for k, v in module.state_dict().items()}


def load_module_state(module: torch.nn.Module, state: dict[str, Any]) -> None:
    """Load ``state`` into ``module`` whose tensors may have other sizes (Gaussians densified,
    pruned or re-assigned since it was built): a parameter or buffer of another shape is replaced
    by one of the saved shape first (parameters keep their ``requires_grad``), then everything is
    loaded strictly. Raises ``ResumeError`` if the state does not fit."""
    try:
        for name, saved in state.items():
            if not isinstance(saved, torch.Tensor):
                continue  # an extra state
            owner_name, _, attr = name.rpartition(".")
            owner = module.get_submodule(owner_name)
            current = getattr(owner, attr)
            if isinstance(current, torch.Tensor) and current.shape == saved.shape:
                continue
            dev = current.device if isinstance(current, torch.Tensor) else saved.device
            fresh = torch.empty(saved.shape, dtype=saved.dtype, device=dev)
            if isinstance(current, torch.nn.Parameter):
                owner.register_parameter(attr, torch.nn.Parameter(fresh, requires_grad=current.requires_grad))
            else:
                owner.register_buffer(attr, fresh)
        module.load_state_dict(state, strict=True)
    except (AttributeError, KeyError, RuntimeError, TypeError) as exc:
        raise ResumeError(f"the saved model does not fit this one ({type(exc).__name__}: {exc})") from exc


def checkpoint_key(prefix: str, config: dict, seed: int, leave_out: frozenset[str] = frozenset()) -> str:
    """``prefix/digest``: a digest of ``config`` without the keys ``leave_out`` (a method's speed
    options: the same computation, e.g. replayed from CUDA graphs), and of the seed."""
    kept = {k: v for k, v in config.items() if k not in leave_out}
    digest = hashlib.sha1(json.dumps([kept, seed], sort_keys=True, default=str).encode()).hexdigest()[:16]
    return f"{prefix}/{digest}"


def resumed_info(state: dict | None, before_s: float = 0.0) -> dict | None:
    """``TrainedModel.resumed`` for a run that continued from the 4DGS trainer's checkpoint
    ``state`` (``before_s``: training the checkpoint does not count, e.g. an earlier call's stage)."""
    if state is None:
        return None
    earlier = before_s + sum(st["seconds"] for st in state["stats"]) + float(state["seconds"])
    return {"from_step": int(state["global_step"]), "earlier_train_s": earlier}
