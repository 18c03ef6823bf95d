"""Crash isolation: a worker's jobs run in a child process, so the sweep survives its native death.

``supervise`` starts ``python -m evalkit.sweep.worker`` on a list of jobs (in order: one scene's
rate points follow each other in one child, so they share its loaded scene and
``TrainContext.cache``) and follows its events. When the child dies by a signal or exit code
while it holds a job (a segfault, an out-of-memory kill, a CUDA fault that aborts), the supervisor
writes that job's failed record, naming the signal and quoting the tail of the job's log and of
the worker's own log (``faulthandler``'s stack dump lands there), releases its claim, and starts a
new child on the jobs left. The child's stdout and stderr go to
``<results>/.sweep/workers/<worker>.log``.
"""
from __future__ import annotations

import json
import os
import pickle
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Callable

from evalkit.results import Record, collect_env, read_record, record_path, write_record
from evalkit.sweep.claims import job_claim_path, read_claim
from evalkit.sweep.worker import WorkerSpec

LOG_TAIL_LINES = 30


def describe_exit(rc: int) -> str:
    """'killed by signal SIGSEGV (Segmentation fault)' / 'exited with code 3'."""
    if rc < 0:
        try:
            sig = signal.Signals(-rc)
            return f"killed by signal {sig.name} ({signal.strsignal(sig) or sig.name})"
        except ValueError:
            return f"killed by signal {-rc}"
    if rc == 137:  # a shell or container runtime reporting SIGKILL (e.g. the OOM killer)
        return "exited with code 137 (SIGKILL: out of memory?)"
    return f"exited with code {rc}"


def tail(path: Path, lines: int = LOG_TAIL_LINES) -> str:
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""
    return "\n".join(text.rstrip("\n").splitlines()[-lines:])


def worker_log_path(out: Path, worker: str) -> Path:
    return Path(out) / ".sweep" / "workers" / f"{worker}.log"


def record_crash(job, opts, worker: str, why: str, worker_log: Path, started: float,
                 executor: dict | None = None) -> Record | None:
    """The failed record of a job whose worker process died; None when the job's record was
    written after it started (it died after the job, e.g. while releasing its claim)."""
    rec_path = record_path(opts.out, job.dataset, job.scene, job.method, job.rate.name)
    try:
        if rec_path.is_file() and rec_path.stat().st_mtime >= started and read_record(rec_path).status == "ok":
            return None
    except Exception:
        pass
    job_log = rec_path.with_suffix(".log")
    parts = [f"worker process {worker} {why} while running this job"]
    if t := tail(job_log):
        parts.append(f"--- last lines of {job_log.name} ---\n{t}")
    if t := tail(worker_log, 15):
        parts.append(f"--- last lines of the worker's log {worker_log} ---\n{t}")
    env = collect_env()
    if executor:
        env["executor"] = {**env.get("executor", {}), **executor}
    rec = Record(method=job.method, dataset=job.dataset, scene=job.scene, rate=job.rate.name, status="failed",
                 error="\n".join(parts), rate_params=dict(job.rate.params), seed=opts.seed, env=env,
                 notes=[f"the worker process {why}; the sweep went on"])
    write_record(rec, rec_path)
    try:
        with open(job_log, "a", encoding="utf-8") as fh:
            fh.write(f"worker process {worker} {why}\n")
    except OSError:
        pass
    return rec


class Supervisor:
    """Runs a worker child over ``jobs`` until every job was tried (restarting after a crash)."""

    def __init__(self, jobs: list, opts, *, sweep: str, worker: str, env: dict[str, str] | None = None,
                 on_event: Callable[[str, dict], None] = lambda worker, ev: None,
                 plugins: list[str] | None = None, executor: dict | None = None) -> None:
        self.jobs, self.opts, self.sweep, self.worker = list(jobs), opts, sweep, worker
        self.env = dict(env or {})
        self.on_event = on_event
        self.plugins = list(plugins or [])
        self.executor = executor
        self.proc: subprocess.Popen | None = None
        self.stopping = threading.Event()
        self.done = threading.Event()  # set when run() returns
        # the child stopped on a Ctrl-C / SIGTERM of its own (exit 130) that this supervisor did not send
        self.interrupted = False
        self.outcomes: dict[str, tuple[str, str | None]] = {}  # label -> (status, error)

    def stop(self) -> None:
        """Ctrl-C: ask the child to stop (SIGINT: the job in flight is abandoned, its claim released,
        no record written) and start no other."""
        self.stopping.set()
        proc = self.proc
        if proc is not None and proc.poll() is None:
            try:
                proc.send_signal(signal.SIGINT)
            except ProcessLookupError:
                pass

    def kill(self) -> None:
        proc = self.proc
        if proc is not None and proc.poll() is None:
            proc.kill()

    def run(self) -> dict[str, tuple[str, str | None]]:
        try:
            return self._run()
        finally:
            self.done.set()

    def _run(self) -> dict[str, tuple[str, str | None]]:
        by_label = {j.label: j for j in self.jobs}
        log_path = worker_log_path(self.opts.out, self.worker)
        log_path.parent.mkdir(parents=True, exist_ok=True)
        while not self.stopping.is_set():
            pending = [j for j in self.jobs if j.label not in self.outcomes]
            if not pending:
                break
            before = len(self.outcomes)
            rc, current, started = self._run_child(pending, log_path)
            if rc == 130 and not self.stopping.is_set():
                self.interrupted = True
            if rc == 0 or self.stopping.is_set() or rc == 130:
                break
            if current is None and len(self.outcomes) > before:
                continue  # died between two jobs after finishing some: a new child takes the rest
            if current is None:  # died before finishing any job (e.g. at start-up): do not loop on it
                err = f"worker process {self.worker} {describe_exit(rc)} outside a job; see {log_path}"
                for j in pending:
                    if j.label not in self.outcomes:
                        self.outcomes[j.label] = ("failed", err)
                        self.on_event(self.worker, {"kind": "finished", "label": j.label, "status": "failed",
                                                    "error": err, "summary": None})
                break
            job = by_label[current]
            why = describe_exit(rc)
            rec = record_crash(job, self.opts, self.worker, why, log_path, started, self.executor)
            self._release_dead_claim(job)
            status, error = ("failed", rec.error) if rec is not None else ("ok", None)
            self.outcomes[current] = (status, error)
            self.on_event(self.worker, {"kind": "finished", "label": current, "status": status, "error": error,
                                        "summary": None})
        return self.outcomes

    def _release_dead_claim(self, job) -> None:
        """The dead child's claims: its job's, and any shared stage of the scene it was computing."""
        shared = Path(self.opts.out) / job.dataset / job.scene / "_shared"
        for path in [job_claim_path(self.opts.out, job), *shared.glob("*.claim")]:
            info = read_claim(path)
            if info is not None and self.proc is not None and info.pid == self.proc.pid:
                path.unlink(missing_ok=True)

    def _run_child(self, pending: list, log_path: Path) -> tuple[int, str | None, float]:
        spec = WorkerSpec(jobs=pending, opts=self.opts, sweep=self.sweep, worker=self.worker,
                          exclude=set(self.outcomes), plugins=self.plugins)
        fd, spec_path = tempfile.mkstemp(prefix="evalkit-worker-", suffix=".pkl")
        with os.fdopen(fd, "wb") as fh:
            pickle.dump(spec, fh)
        r, w = os.pipe()
        env = {**os.environ, **self.env}
        current, started = None, 0.0
        try:
            with open(log_path, "ab") as log:
                self.proc = subprocess.Popen([sys.executable, "-m", "evalkit.sweep.worker", spec_path, str(w)],
                                             pass_fds=(w,), env=env, stdout=log, stderr=subprocess.STDOUT,
                                             stdin=subprocess.DEVNULL)
            os.close(w)
            if self.stopping.is_set():
                self.stop()
            with os.fdopen(r, "r", encoding="utf-8") as events:
                for line in events:
                    try:
                        ev = json.loads(line)
                    except ValueError:
                        continue
                    kind = ev.get("kind")
                    if kind == "started":
                        current, started = ev["label"], time.time() - 1.0
                    elif kind == "finished":
                        self.outcomes[ev["label"]] = (ev["status"], ev.get("error"))
                        current = None
                    self.on_event(self.worker, ev)
            rc = self.proc.wait()
        finally:
            os.unlink(spec_path)
        return rc, current, started
