"""What a CUDA graph cannot capture, seen on CPU: ops that read a tensor on the host
(``aten._local_scalar_dense``: ``.item()``, ``float(t)``, indexing by a 0-d tensor) or copy
Python data into a new tensor (``aten.lift_fresh``: ``torch.tensor(...)``, a host-to-device copy
on CUDA), or whose output size depends on values (``nonzero``, boolean masks)."""
from __future__ import annotations

from typing import Callable

import torch
from torch.utils._python_dispatch import TorchDispatchMode

BLOCKERS = ("aten._local_scalar_dense", "aten.lift_fresh", "aten.nonzero", "aten.masked_select", "aten.unique")


class _Spy(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.seen: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = str(func)
        if name.startswith(BLOCKERS):
            self.seen.append(name)
        elif name.startswith("aten.index") and any(  # a boolean mask: its output size is a host read
                isinstance(i, torch.Tensor) and i.dtype == torch.bool for a in args if isinstance(a, (list, tuple))
                for i in a):
            self.seen.append(f"{name} (boolean mask)")
        return func(*args, **(kwargs or {}))


def capture_blockers(fn: Callable[[], object]) -> list[str]:
    """The uncapturable ops ``fn`` (forward and backward, run on CPU) dispatches."""
    with _Spy() as spy:
        fn()
    return spy.seen
