"""``GraphedCalls``: a capture that fails leaves the process as it was (eager results, random
numbers still drawable)."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from evalkit.train.cuda_graphs import GraphedCalls


class _HostRead(nn.Module):
    """Reads a device value on the host: a synchronisation, which CUDA-graph capture refuses."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * float(x.sum()) + torch.rand_like(x)


class _Timestep(nn.Module):
    """A time table read at a 0-d tensor t (as adc-gs's deformation): capturable since it is
    indexed with index_select, not weight[t_index]."""

    def __init__(self) -> None:
        super().__init__()
        from evalkit.methods.adc_gs.nets import TimeTable
        self.table = TimeTable(5, 3)
        with torch.no_grad():
            self.table.weight.copy_(torch.arange(15.0).reshape(5, 3))

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return x * self.table(t)


@pytest.mark.gpu
def test_a_failed_capture_falls_back_to_eager_and_keeps_random_numbers_working() -> None:
    x = torch.ones(4, device="cuda", requires_grad=True)
    calls = GraphedCalls(True)
    y = calls(("host-read",), _HostRead, x)
    assert calls.failed is not None and calls.status().startswith("eager: CUDA-graph capture failed")
    assert y.shape == x.shape and bool(((y >= 4) & (y < 5)).all())  # 4 * 1 + U[0, 1)
    torch.randn(8, device="cuda")  # the generator left capture mode (this raised before the fix)
    y.sum().backward()
    assert x.grad is not None


@pytest.mark.gpu
def test_a_time_table_read_at_a_tensor_time_is_captured_and_replayed() -> None:
    x = torch.ones(3, device="cuda", requires_grad=True)
    calls, unit = GraphedCalls(True), _Timestep().cuda()
    for t, row in ((0.25, [3.0, 4.0, 5.0]), (0.625, [7.5, 8.5, 9.5])):  # rows 1 and 2.5 of 5
        out = calls(("time",), lambda: unit, x, torch.full((), t, device="cuda"))
        assert calls.failed is None and calls.captures == 1
        assert torch.allclose(out, torch.tensor(row, device="cuda"))


class _Grow(nn.Module):
    """A fresh wrapper at each capture (as adc-gs's units): ``make_graphed_callables`` patches the
    module it is given, so re-capturing the same instance would wrap its first graph."""

    def __init__(self, lin: nn.Linear) -> None:
        super().__init__()
        self.lin = lin

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.lin(x)).square()


@pytest.mark.gpu
@pytest.mark.xfail(strict=True, reason="known: each re-capture keeps GPU memory (stop 44, H100: reserved 930 -> "
                   "19,810 MiB and allocated 374 -> 2,580 MiB over 30 captures, 1 wrapper alive); adc-gs pads "
                   "its anchors so it re-captures rarely. Strict: an XPASS says the leak is gone")
def test_a_growing_input_does_not_pile_up_reserved_memory() -> None:
    """A model that grows is re-captured at every new size: the dropped graphs' memory should be given
    back, so the process's reserved memory stays near a few captures', not the sum of all of them
    (adc-gs jobs held 26-55 GiB on the captures, stop 41). It is not: stop 42 (no collection), 43 and
    44 (collection every 2 drops) saw reserved memory grow by 620-730 MiB per capture, and stop 44
    also allocated memory (~70 MiB per capture, a sawtooth) with only the live wrapper left. Hence adc-gs's padding (``graph_capacity_growth``): a few dozen sizes, not one per count
    (stop 44's HyperNeRF job: 19 captures, 2.8 GiB reserved at 6,200 anchors). A reading of PyTorch's
    allocator (stop 44, not run) blames the failed-capture test before this one in the same process
    for the reserved growth (an aborted capture left a capture counted as under way, so ``empty_cache``
    gave nothing back), and per-stream cuBLAS workspaces (2 x 32 MiB per new capture stream, up to 32
    streams) for the allocated growth. ``GraphedCalls`` now ends an aborted capture's routing."""
    import weakref

    calls, lin = GraphedCalls(True, evict_stale=True, collect_every=2), nn.Linear(64, 64).cuda()
    peaks, allocated, wrappers = [], [], []

    def make() -> _Grow:
        wrappers.append(weakref.ref(unit := _Grow(lin)))
        return unit

    for i, n in enumerate(range(200_000, 260_000, 2_000)):  # 30 sizes, ~50 MB of activations each
        x = torch.randn(n, 64, device="cuda", requires_grad=True)
        calls(("grow",), make, x).sum().backward()
        peaks.append(torch.cuda.memory_reserved())
        allocated.append(torch.cuda.memory_allocated())
    alive = sum(w() is not None for w in wrappers)
    # what was held (MiB), to tell a reference that outlives its graph from a pool not given back
    report = f"reserved {[p >> 20 for p in peaks]}, allocated {[a >> 20 for a in allocated]}, captured wrappers alive {alive}"
    assert calls.captures == 30 and calls.captured == 1
    assert max(peaks) < 3 * peaks[2], report


def test_dropped_graphs_are_freed_every_collect_every_drops(monkeypatch) -> None:
    """A captured graph lives in reference cycles: ``make_graphed_callables`` sets the module's
    ``forward`` to a closure over the module and builds an autograd Function class per capture whose
    closures hold the graph's static tensors (torch 2.x's pattern, copied in the fake below). Only
    the cycle collector frees them, so ``GraphedCalls`` runs it, and empties the CUDA cache, once
    every ``collect_every`` dropped graphs."""
    import gc
    import weakref

    from evalkit.train import cuda_graphs

    statics = []

    def fake_make_graphed_callables(module, samples, allow_unused_input=False):
        static = samples[0].detach().clone()  # stands for the graph and its pool
        statics.append(weakref.ref(static))

        class Graphed(torch.autograd.Function):
            @staticmethod
            def forward(ctx, x):
                return static.sum() * 0 + module.lin(x)

            @staticmethod
            def backward(ctx, g):
                return g @ module.lin.weight

        def make_graphed_forward(func, graph_training_state, orig_fwd):
            def new_fwd(*args):
                return Graphed.apply(*args) if func.training == graph_training_state else orig_fwd(*args)
            return new_fwd
        module.forward = make_graphed_forward(module, module.training, module.forward)
        return module

    emptied = []
    monkeypatch.setattr(torch.cuda, "make_graphed_callables", fake_make_graphed_callables)
    monkeypatch.setattr(cuda_graphs.GraphedCalls, "usable", lambda self, tensors: True)
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: emptied.append(len(statics)))
    calls, lin = GraphedCalls(True, evict_stale=True, collect_every=3), nn.Linear(64, 64)
    alive = []
    gc.disable()  # only GraphedCalls's own collections
    try:
        for n in range(3, 9):  # six captures: five drops
            calls(("grow",), lambda: _Grow(lin), torch.randn(n, 64, requires_grad=True)).sum().backward()
            alive.append([ref() is not None for ref in statics])
    finally:
        gc.enable()
    assert emptied == [3]  # at the third drop, before the fourth graph is captured
    assert alive[2] == [True, True, True]  # dropped graphs outlive our reference until a collection
    assert alive[3] == [False, False, False, True]  # the three dropped ones freed; the live one kept
    assert alive[5] == [False, False, False, True, True, True]


def test_the_capture_check_sees_host_reads_and_host_data() -> None:
    """``capture_blockers`` (used by the graphed units' CPU tests) has teeth: it sees the patterns
    that break a capture, and not their capturable forms."""
    from tests.train.capture_safety import capture_blockers

    w = torch.randn(5, 3, requires_grad=True)
    lo = torch.tensor(2)
    assert capture_blockers(lambda: w[lo]) == ["aten._local_scalar_dense.default"]
    assert capture_blockers(lambda: float(w.sum().detach())) == ["aten._local_scalar_dense.default"]
    assert capture_blockers(lambda: w * torch.tensor([1.0, 0.0, 0.0])) == ["aten.lift_fresh.default"]
    assert capture_blockers(lambda: w[w > 0]) != []
    assert capture_blockers(lambda: (w.index_select(0, lo.reshape(-1)) * torch.full((), 2.0)).sum().backward()) == []


def test_a_failed_capture_gives_back_the_stream_and_ends_the_pools_routing(monkeypatch) -> None:
    """What an aborted capture leaves undone is done: the caller's stream is current again, the
    allocator's routing into the capture's pool ends and its reference is dropped, in that order;
    when no capture was under way (the routing cannot be ended), the pool is left alone."""
    from evalkit.train import cuda_graphs

    calls = []
    monkeypatch.setattr(torch.cuda, "set_stream", lambda s: calls.append(("stream", s)))
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch._C, "_cuda_endAllocateToPool", lambda d, p: calls.append(("end", d, p)), raising=False)
    monkeypatch.setattr(torch._C, "_cuda_releasePool", lambda d, p: calls.append(("release", d, p)), raising=False)
    cuda_graphs._end_failed_capture(torch.device("cuda", 1), "caller", (0, 7))
    assert calls == [("stream", "caller"), ("end", 1, (0, 7)), ("release", 1, (0, 7))]

    def not_recording(d, p):
        raise RuntimeError("endAllocatePool: not currently recording to mempool_id")

    calls.clear()
    monkeypatch.setattr(torch._C, "_cuda_endAllocateToPool", not_recording, raising=False)
    cuda_graphs._end_failed_capture(torch.device("cuda"), "caller", (0, 8))
    assert calls == [("stream", "caller")]


@pytest.mark.gpu
def test_a_failed_capture_leaves_the_stream_and_the_cache_as_they_were() -> None:
    """After a capture that failed (a host read), the caller's stream is current and ``empty_cache``
    still gives back freed memory (stop 44's reading of the allocator: an aborted capture left it
    counting a capture under way, which stops ``empty_cache`` for the rest of the process)."""
    def released_mib() -> int:
        t = torch.empty(256 << 20, dtype=torch.uint8, device="cuda")
        del t
        before = torch.cuda.memory_reserved()
        torch.cuda.empty_cache()
        return (before - torch.cuda.memory_reserved()) >> 20

    assert released_mib() >= 256
    stream = torch.cuda.current_stream()
    calls = GraphedCalls(True)
    calls(("host-read",), _HostRead, torch.ones(4, device="cuda", requires_grad=True))
    assert calls.failed is not None
    assert torch.cuda.current_stream() == stream
    assert released_mib() >= 256
