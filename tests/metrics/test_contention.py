"""Contention sampling: a job timed on a shared GPU (or a busy host, for GPU jobs) is
flagged in its record, and the report / speed benchmark do not present its times as measured."""
from __future__ import annotations

import pytest
import torch

from evalkit.metrics import contention
from evalkit.metrics.contention import ContentionWatch

REAL_OTHER_EVALKIT_JOBS = contention.other_evalkit_jobs  # before tests/conftest.py stubs it
from evalkit.report.tables import scene_table, summary_table
from evalkit.results import Record, records_to_frame

CUDA = torch.device("cuda")  # only a label here: the counters are fakes, nothing touches a GPU


def _watch(device, gpu_counts, loads, cpus=16) -> ContentionWatch:
    g, l = iter(gpu_counts), iter(loads)
    w = ContentionWatch(device, count_gpu=lambda d: next(g), load=lambda: next(l), cpus=cpus)
    for phase in ("start", "trained", "evaluated"):
        w.sample(phase)
    return w


def test_alone_on_the_gpu_gives_no_note() -> None:
    w = _watch(CUDA, [0, 0, 0], [1.0, 1.2, 0.9])
    assert w.notes() == [] and not w.contended
    s = w.summary()
    assert s["contended"] is False and s["gpu_other_processes_max"] == 0 and s["host_load1_max"] == 1.2
    assert [x["phase"] for x in s["samples"]] == ["start", "trained", "evaluated"]


def test_other_processes_on_the_gpu_are_named_per_phase() -> None:
    w = _watch(CUDA, [0, 1, 2], [1.0, 1.0, 1.0])
    (note,) = w.notes()
    assert "GPU was shared" in note and "trained: 1, evaluated: 2" in note and "contended" in note
    assert w.summary()["gpu_other_processes_max"] == 2 and w.contended


def test_busy_host_counts_beyond_a_cpu_jobs_own_threads(monkeypatch) -> None:
    """More than half the CPUs loaded counts (torch's CPU work runs one thread per core); for a
    CPU job, beyond its own torch threads."""
    monkeypatch.setattr(torch, "get_num_threads", lambda: 16)
    gpu = _watch(CUDA, [0, 0, 0], [3.0, 40.5, 8.5], cpus=16)
    (note,) = gpu.notes()
    assert "host was busy" in note and "above half its 16 CPUs (trained: 40.5, evaluated: 8.5)" in note
    assert not _watch(CUDA, [0, 0, 0], [3.0, 8.0, 7.9], cpus=16).contended  # half exactly: not busy
    cpu = _watch(torch.device("cpu"), [None, None, None], [3.0, 20.5, 24.0], cpus=16)
    assert cpu.notes() == []  # a CPU job loads its 16 threads' cores itself: 8 more is half
    cpu = _watch(torch.device("cpu"), [None, None, None], [3.0, 40.5, 20.0], cpus=16)
    assert "beyond the job's own 16 thread(s)" in cpu.notes()[0] and "trained: 40.5" in cpu.notes()[0]


def test_unknown_gpu_state_is_not_zero() -> None:
    s = _watch(CUDA, [None, None, None], [None, None, None]).summary()
    assert s["gpu_other_processes_max"] is None and s["host_load1_max"] is None and s["contended"] is False


def test_our_own_cuda_context_is_not_counted(monkeypatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: True)
    w = _watch(CUDA, [1, 2, 1], [0.0, 0.0, 0.0])  # NVML lists us too (by a host PID we cannot match)
    assert [n for _, n, _ in w.samples] == [0, 1, 0]


def _record(scene: str, fps: float, **kw) -> Record:
    return Record("m", "dnerf", scene, "high", status="ok", metrics={"psnr": 30.0},
                  size={"total_bytes": 1_000_000, "components": {}}, num_primitives=10,
                  fps={"fps": fps, "ms_per_frame": 1000 / fps, "gpu_name": "G"}, **kw)


def test_report_leaves_out_contended_fps() -> None:
    alone = _record("a", 500.0, env={"contention": {"contended": False}})
    shared = _record("b", 900.0, env={"contention": {"contended": True}})
    by_hand = _record("c", 800.0, env={"contention": {"contended": True, "annotated": "8 jobs at once"}},
                      notes=["8 jobs at once: times are contended"])
    assert not _record("d", 1.0, notes=["the word contended in a note decides nothing"]).timings_contended
    assert not alone.timings_contended and shared.timings_contended and by_hand.timings_contended
    df = records_to_frame([alone, shared, by_hand])
    spec = {"name": "D-NeRF", "scenes": ["a", "b", "c"]}
    fps_col = lambda t: [row[t.columns.index(next(c for c in t.columns if c.key == "fps"))] for row in t.rows]
    assert fps_col(scene_table(df, "dnerf", "a", spec)) == [500.0]
    tb = scene_table(df, "dnerf", "b", spec)
    assert fps_col(tb) == [None] and any("shared GPU" in f for f in tb.footnotes)
    only_alone = summary_table(df[df["scene"] == "a"], "dnerf", spec, None)
    assert fps_col(only_alone) == [500.0] and not any("shared GPU" in f for f in only_alone.footnotes)
    mixed = summary_table(df, "dnerf", spec, None)
    (fps,) = fps_col(mixed)
    assert fps != fps  # NaN: no mean over partly contended times


def test_nvml_lookup_by_uuid_then_pci_address(monkeypatch) -> None:
    """The job's GPU is found in NVML by its UUID (CUDA_VISIBLE_DEVICES does not matter), else by
    its PCI address; the count is NVML's compute-process list."""
    import sys
    import types

    class NVMLError(Exception):
        pass

    asked = []
    fake = types.SimpleNamespace(
        NVMLError=NVMLError, nvmlInit=lambda: None, nvmlShutdown=lambda: None,
        nvmlDeviceGetComputeRunningProcesses=lambda h: [object()] * {"by-uuid": 3, "by-pci": 2}[h])

    def by_uuid(u):
        asked.append(u)
        if not uuid_known:
            raise NVMLError("not found")
        return "by-uuid"

    def by_pci(bus):
        asked.append(bus)
        return "by-pci"

    fake.nvmlDeviceGetHandleByUUID, fake.nvmlDeviceGetHandleByPciBusId = by_uuid, by_pci
    props = types.SimpleNamespace(uuid="5f3c0c1e-aaaa-bbbb-cccc-0123456789ab", pci_domain_id=0,
                                  pci_bus_id=0x65, pci_device_id=0)
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda d: props)
    uuid_known = True
    assert contention.gpu_compute_processes(CUDA) == 3
    assert asked == ["GPU-5f3c0c1e-aaaa-bbbb-cccc-0123456789ab"]
    uuid_known, asked[:] = False, []
    assert contention.gpu_compute_processes(CUDA) == 2
    assert asked[1] == "00000000:65:00.0"
    # NVML present but unusable (no driver library): unknown, not zero; a CPU device never asks
    fake.nvmlInit = lambda: (_ for _ in ()).throw(NVMLError("library not found"))
    assert contention.gpu_compute_processes(CUDA) is None
    assert contention.gpu_compute_processes(torch.device("cpu")) is None


def test_a_process_that_comes_and_goes_during_training_is_seen() -> None:
    """Boundaries alone would miss it: the background sampler keeps the maximum of the phase."""
    import time
    counts = iter([0] + [0, 3, 0] + [0] * 1000)  # start, then the sampler: a job appears once
    w = ContentionWatch(CUDA, count_gpu=lambda d: next(counts), load=lambda: 1.0, cpus=16)
    w.sample("start")
    with w.during("training", every=0.01):
        time.sleep(0.3)
    w.sample("trained")
    phases = [p for p, _, _ in w.samples]
    assert phases[0] == "start" and phases[1].startswith("training (max of ") and phases[2] == "trained"
    assert w.samples[1][1] == 3 and w.samples[2][1] == 0
    assert w.contended and "training (max of" in w.notes()[0]


def test_cpu_jobs_are_flagged_for_a_busy_host_and_other_evalkit_jobs(monkeypatch):
    """CPU jobs: the load beyond the job's own threads counts; other evalkit runs always do."""
    import torch as _torch

    cpu = _torch.device("cpu")
    monkeypatch.setattr(_torch, "get_num_threads", lambda: 2)
    quiet = ContentionWatch(cpu, count_gpu=lambda d: None, load=lambda: 2.2, cpus=2, peers=lambda: 0)
    quiet.sample("start")
    assert quiet.notes() == [] and not quiet.contended  # its own two threads
    busy = ContentionWatch(cpu, count_gpu=lambda d: None, load=lambda: 4.5, cpus=2, peers=lambda: 0)
    busy.sample("start")
    assert busy.contended and "beyond the job's own 2 thread(s)" in busy.notes()[0]
    shared = ContentionWatch(cpu, count_gpu=lambda d: None, load=lambda: 0.5, cpus=2, peers=lambda: 1)
    shared.sample("start")
    assert shared.contended and "other evalkit jobs" in shared.notes()[0]
    assert shared.summary()["other_evalkit_jobs_max"] == 1


def test_other_evalkit_jobs_are_noted_once_per_phase():
    """A long phase samples its peers every few seconds: the note names the phase once, with the
    number of samples that saw other jobs and the most seen (a 20-minute training phase once
    wrote "training: 1" 120 times)."""
    cpu = torch.device("cpu")
    w = ContentionWatch(cpu, count_gpu=lambda d: None, load=lambda: 0.0, cpus=64, peers=lambda: 1)
    w.sample("start")
    w.peer_samples += [("training", 1), ("training", 2), ("training", 1)]
    w.sample("trained")
    note = [n for n in w.notes() if "other evalkit jobs" in n]
    assert note == ["other evalkit jobs ran on this host (start: 1, training (seen in 3 samples): up to 2, "
                    "trained: 1); times are contended"]


def test_other_evalkit_jobs_counts_a_running_evalkit_process():
    import subprocess
    import sys

    from evalkit.metrics import contention

    real = REAL_OTHER_EVALKIT_JOBS
    base = real()
    if base is None:
        pytest.skip("no /proc")
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(5)", "evalkit", "run"],
                             start_new_session=True)
    try:
        # our own child is not another job; a process started by someone else would be
        assert real() == base
    finally:
        child.kill()
        child.wait()


def test_a_sweep_workers_own_supervisor_is_not_another_job():
    """A job's process whose parent is ``python -m evalkit.cli run`` (the sweep's supervisor) counts no
    other evalkit job: its ancestors are not contention."""
    import subprocess
    import sys

    child = ("import os; os.environ.pop('EVALKIT_IGNORE_HOST_LOAD', None); "
             "from evalkit.metrics import contention as c; print(c.other_evalkit_jobs())")
    parent = f"import subprocess, sys; print(subprocess.run([sys.executable, '-c', {child!r}], capture_output=True, text=True).stdout.strip())"
    env = {k: v for k, v in __import__("os").environ.items() if k != "EVALKIT_IGNORE_HOST_LOAD"}
    # evalkit jobs that really run on this host (a developer's, beside the suite) count for both
    alone = subprocess.run([sys.executable, "-c", child], capture_output=True, text=True, env=env)
    out = subprocess.run([sys.executable, "-c", parent, "-m", "evalkit.cli", "run"], capture_output=True, text=True,
                         env=env)
    assert out.stdout.strip() == alone.stdout.strip() != "", out.stdout + out.stderr + alone.stderr
