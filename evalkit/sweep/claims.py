"""One job, one worker: claim files beside the records.

Before a worker runs a job it creates ``<results>/<dataset>/<scene>/<method>/<rate>.claim`` with an
exclusive create (``O_CREAT | O_EXCL``, atomic on local filesystems and NFSv3+), holding JSON with
the host, pid, start time, the sweep and the job's time limit. Another worker that finds the file
skips the job. A claim is *stale* when its process is dead (same host only: a pid means nothing on
another machine) or when it is older than its time limit; a stale claim is taken over under a
short-lived takeover lock, so two workers cannot both take it over. The owner removes the claim
after the job's record is written (records and bitstreams are written atomically anyway).
"""
from __future__ import annotations

import json
import os
import socket
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path

from evalkit.progress_lines import duration
from evalkit.results import record_path

TAKEOVER_LOCK_STALE_S = 60.0  # a takeover lock older than this was left by a killed process


@dataclass
class ClaimInfo:
    host: str
    pid: int
    started: float  # epoch seconds
    time_limit_s: float
    token: str
    sweep: str = ""
    worker: str = ""

    @property
    def age_s(self) -> float:
        return max(0.0, time.time() - self.started)

    def describe(self) -> str:
        return (f"{self.host} pid {self.pid}" + (f" ({self.worker})" if self.worker else "")
                + f" for {duration(self.age_s)}")


def claim_path(out: str | Path, dataset: str, scene: str, method: str, rate: str) -> Path:
    return record_path(out, dataset, scene, method, rate).with_suffix(".claim")


def job_claim_path(out: str | Path, job) -> Path:
    return claim_path(out, job.dataset, job.scene, job.method, job.rate.name)


def read_claim(path: Path) -> ClaimInfo | None:
    """The claim at ``path``; None when there is none. An unreadable claim (a writer killed between
    its create and its write) reads as host "?" started at the file's mtime: stale after its
    default time limit, or at once when older than a minute and empty."""
    try:
        text = path.read_text(encoding="utf-8")
        st = path.stat()
    except (FileNotFoundError, NotADirectoryError):
        return None
    try:
        d = json.loads(text)
        return ClaimInfo(**{k: d[k] for k in ("host", "pid", "started", "time_limit_s", "token")},
                         sweep=d.get("sweep", ""), worker=d.get("worker", ""))
    except (ValueError, KeyError, TypeError):
        return ClaimInfo(host="?", pid=-1, started=st.st_mtime, time_limit_s=TAKEOVER_LOCK_STALE_S, token="")


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    except OSError:
        return False
    return True


def stale_reason(info: ClaimInfo, host: str | None = None) -> str | None:
    """Why this claim no longer holds its job, or None while it does."""
    host = host or socket.gethostname()
    if info.host == host and info.pid > 0 and not pid_alive(info.pid):
        return f"its process ({info.host} pid {info.pid}) is gone"
    if info.age_s > info.time_limit_s:
        return f"it is older than its time limit ({duration(info.age_s)} > {duration(info.time_limit_s)})"
    return None


@dataclass
class Claim:
    """A claim this process holds. ``release()`` removes the file if it is still ours."""

    path: Path
    info: ClaimInfo
    took_over: str | None = None  # why the previous claim was stale, when this one replaced it

    def release(self) -> None:
        current = read_claim(self.path)
        if current is not None and current.token == self.info.token:
            try:
                self.path.unlink()
            except FileNotFoundError:
                pass


def _create(path: Path, info: ClaimInfo) -> bool:
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        return False
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(json.dumps(asdict(info)) + "\n")
        fh.flush()
        os.fsync(fh.fileno())
    return True


def try_claim(path: Path, *, time_limit_s: float, sweep: str = "",
              worker: str = "") -> tuple[Claim | None, ClaimInfo | None]:
    """Claim ``path``. Returns (claim, None) on success, (None, holder) when a live claim holds it.
    A stale claim is taken over (``claim.took_over`` says why)."""
    info = ClaimInfo(host=socket.gethostname(), pid=os.getpid(), started=time.time(),
                     time_limit_s=float(time_limit_s), token=uuid.uuid4().hex, sweep=sweep, worker=worker)
    for _ in range(5):
        if _create(path, info):
            return Claim(path, info), None
        holder = read_claim(path)
        if holder is None:  # released between our create and our read: try again
            continue
        why = stale_reason(holder)
        if why is None:
            return None, holder
        claim = _take_over(path, holder, info, why)
        if claim is not None:
            return claim, None
        time.sleep(0.05)
    holder = read_claim(path)
    return None, holder


def _take_over(path: Path, stale: ClaimInfo, info: ClaimInfo, why: str) -> Claim | None:
    """Replace the stale claim ``stale`` by ours, under ``<claim>.takeover`` (exclusive create), so
    that of two workers finding the same stale claim only one replaces it."""
    lock = path.with_suffix(path.suffix + ".takeover")
    lock_info = ClaimInfo(host=info.host, pid=info.pid, started=time.time(),
                          time_limit_s=TAKEOVER_LOCK_STALE_S, token=info.token)
    if not _create(lock, lock_info):
        held = read_claim(lock)
        if held is not None and stale_reason(held) is not None:
            try:  # a takeover lock left by a killed process; the next attempt takes it
                lock.unlink()
            except FileNotFoundError:
                pass
        return None
    try:
        current = read_claim(path)
        if current is not None and current.token != stale.token:
            return None  # someone replaced it meanwhile (a takeover that finished before ours)
        try:
            path.unlink()
        except FileNotFoundError:
            pass
        if not _create(path, info):
            return None
        return Claim(path, info, took_over=why)
    finally:
        try:
            lock.unlink()
        except FileNotFoundError:
            pass


def live_claims(out: str | Path) -> list[tuple[Path, ClaimInfo]]:
    """Every job's claim file under a results folder, with its content (shared stages' claims, in
    ``<dataset>/<scene>/_shared/``, are not jobs)."""
    found = []
    for p in sorted(Path(out).glob("*/*/*/*.claim")):
        if p.parent.name == "_shared":
            continue
        info = read_claim(p)
        if info is not None:
            found.append((p, info))
    return found
