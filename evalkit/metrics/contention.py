"""Was the machine shared while a job was timed? Timings and FPS from a shared GPU (or a
busy host) are not measurements of the method, so the runner samples at each phase
boundary of a job and every ``every`` seconds during training (``during``), and the record says so.

* GPU: the compute processes NVML lists on the job's GPU (found by UUID, so
  ``CUDA_VISIBLE_DEVICES`` remapping does not matter). Inside a container NVML reports host PIDs,
  which ours does not match, so the count is used: a process holding a CUDA context is one of
  them, the rest are others, less the job's own helper processes (``register_helper``: e.g. a
  child compiling kernels while training runs). Without NVML (``nvidia-ml-py`` not installed) the
  GPU is "unknown".
* Other evalkit jobs (``other_evalkit_jobs``, Linux): processes running ``evalkit run`` other
  than this one and its children. Any of them means the times are contended (CPU or GPU job).
* Host, CPU jobs: a CPU job keeps its own torch threads busy, so the host is busy when the load
  average exceeds those threads (at most the CPU count) by more than half the CPUs.
* Host (GPU jobs): the 1-minute load average against the CPU count (Linux / macOS); a GPU job
  itself keeps about one core busy. Busy means more than half the CPUs, a judgement rather than a
  calibrated limit: torch's CPU work (entropy coding, decoding) uses one thread per core by
  default, so it competes with anything else on the host (an observation: results/MEASUREMENTS.md).
  The load average
  includes the job's own CPU work, so a long CPU phase of its own can flag it; the torch thread
  count is recorded with the samples.
"""
from __future__ import annotations

import functools
import os
import threading
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Callable, Iterator

import torch


_HELPERS: set = set()  # the job's own child processes that may hold a CUDA context


def register_helper(proc) -> None:
    """Count ``proc`` (a ``subprocess.Popen``) as the job's own, not as another job, while it runs."""
    _HELPERS.add(proc)


def unregister_helper(proc) -> None:
    _HELPERS.discard(proc)


def running_helpers() -> int:
    return sum(1 for p in list(_HELPERS) if p.poll() is None)


@functools.lru_cache(maxsize=None)
def _gpu_identity(device: torch.device) -> tuple[str, str]:
    """(UUID, PCI bus id) of a CUDA device, read once (by the job's first sample, in the runner's
    thread): the sampling thread of ``during`` then makes no CUDA call while training may be
    capturing CUDA graphs (4DGS-CC's rate terms)."""
    props = torch.cuda.get_device_properties(device)
    return (f"GPU-{props.uuid}",
            f"{props.pci_domain_id:08x}:{props.pci_bus_id:02x}:{props.pci_device_id:02x}.0")


def gpu_compute_processes(device: torch.device) -> int | None:
    """Compute processes on ``device``'s GPU (ours included), or None when NVML cannot say."""
    if device.type != "cuda":
        return None
    try:
        import pynvml
        uuid, pci = _gpu_identity(device)
        pynvml.nvmlInit()
        try:
            try:
                handle = pynvml.nvmlDeviceGetHandleByUUID(uuid)
            except pynvml.NVMLError:  # e.g. a MIG slice: find the board by its PCI address
                handle = pynvml.nvmlDeviceGetHandleByPciBusId(pci)
            return len(pynvml.nvmlDeviceGetComputeRunningProcesses(handle))
        finally:
            pynvml.nvmlShutdown()
    except Exception:  # no NVML library, no GPU, no permission, an old driver: unknown, not zero
        return None


IGNORE_HOST_ENV = "EVALKIT_IGNORE_HOST_LOAD"  # "1": host load and other evalkit runs are not contention (tests)


def _parent(proc: str, pid: int) -> int:
    with open(f"{proc}/{pid}/stat", "rb") as fh:
        return int(fh.read().decode("utf-8", "replace").rsplit(")", 1)[1].split()[1])


def _ancestors(proc: str, pid: int) -> set[int]:
    out: set[int] = set()
    try:
        while pid > 1 and pid not in out:
            pid = _parent(proc, pid)
            out.add(pid)
    except (OSError, ValueError, IndexError):
        pass
    return out


def other_evalkit_jobs() -> int | None:
    """Processes running ``evalkit ... run`` other than this one, its children and its ancestors
    (a sweep worker's own supervisor is not another job) (Linux ``/proc``; None elsewhere)."""
    if os.environ.get(IGNORE_HOST_ENV) == "1":
        return 0
    proc = "/proc"
    if not os.path.isdir(proc):
        return None
    me = os.getpid()
    ancestors = _ancestors(proc, me)
    n = 0
    for pid in os.listdir(proc):
        if not pid.isdigit() or int(pid) == me:
            continue
        try:
            with open(f"{proc}/{pid}/cmdline", "rb") as fh:
                args = fh.read().decode("utf-8", "replace").split("\0")
            ppid = _parent(proc, int(pid))
        except (OSError, ValueError, IndexError):
            continue
        if ppid == me or int(pid) in ancestors or not args or not (os.path.basename(args[0]).startswith("python")
                                          or args[0].endswith("evalkit")):
            continue  # our children; wrappers such as `timeout` (their python child counts)
        tool = [i for i, a in enumerate(args) if a.endswith("evalkit") or a.endswith("evalkit.cli")
                or a.endswith("/evalkit")]
        if tool and "run" in args[tool[0] + 1:]:
            n += 1
    return n


def host_load() -> float | None:
    if os.environ.get(IGNORE_HOST_ENV) == "1":
        return None
    try:
        return os.getloadavg()[0]
    except (OSError, AttributeError):
        return None


@dataclass
class ContentionWatch:
    """Samples taken at a job's phase boundaries and during training; ``summary`` goes into
    ``record.env``."""

    device: torch.device
    count_gpu: Callable[[torch.device], int | None] | None = None  # None: gpu_compute_processes
    load: Callable[[], float | None] | None = None  # None: host_load
    cpus: int = field(default_factory=lambda: os.cpu_count() or 1)
    peers: Callable[[], int | None] | None = None  # None: other_evalkit_jobs
    samples: list[tuple[str, int | None, float | None]] = field(default_factory=list)
    peer_samples: list[tuple[str, int]] = field(default_factory=list)  # (phase, other evalkit jobs) when > 0

    def _read(self) -> tuple[int | None, float | None]:
        n = (self.count_gpu or gpu_compute_processes)(self.device)
        if n is not None:
            ours = 1 if self.device.type == "cuda" and torch.cuda.is_initialized() else 0
            # a helper that has not created its context yet hides another process for a moment
            n = max(0, n - ours - running_helpers())
        return n, (self.load or host_load)()

    def _peers(self) -> int:
        return (self.peers or other_evalkit_jobs)() or 0

    def sample(self, phase: str) -> None:
        self.samples.append((phase, *self._read()))
        if (k := self._peers()):
            self.peer_samples.append((phase, k))

    @contextmanager
    def during(self, phase: str, every: float = 10.0) -> Iterator[None]:
        """Sample every ``every`` seconds in a background thread while the block runs (a long
        phase: another job may come and go between its boundaries); one entry with the maxima."""
        stop, seen = threading.Event(), []

        def loop() -> None:
            while not stop.wait(every):
                seen.append(self._read())
                if (k := self._peers()):
                    self.peer_samples.append((phase, k))

        thread = threading.Thread(target=loop, name="evalkit-contention", daemon=True)
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join(timeout=every + 5.0)
            if seen:
                ns = [n for n, _ in seen if n is not None]
                xs = [x for _, x in seen if x is not None]
                self.samples.append((f"{phase} (max of {len(seen)})", max(ns) if ns else None,
                                     max(xs) if xs else None))

    def summary(self) -> dict:
        others = [n for _, n, _ in self.samples if n is not None]
        loads = [x for _, _, x in self.samples if x is not None]
        return {"contended": self.contended, "gpu_other_processes_max": max(others) if others else None,
                "host_load1_max": round(max(loads), 2) if loads else None, "cpus": self.cpus,
                "torch_threads": torch.get_num_threads(),
                "other_evalkit_jobs_max": max((k for _, k in self.peer_samples), default=0),
                "samples": [{"phase": p, "gpu_other_processes": n, "host_load1": x} for p, n, x in self.samples]}

    def notes(self) -> list[str]:
        """What a reader of the record's times must know (empty when nothing was seen)."""
        out = []
        shared = [(p, n) for p, n, _ in self.samples if n]
        if shared:
            where = ", ".join(f"{p}: {n}" for p, n in shared)
            out.append(f"the GPU was shared: other compute processes on it ({where}); train, encode, "
                       "decode and FPS times are contended, not measurements of the method")
        if self.peer_samples:  # one entry per phase (a long phase samples every few seconds)
            by_phase: dict[str, list[int]] = {}
            for p, k in self.peer_samples:
                by_phase.setdefault(p, []).append(k)
            where = ", ".join(f"{p}: {ks[0]}" if len(ks) == 1 else f"{p} (seen in {len(ks)} samples): up to {max(ks)}"
                              for p, ks in by_phase.items())
            out.append(f"other evalkit jobs ran on this host ({where}); times are contended")
        # A CPU job loads its own torch threads' cores: only the load beyond them counts
        own = 0 if self.device.type == "cuda" else min(torch.get_num_threads(), self.cpus)
        busy = [(p, x) for p, _, x in self.samples if x is not None and x - own > self.cpus / 2]
        if busy:
            where = ", ".join(f"{p}: {x:.1f}" for p, x in busy)
            beyond = "" if not own else f" beyond the job's own {own} thread(s)"
            out.append(f"the host was busy: 1-minute load{beyond} above half its {self.cpus} CPUs ({where}); "
                       "times may be contended")
        return out

    @property
    def contended(self) -> bool:
        return bool(self.notes())
