"""Kernel compilation before the fine stage (``kernel_warmup``: in a child process while the coarse
stage trains) and the unspecialised point count of the HexPlane kernels."""
from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest
import torch

from evalkit.models.fourdgs.config import FourDGSConfig
from evalkit.models.fourdgs.kernel_warmup import PARTS, BackgroundCompile, ParallelCompile, compile_kernels, main
from evalkit.metrics.contention import ContentionWatch

TINY = dict(feature_dim=8, resolution=[16, 16, 16, 8], multires=[1, 2], net_width=32)


def said(line: str, *facts: str) -> bool:
    """The log line carries these facts (its wording is free)."""
    return all(f in line for f in facts)


def test_nothing_to_compile_off_cuda():
    assert compile_kernels(FourDGSConfig(**TINY), torch.device("cpu")) == (0.0, [])


def test_a_kernel_falling_back_is_logged(monkeypatch):
    from evalkit.models.fourdgs import kernel_warmup

    monkeypatch.setattr(kernel_warmup, "compile_kernels", lambda cfg, device, **kw: (1.0, ["HexPlane lookup: boom"]))
    lines: list[str] = []
    kernel_warmup.ParallelCompile(FourDGSConfig(**TINY), torch.device("cpu")).finish(lines.append)
    assert len(lines) == 1 and said(lines[0], "HexPlane lookup", "boom")


def _child(code: str, timeout: float = 60.0) -> BackgroundCompile:
    """A ``BackgroundCompile`` whose child runs ``code`` (no GPU needed to test the plumbing)."""
    bc = BackgroundCompile(FourDGSConfig(**TINY), torch.device("cpu"), timeout=timeout)
    bc._start([sys.executable, "-c", code])
    return bc


def _group(*children: BackgroundCompile) -> ParallelCompile:
    """A ``ParallelCompile`` of the given children (its own start none off CUDA)."""
    group = ParallelCompile(FourDGSConfig(**TINY), torch.device("cpu"))
    assert all(c.proc is None for c in group.children)  # nothing to compile off CUDA
    group.children = list(children)
    return group


def test_a_failing_child_is_logged_with_its_error_and_the_kernels_compile_here(monkeypatch):
    from evalkit.models.fourdgs import kernel_warmup

    here: list[str] = []
    monkeypatch.setattr(kernel_warmup, "compile_kernels",
                        lambda cfg, device, **kw: (here.append("compiled"), (0.0, []))[1])
    bc = _child("import sys; sys.stderr.write('ptxas exploded'); sys.exit(3)")
    lines: list[str] = []
    group = _group(bc)
    group.device = bc.device  # load the kernels here on CUDA, as training does
    group.finish(lines.append)
    assert len(lines) == 1 and said(lines[0], "3", "ptxas exploded")
    assert here == ["compiled"] and bc.proc is None


def test_a_hanging_child_is_killed_at_the_timeout():
    bc = _child("import time; time.sleep(60)", timeout=0.5)
    proc = bc.proc
    lines: list[str] = []
    bc.wait(lines.append)
    assert proc.poll() is not None and proc.returncode != 0 and bc.proc is None  # killed, not finished
    assert len(lines) == 1 and said(lines[0], "timed out")


def test_a_successful_child_is_waited_for_and_its_report_logged():
    bc = _child("import time; time.sleep(0.3); print('compiled in 0.3 s')")
    lines: list[str] = []
    bc.wait(lines.append)
    assert len(lines) == 1 and bc.proc is None
    assert said(lines[0], "compiled in 0.3 s")  # the child's own report is passed on


def test_a_running_child_is_not_counted_as_another_job_on_the_gpu(monkeypatch):
    """The contention watch subtracts the job's own helpers (they hold a CUDA context on a GPU
    job) while they run; a finished helper no longer hides another process."""
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: False)  # this process: no context
    bc = _child("import time; time.sleep(60)")
    try:
        watch = ContentionWatch(torch.device("cuda"), count_gpu=lambda d: 1, load=lambda: 0.0)
        watch.sample("child running")
        bc.close()
        watch.sample("child gone")
        assert [n for _, n, _ in watch.samples] == [0, 1]
    finally:
        bc.close()


def test_method_train_stops_the_child_when_training_fails(monkeypatch):
    """A job that fails in training leaves no compiler process behind."""
    from evalkit.methods import fourdgs
    from evalkit.methods.base import Budget, RatePoint, TrainContext

    method = fourdgs.FourDGS()
    method._kernels = bc = _child("import time; time.sleep(60)")
    proc = bc.proc

    def boom(*a, **k):
        raise RuntimeError("out of memory")

    monkeypatch.setattr(fourdgs, "train", boom)
    ctx = TrainContext(device=torch.device("cpu"), budget=Budget(), config={})
    with pytest.raises(RuntimeError, match="out of memory"):
        method.train(None, RatePoint("default"), ctx)
    assert proc.poll() is not None and method._kernels is None


def test_after_warm_up_the_first_optimiser_imports_nothing():
    """torch imports torch._dynamo (seconds) at the first optimiser's add_param_group: ``warm_up``
    (setup) pays it, so a job's first training step does not. A fresh interpreter, so nothing
    earlier in this test session has imported it already."""
    code = ("import sys, torch\n"
            "from evalkit.models.fourdgs.kernel_warmup import warm_up\n"
            "warm_up(torch.device('cpu'))\n"
            "before = set(sys.modules)\n"
            "torch.optim.Adam([torch.zeros(3, requires_grad=True)], lr=0.1)\n"
            "print(sorted(set(sys.modules) - before))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_no_child_for_shapes_this_process_has_compiled(monkeypatch):
    """A second job with the same plane shapes (4DGS-CC's next rate point, a scene with the same
    configuration) starts no child: loading the compiled kernels here takes milliseconds, a child
    seconds to start. Other shapes still get one."""
    from evalkit.models.fourdgs import kernel_warmup

    started: list[list[str]] = []
    monkeypatch.setattr(BackgroundCompile, "_start", lambda self, argv: started.append(argv))
    monkeypatch.setattr(kernel_warmup, "_COMPILED", {kernel_warmup.shapes_key(FourDGSConfig(**TINY))})
    bc = BackgroundCompile(FourDGSConfig(**TINY, time_smoothness_weight=0.5), torch.device("cuda:0"))
    assert bc.proc is None and started == []  # regulariser weights are not part of the shapes
    BackgroundCompile(FourDGSConfig(**{**TINY, "resolution": [16, 16, 16, 9]}), torch.device("cuda:0"))
    assert len(started) == 1 and started[0][-2:] == ["cuda:0", "all"]
    ParallelCompile(FourDGSConfig(**{**TINY, "resolution": [16, 16, 16, 10]}), torch.device("cuda:0"))
    assert [argv[-1] for argv in started[1:]] == list(PARTS)  # one child per group of kernels
    started.clear()
    group = ParallelCompile(FourDGSConfig(**TINY), torch.device("cuda:0"))
    assert all(c.proc is None for c in group.children) and started == []  # compiled shapes: no child


def test_a_failing_warm_up_stops_the_children(monkeypatch):
    from evalkit.models.fourdgs import kernel_warmup

    children: list[tuple] = []
    real_start = BackgroundCompile._start

    def start(self, argv):  # real children that would outlive the job
        real_start(self, [sys.executable, "-c", "import time; time.sleep(60)"])
        children.append((self, self.proc))

    monkeypatch.setattr(kernel_warmup, "_COMPILED", set())
    monkeypatch.setattr(kernel_warmup.BackgroundCompile, "_start", start)
    monkeypatch.setattr(kernel_warmup, "warm_up", lambda device: (_ for _ in ()).throw(RuntimeError("no GPU")))
    method = kernel_warmup.KernelsInBackground()
    with pytest.raises(RuntimeError, match="no GPU"):
        method.prepare_kernels(FourDGSConfig(**TINY), torch.device("cuda:0"))
    assert len(children) == len(PARTS)
    for bc, proc in children:
        assert bc.proc is None and proc.poll() is not None
    assert method._kernels is None


def test_parallel_children_are_all_waited_for_then_the_kernels_load_here_once(monkeypatch):
    """``ParallelCompile.finish`` logs each child (a failed one too) and compiles here once, after
    the last child ended."""
    from evalkit.models.fourdgs import kernel_warmup

    here: list[str] = []
    monkeypatch.setattr(kernel_warmup, "compile_kernels",
                        lambda cfg, device, **kw: (here.append(kw.get("part", "all")), (0.0, []))[1])
    group = _group(*[_child(code) for code in (
        "import time; time.sleep(0.5); print('lookup: compiled in 0.5 s')",
        "import sys; sys.stderr.write('ptxas exploded'); sys.exit(3)",
        "import time; time.sleep(1.0); print('regulariser: compiled in 1.0 s')")])
    procs = [c.proc for c in group.children]
    lines: list[str] = []
    assert group.finish(lines.append) > 0.5
    assert here == ["all"] and all(p.poll() is not None for p in procs)
    assert said(lines[0], "lookup", "compiled in 0.5 s") and said(lines[1], "3", "ptxas exploded")
    assert said(lines[2], "regulariser", "compiled in 1.0 s")
    assert all(c.proc is None for c in group.children)


def test_an_unknown_kernel_group_is_refused():
    with pytest.raises(ValueError, match="unknown kernel group 'forward'"):
        compile_kernels(FourDGSConfig(**TINY), torch.device("cpu"), part="forward")


def test_the_child_entry_point_compiles_nothing_off_cuda():
    assert main([json.dumps(FourDGSConfig(**TINY).to_dict()), "cpu"]) == 0


@pytest.mark.gpu
def test_one_compiled_variant_for_any_point_count():
    """After the warm-up, lookups with point counts of every residue mod 16 reuse its kernels:
    Triton compiles no second variant in the middle of training."""
    from evalkit.models.fourdgs import hexplane_triton as ht
    from evalkit.models.fourdgs.deformation import DeformationField

    device = torch.device("cuda")
    cfg = FourDGSConfig(**TINY)
    torch.manual_seed(123)
    expected = torch.rand(4, device=device), torch.rand(4)
    torch.manual_seed(123)
    seconds, failed = compile_kernels(cfg, device)
    assert seconds > 0 and failed == []
    # training's initialisation draws from the global generators: the warm-up must not move them
    assert torch.equal(torch.rand(4, device=device), expected[0]) and torch.equal(torch.rand(4), expected[1])
    kernels = (ht._forward_kernel, ht._backward_kernel)
    dev = torch.cuda.current_device()
    variants = [len(k.device_caches[dev][0]) for k in kernels]
    assert all(v >= 1 for v in variants)  # other shapes may have been compiled by earlier tests
    field = DeformationField(cfg.deformation_config(), torch.tensor([[-1.0] * 3, [1.0] * 3])).to(device)
    for n in (1000, 1001, 1008, 1016, 3):
        xyz = (torch.rand(n, 3, device=device) * 2 - 1).requires_grad_(True)
        field.grid(xyz, 0.3).sum().backward()
    torch.cuda.synchronize()
    assert [len(k.device_caches[dev][0]) for k in kernels] == variants


@pytest.mark.gpu
def test_the_background_child_fills_the_triton_cache(tmp_path, monkeypatch):
    """The child compiles the configuration's kernels into Triton's on-disk cache (where this
    process then finds them), with no error logged."""
    from evalkit.models.fourdgs import kernel_warmup

    monkeypatch.setenv("TRITON_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(kernel_warmup, "_COMPILED", set())  # earlier tests compiled these shapes here
    bc = BackgroundCompile(FourDGSConfig(**TINY), torch.device("cuda"))
    assert bc.proc is not None
    bc.proc.wait(timeout=600)
    assert bc.proc.returncode == 0, bc._tail(bc._stderr)
    assert list(tmp_path.rglob("*.cubin"))
    lines: list[str] = []
    group = _group(bc)
    group.device = bc.device  # load the kernels here on CUDA, as training does
    group.finish(lines.append)
    assert len(lines) == 1 and said(lines[0], "compiled in ")


@pytest.mark.gpu
def test_each_group_compiles_on_its_own_and_together_they_are_all(tmp_path, monkeypatch):
    """Each group of ``PARTS`` compiles in a fresh Triton cache without failing, and after the
    three the whole set (``part="all"``) compiles nothing new: no kernel is left out of the groups."""
    monkeypatch.setenv("TRITON_CACHE_DIR", str(tmp_path))
    cfg = json.dumps(FourDGSConfig(**{**TINY, "resolution": [16, 16, 16, 11]}).to_dict())
    env = {**__import__("os").environ, "TRITON_CACHE_DIR": str(tmp_path)}
    for part in PARTS:  # fresh processes: nothing in memory from this one
        out = subprocess.run([sys.executable, "-c", "import sys; from evalkit.models.fourdgs.kernel_warmup "
                              "import main; sys.exit(main())", cfg, "cuda:0", part],
                             capture_output=True, text=True, timeout=600, env=env)
        assert out.returncode == 0, out.stderr
        assert out.stdout.startswith(f"{part}: compiled in ")
    before = sorted(p.name for p in tmp_path.rglob("*.cubin"))
    out = subprocess.run([sys.executable, "-c", "import sys; from evalkit.models.fourdgs.kernel_warmup "
                          "import main; sys.exit(main())", cfg, "cuda:0"],
                         capture_output=True, text=True, timeout=600, env=env)
    assert out.returncode == 0, out.stderr
    assert before and sorted(p.name for p in tmp_path.rglob("*.cubin")) == before
