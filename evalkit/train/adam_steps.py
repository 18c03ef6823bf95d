"""Step several fused ``torch.optim.Adam`` optimisers at once, with far less host work.

A 4DGS fine step has eight Adam parameter groups (six Gaussian attributes, kept in separate
optimisers because gsplat's densification edits each one's state, plus the deformation MLP and
grid). ``Optimizer.step`` costs ~100 us of Python per call on the host, and the fine step is bound
by host-side work, not by the GPU. ``AdamSteps.step`` does what ``torch.optim.Adam(fused=True)``
does (same state layout, same kernel: ``torch._fused_adam_``), but increments every step counter
in one ``_foreach_add_`` and calls the fused kernel once per parameter group directly. A test
checks bit-identical parameters and state against the optimisers' own ``step``.

Why a private torch op: ``torch._fused_adam_`` is the kernel ``Adam(fused=True)`` itself calls; torch
has no public call that steps several optimisers' groups without the per-optimiser Python around
it, and that Python is what the host-bound fine step spends its time on (results/MEASUREMENTS.md,
``python -m evalkit.bench.fourdgs_step``). Apart from the ``torch._foreach_*`` list ops it is
evalkit's only private torch call; drop it for ``Optimizer.step`` if a GPU measurement shows the
public path as fast.

Optimisers it cannot step this way (not Adam, not fused, amsgrad, maximize, decoupled weight
decay, tensor hyperparameters) are stepped with their own ``step``; the state and the
optimisers stay usable as ordinary optimisers either way (gsplat's ops replace their params).
"""
from __future__ import annotations

from collections.abc import Iterable

import torch


def _batchable(opt: torch.optim.Optimizer) -> bool:
    if type(opt) is not torch.optim.Adam or opt._optimizer_step_pre_hooks or opt._optimizer_step_post_hooks:
        return False
    for g in opt.param_groups:
        if not g.get("fused") or g.get("amsgrad") or g.get("maximize") or g.get("decoupled_weight_decay"):
            return False
        if g.get("differentiable") or g.get("capturable"):
            return False
        if any(isinstance(g[k], torch.Tensor) for k in ("lr", "weight_decay", "eps")) \
                or any(isinstance(b, torch.Tensor) for b in g["betas"]):
            return False
    return True


class AdamSteps:
    def __init__(self, optimizers: Iterable[torch.optim.Optimizer]) -> None:
        self.optimizers = [o for o in optimizers if o is not None]
        batchable = [_batchable(o) for o in self.optimizers]
        self._batched = [o for o, b in zip(self.optimizers, batchable) if b]
        self._others = [o for o, b in zip(self.optimizers, batchable) if not b]

    @torch.no_grad()
    def step(self) -> None:
        calls, steps = [], []
        for opt in self._batched:
            for g in opt.param_groups:
                # Read the params every step: gsplat's densification swaps them in param_groups.
                params = [p for p in g["params"] if p.grad is not None]
                if not params:
                    continue
                states = []
                for p in params:
                    if p.grad.is_sparse:
                        raise RuntimeError("Adam does not support sparse gradients")
                    st = opt.state[p]
                    if not st:  # torch.optim.Adam's lazy state, as it builds it for fused=True
                        st["step"] = torch.zeros((), dtype=torch.float32, device=p.device)
                        st["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                        st["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                    states.append(st)
                step_tensors = [st["step"] for st in states]
                steps += step_tensors
                calls.append((g, params, states, step_tensors))
        if steps:
            torch._foreach_add_(steps, 1)
        for g, params, states, step_tensors in calls:
            beta1, beta2 = g["betas"]
            torch._fused_adam_(params, [p.grad for p in params], [st["exp_avg"] for st in states],
                               [st["exp_avg_sq"] for st in states], [], step_tensors,
                               amsgrad=False, lr=g["lr"], beta1=beta1, beta2=beta2,
                               weight_decay=g["weight_decay"], eps=g["eps"], maximize=False,
                               grad_scale=None, found_inf=None)
        for opt in self._others:
            opt.step()

    def zero_grad(self) -> None:
        """``zero_grad(set_to_none=True)`` of every optimiser, without its per-call overhead."""
        for opt in self.optimizers:
            for g in opt.param_groups:
                for p in g["params"]:
                    p.grad = None
