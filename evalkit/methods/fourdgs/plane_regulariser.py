"""The HexPlane regularisers of a training step at the cost of one CUDA-graph replay.

``HexPlane.regulariser`` is ~45 small kernels forward and ~70 backward, every fine step, on
planes whose shapes never change. ``PlaneRegulariser`` computes the value and its gradient with
respect to the planes once per step (on CUDA by replaying a graph captured from the eager
computation, elsewhere eagerly) and hands them to autograd through a function whose backward
scales the stored gradients: the loss value and every plane gradient are those of the eager
expression (a test compares them).
"""
from __future__ import annotations

import torch

from evalkit.methods.fourdgs.hexplane import HexPlane


class _Attach(torch.autograd.Function):
    """value -> value, whose gradient with respect to ``planes`` is ``grads`` (precomputed)."""

    @staticmethod
    def forward(ctx, value: torch.Tensor, grads: tuple[torch.Tensor, ...], *planes: torch.Tensor):
        ctx.grads = grads
        return value.clone()

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        grads = torch._foreach_mul(list(ctx.grads), grad_out)  # new tensors: the graph's buffers are reused
        return (None, None, *grads)


def _recover(stream: torch.cuda.Stream) -> None:
    """State a failed capture leaves behind (torch 2.11): ``torch.cuda.graph`` raises before
    restoring the current stream, and the default CUDA generator stays in capture mode, so every
    later random draw (densification's splits) would raise "Offset increment outside graph capture
    encountered unexpectedly". Restore the stream; one trivial capture run to its end clears
    the generator's flag."""
    torch.cuda.set_stream(stream)
    try:
        torch.cuda.synchronize(stream.device)
    except RuntimeError:
        pass
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph, capture_error_mode="thread_local"):
        torch.zeros(1, device=stream.device).add_(1.0)
    torch.cuda.set_stream(stream)


class PlaneRegulariser:
    """``reg()`` = ``grid.regulariser(plane_tv, time_smoothness, l1_time)`` with the same
    gradients, computed in one CUDA-graph replay on CUDA (``graphs=False``: eagerly)."""

    use_graphs = True  # the default for new instances (a benchmark switches it off to compare)

    def __init__(self, grid: HexPlane, plane_tv: float, time_smoothness: float, l1_time: float,
                 graphs: bool | None = None) -> None:
        self.grid = grid
        self.weights = (plane_tv, time_smoothness, l1_time)
        self.graphs = PlaneRegulariser.use_graphs if graphs is None else graphs
        self.failed: str | None = None
        self._graph: torch.cuda.CUDAGraph | None = None
        self._key: tuple | None = None
        self._out: tuple[torch.Tensor, tuple[torch.Tensor, ...]] | None = None

    def _eager(self, planes: list[torch.Tensor]) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
        with torch.enable_grad():
            value = self.grid.regulariser(*self.weights)
            grads = torch.autograd.grad(value, planes)
        return value.detach(), tuple(grads)

    def _capture(self, planes: list[torch.Tensor]) -> None:
        dev = planes[0].device
        main = torch.cuda.current_stream(dev)
        side = torch.cuda.Stream(dev)
        side.wait_stream(main)
        with torch.cuda.stream(side):
            for _ in range(2):  # warm-up outside the graph (allocator, lazy initialisation)
                self._eager(planes)
        main.wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        try:
            # thread_local: CUDA calls of other threads (e.g. the runner's contention sampler)
            # neither fail nor invalidate this capture
            with torch.cuda.graph(graph, capture_error_mode="thread_local"):
                out = self._eager(planes)
        except BaseException:
            _recover(main)
            raise
        self._graph, self._out = graph, out

    def values(self) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
        """(value, gradients w.r.t. ``grid.planes()``), both detached; on CUDA the gradients are
        the graph's buffers, valid until the next call."""
        planes = self.grid.planes()
        usable = (self.graphs and self.failed is None and planes[0].is_cuda
                  and all(p.requires_grad for p in planes) and not torch.cuda.is_current_stream_capturing())
        if not usable:
            return self._eager(planes)
        key = tuple((p.data_ptr(), tuple(p.shape)) for p in planes)
        if key != self._key:  # new planes (another model): capture again
            self._graph, self._key = None, None
            try:
                self._capture(planes)
            except Exception as exc:  # noqa: BLE001 - any capture failure: stay correct, run eagerly
                self.failed = f"{type(exc).__name__}: {exc}"
                return self._eager(planes)
            self._key = key
        self._graph.replay()
        return self._out

    def __call__(self) -> torch.Tensor:
        value, grads = self.values()
        return _Attach.apply(value, grads, *self.grid.planes())
