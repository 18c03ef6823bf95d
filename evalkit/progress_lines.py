"""Progress as plain lines, for output that is not a terminal (redirected to a file, a batch job's
log): rich draws no live bar there, so a long job would print nothing between its start and its end.

One line when a job starts and at each phase (training, encoding, ...), and a training line at most
every ``every_fraction`` of the iterations or every ``every_s`` seconds, whichever comes first.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable


def duration(seconds: float) -> str:
    """'42s', '4m05s', '2h07m': a duration for people to read (progress lines, claim ages)."""
    s = int(seconds)
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else (f"{s // 60}m{s % 60:02d}s" if s >= 60 else f"{s}s")


@dataclass
class ProgressLines:
    """Lines for one or more sources (``key``: the run itself, or a sweep's worker)."""
    emit: Callable[[str], None]
    every_s: float = 60.0
    every_fraction: float = 0.1
    clock: Callable[[], float] = time.monotonic
    _labels: dict[str, str] = field(default_factory=dict)
    _started: dict[str, float] = field(default_factory=dict)
    _last: dict[str, tuple[float, int]] = field(default_factory=dict)  # key -> (time, fractions done) at its last line

    def started(self, key: str, label: str, position: str = "") -> None:
        now = self.clock()
        self._labels[key], self._started[key], self._last[key] = label, now, (now, 0)
        self.emit(f"{position}{label}: started")

    def phase(self, key: str, msg: str) -> None:
        self.emit(f"{self._prefix(key)}{msg}")

    def iteration(self, key: str, it: int, total: int | None, info: str = "") -> None:
        now = self.clock()
        last_t, last_mark = self._last.get(key, (now, 0))
        frac = it / total if total else 0.0
        mark = int(frac / self.every_fraction + 1e-9)  # how many whole fractions are done
        if not (mark > last_mark or now - last_t >= self.every_s):
            return
        self._last[key] = (now, mark)
        of = f"/{total} ({100.0 * frac:.0f} %)" if total else ""
        elapsed = f", {duration(now - self._started[key])} into the job" if key in self._started else ""
        self.emit(f"{self._prefix(key)}iteration {it}{of}{elapsed}" + (f"  {info}" if info else ""))

    def _prefix(self, key: str) -> str:
        label = self._labels.get(key)
        return f"{label}: " if label else ""
