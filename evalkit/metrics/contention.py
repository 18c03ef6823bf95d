"""Was the machine shared while a job was timed? Timings and FPS from a shared GPU (or a
busy host) are not measurements of the method, so the runner samples at each phase
boundary of a job and every ``every`` seconds during training (``during``), and the record says so.

* GPU: the compute processes NVML lists on the job's GPU (found by UUID, so
  ``CUDA_VISIBLE_DEVICES`` remapping does not matter). Inside a container NVML reports host PIDs,
  which ours does not match, so the count is used: a process holding a CUDA context is one of
  them, the rest are others, less the job's own helper processes (``register_helper``: e.g. a
  child compiling kernels while training runs). Without NVML (``nvidia-ml-py`` not installed) the
  GPU is "unknown".
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


def host_load() -> float | None:
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
    samples: list[tuple[str, int | None, float | None]] = field(default_factory=list)

    def _read(self) -> tuple[int | None, float | None]:
        n = (self.count_gpu or gpu_compute_processes)(self.device)
        if n is not None:
            ours = 1 if self.device.type == "cuda" and torch.cuda.is_initialized() else 0
            # a helper that has not created its context yet hides another process for a moment
            n = max(0, n - ours - running_helpers())
        return n, (self.load or host_load)()

    def sample(self, phase: str) -> None:
        self.samples.append((phase, *self._read()))

    @contextmanager
    def during(self, phase: str, every: float = 10.0) -> Iterator[None]:
        """Sample every ``every`` seconds in a background thread while the block runs (a long
        phase: another job may come and go between its boundaries); one entry with the maxima."""
        stop, seen = threading.Event(), []

        def loop() -> None:
            while not stop.wait(every):
                seen.append(self._read())

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
                "samples": [{"phase": p, "gpu_other_processes": n, "host_load1": x} for p, n, x in self.samples]}

    def notes(self) -> list[str]:
        """What a reader of the record's times must know (empty when nothing was seen)."""
        out = []
        shared = [(p, n) for p, n, _ in self.samples if n]
        if shared:
            where = ", ".join(f"{p}: {n}" for p, n in shared)
            out.append(f"the GPU was shared: other compute processes on it ({where}); train, encode, "
                       "decode and FPS times are contended, not measurements of the method")
        # A CPU job loads every core itself (and CPU times are labelled not comparable anyway)
        busy = [(p, x) for p, _, x in self.samples if x is not None and x > self.cpus / 2]
        if busy and self.device.type == "cuda":
            where = ", ".join(f"{p}: {x:.1f}" for p, x in busy)
            out.append(f"the host was busy: 1-minute load above half its {self.cpus} CPUs ({where}); "
                       "times may be contended")
        return out

    @property
    def contended(self) -> bool:
        return bool(self.notes())
