"""Replay a differentiable computation with fixed shapes from CUDA graphs.

4DGS-CC's rate terms (and ADC-GS's canonical and deformation units) are hundreds of tiny kernels
whose launch cost, not their arithmetic, dominates a training step. Their shapes change rarely
(ADC-GS's when the anchors do), so ``torch.cuda.make_graphed_callables`` captures forward and
backward once per input signature and each later step replays two graphs. Numbers are unchanged
(GPU tests compare with eager execution); random noise inside the graph comes from the graph-safe
generator. If capture fails, the computation runs eagerly, ``failed`` says why, and the CUDA
generator is put back as it was before the capture.
"""
from __future__ import annotations

import gc
from typing import Callable

import torch
import torch.nn as nn


class GraphedCalls:
    """``call(key, make_module, *tensors)``: the module ``make_module()`` builds, applied to
    ``tensors``, replayed from a graph captured for ``key`` and the tensors' signature."""

    def __init__(self, enabled: bool = True, evict_stale: bool = False, collect_every: int = 8) -> None:
        self.enabled = bool(enabled)
        # a unit's graphs (keys with the same first element) are dropped when it captures a new one
        # (inputs whose shapes or settings change for good, as a growing model's), and collected once
        # every ``collect_every`` dropped graphs (``_free_dropped``)
        self.evict_stale = bool(evict_stale)
        self.collect_every = max(1, int(collect_every))
        self._dropped = 0  # dropped since the last collection
        self.failed: str | None = None
        self.captures = 0  # captures so far (evicted ones included)
        self._graphed: dict[tuple, nn.Module] = {}

    @property
    def captured(self) -> int:
        """How many graphs are held (one per key and tensor signature)."""
        return len(self._graphed)

    EAGER = "eager (no CUDA graph: not on CUDA, or cuda_graphs off)"

    def _free_dropped(self) -> None:
        """Collect the dropped graphs and empty the CUDA cache. A captured graph lives in reference
        cycles (``make_graphed_callables`` sets the module's ``forward`` to a closure over the
        module, and builds an autograd Function class per capture whose closures hold the graphs and
        their static tensors), so dropping our reference frees nothing until the cycle collector runs.
        A full collection costs ~0.17 s in a training process (CPU, adc-gs), hence once per
        ``collect_every`` drops. Not enough on its own: in the GPU test reserved and allocated memory
        still grow with every re-capture (stops 43-44), so growing models re-capture rarely (adc-gs
        pads its anchors, ``graph_capacity_growth``)."""
        gc.collect()
        torch.cuda.empty_cache()
        self._dropped = 0

    def status(self) -> str:
        """How the calls ran: replayed from CUDA graphs, or eagerly and why."""
        if self.failed is not None:
            return f"eager: CUDA-graph capture failed ({self.failed})"
        return f"replayed from CUDA graphs ({self.captures} captured)" if self.captures else self.EAGER

    def usable(self, tensors: tuple[torch.Tensor, ...]) -> bool:
        return (self.enabled and self.failed is None and torch.is_grad_enabled()
                and all(t.is_cuda for t in tensors) and not torch.cuda.is_current_stream_capturing())

    def __call__(self, key: tuple, make_module: Callable[[], nn.Module], *tensors: torch.Tensor):
        if not self.usable(tensors):
            return make_module()(*tensors)
        sig = (key, tuple((tuple(t.shape), t.dtype, t.requires_grad) for t in tensors))
        module = self._graphed.get(sig)
        if module is None:
            if self.evict_stale:
                stale = [s for s in self._graphed if s[0][0] == key[0]]
                for s in stale:
                    del self._graphed[s]
                self._dropped += len(stale)
                if self._dropped >= self.collect_every:
                    self._free_dropped()
            module = make_module()
            samples = tuple(t.detach().clone().requires_grad_(t.requires_grad) for t in tensors)
            rng = _cuda_generator(tensors[0].device)
            rng_state = rng.clone_state() if rng is not None else None
            dev = tensors[0].device
            # the caller's stream and the capture's pool, to undo what a failed capture leaves
            stream = torch.cuda.current_stream(dev) if dev.type == "cuda" else None
            pool = {"pool": torch.cuda.graph_pool_handle()} if dev.type == "cuda" else {}
            try:
                module = torch.cuda.make_graphed_callables(module, samples, allow_unused_input=True, **pool)
            except Exception as exc:  # noqa: BLE001 - any capture failure: stay correct, run eagerly
                self.failed = f"{type(exc).__name__}: {exc}"
                # A capture that fails midway leaves the CUDA generator in capture mode, and every
                # later random op would fail ("Offset increment outside graph capture"): restore it.
                if rng is not None:
                    rng.graphsafe_set_state(rng_state)
                if stream is not None:
                    _end_failed_capture(dev, stream, pool["pool"])
                return make_module()(*tensors)
            self._graphed[sig] = module
            self.captures += 1
        out = module(*tensors)
        # Outputs are static buffers that the next replay overwrites.
        return tuple(o.clone() for o in out) if isinstance(out, tuple) else out.clone()


def _end_failed_capture(device: torch.device, stream, pool) -> None:
    """What an aborted capture leaves undone: the caller's stream back (the capture's side stream
    stays current otherwise), and the allocator's routing to the capture's pool ended and its
    reference dropped. Without the latter the allocator counts a capture as still under way for the
    rest of the process, and ``empty_cache`` gives back nothing (a reading of PyTorch's allocator by a
    helper, stop 44: ``capture_end`` raises before ``endAllocateToPool``; the GPU test
    ``test_a_failed_capture_leaves_the_stream_and_the_cache_as_they_were`` checks it). The allocator
    calls are private (no public API ends a pool's routing); absent or refused, nothing is done."""
    torch.cuda.set_stream(stream)
    end = getattr(torch._C, "_cuda_endAllocateToPool", None)
    release = getattr(torch._C, "_cuda_releasePool", None)
    if end is None or release is None:
        return
    index = device.index if device.index is not None else torch.cuda.current_device()
    try:
        end(index, pool)  # raises when no capture into this pool is under way (a failed warm-up)
    except RuntimeError:
        return
    release(index, pool)


def _cuda_generator(device: torch.device) -> torch.Generator | None:
    """The default CUDA generator of ``device`` (None off CUDA)."""
    if device.type != "cuda":
        return None
    return torch.cuda.default_generators[device.index if device.index is not None else torch.cuda.current_device()]
