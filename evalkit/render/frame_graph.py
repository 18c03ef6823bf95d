"""One CUDA graph of a frozen model's per-frame work ``fn(t)`` (t a 0-d device tensor), for rendering.

Decoded models launch dozens of small kernels per frame before the rasteriser (deformation,
activations); replaying them as one graph removes the launch overhead. The outputs are static
buffers overwritten by the next replay, so a caller consumes them before calling again.
"""
from __future__ import annotations

from typing import Any, Callable

import torch
from torch import Tensor


class FrameGraph:
    """``fn`` captured once; ``graph(t)`` fills t and replays, returning ``fn``'s static outputs."""

    def __init__(self, fn: Callable[[Tensor], Any], device: torch.device) -> None:
        self.t = torch.zeros((), device=device)
        side = torch.cuda.Stream(device)
        side.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(side), torch.no_grad():
            for _ in range(2):  # warm-up outside the graph (allocator, cuBLAS handles, lazy init)
                fn(self.t)
        torch.cuda.current_stream(device).wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph), torch.no_grad():
            self.out = fn(self.t)

    def __call__(self, t: float) -> Any:
        self.t.fill_(float(t))
        self.graph.replay()
        return self.out
