"""The device a Triton launch must run on.

Triton launches on the *current* CUDA device and its current stream, not on the device of the
tensors it is given: a model on ``cuda:1`` would have its kernels refused (or, with peer access,
run unordered on GPU 0's stream). Every launch goes through ``kernel_device(tensor)``."""
from __future__ import annotations

import contextlib

import torch


def kernel_device(t: torch.Tensor) -> contextlib.AbstractContextManager:
    """``torch.cuda.device(t.device)`` for a CUDA tensor; nothing for others (the CPU interpreter)."""
    return torch.cuda.device(t.device) if t.is_cuda else contextlib.nullcontext()
