"""Densification (clone, split, prune) on gsplat's public strategy operations.

gsplat's ``DefaultStrategy.step_post_backward`` refines from statistics it gathers itself; a
trainer that gathers them another way (``densify_stats.accumulate_stats``: several views per
step) and decides itself when to refine needs the refinement alone. This is that refinement,
written on ``gsplat.strategy.ops`` (``duplicate``, ``split``, ``remove``) with the strategy's
thresholds, in the order and with the masks ``DefaultStrategy`` uses (gsplat 1.5), so the same
statistics give the same Gaussians.
"""
from __future__ import annotations

import torch
from gsplat.strategy import DefaultStrategy
from gsplat.strategy.ops import duplicate, remove, split


def is_refine_step(strategy: DefaultStrategy, step: int) -> bool:
    """gsplat's refinement condition: inside [refine_start_iter, refine_stop_iter), every
    ``refine_every`` steps, not right after an opacity reset."""
    return (strategy.refine_start_iter < step < strategy.refine_stop_iter and step % strategy.refine_every == 0
            and step % strategy.reset_every >= strategy.pause_refine_after_reset)


@torch.no_grad()
def grow(strategy: DefaultStrategy, params, optimizers: dict, state: dict, step: int) -> tuple[int, int]:
    """Clone the small Gaussians and split the large ones whose mean view-space gradient exceeds
    ``grow_grad2d`` (and, before ``refine_scale2d_stop_iter``, split those wider than
    ``grow_scale2d`` on screen). Returns (cloned, split)."""
    grads = state["grad2d"] / state["count"].clamp_min(1)
    is_grad_high = grads > strategy.grow_grad2d
    is_small = torch.exp(params["scales"]).max(dim=-1).values <= strategy.grow_scale3d * state["scene_scale"]
    is_dupli = is_grad_high & is_small
    is_split = is_grad_high & ~is_small
    if step < strategy.refine_scale2d_stop_iter:
        is_split |= state["radii"] > strategy.grow_scale2d
    n_dupli, n_split = int(is_dupli.sum()), int(is_split.sum())
    if n_dupli > 0:
        duplicate(params=params, optimizers=optimizers, state=state, mask=is_dupli)
    # clones are appended at the end and are not split
    is_split = torch.cat([is_split, torch.zeros(n_dupli, dtype=torch.bool, device=is_split.device)])
    if n_split > 0:
        split(params=params, optimizers=optimizers, state=state, mask=is_split,
              revised_opacity=strategy.revised_opacity)
    return n_dupli, n_split


@torch.no_grad()
def prune(strategy: DefaultStrategy, params, optimizers: dict, state: dict, step: int) -> int:
    """Remove Gaussians below ``prune_opa`` opacity and, after the first opacity reset, those
    larger than ``prune_scale3d`` x the scene scale (or, before ``refine_scale2d_stop_iter``,
    wider than ``prune_scale2d`` on screen). Returns how many went."""
    is_prune = torch.sigmoid(params["opacities"].flatten()) < strategy.prune_opa
    if step > strategy.reset_every:
        is_too_big = torch.exp(params["scales"]).max(dim=-1).values > strategy.prune_scale3d * state["scene_scale"]
        if step < strategy.refine_scale2d_stop_iter:
            is_too_big |= state["radii"] > strategy.prune_scale2d
        is_prune = is_prune | is_too_big
    n_prune = int(is_prune.sum())
    if n_prune > 0:
        remove(params=params, optimizers=optimizers, state=state, mask=is_prune)
    return n_prune


@torch.no_grad()
def refine(strategy: DefaultStrategy, params, optimizers: dict, state: dict, step: int) -> bool:
    """At a refinement step (``is_refine_step``): grow, prune, then reset the statistics, as
    ``step_post_backward`` does. Returns whether this was a refinement step."""
    if not is_refine_step(strategy, step):
        return False
    grow(strategy, params, optimizers, state, step)
    prune(strategy, params, optimizers, state, step)
    state["grad2d"].zero_()
    state["count"].zero_()
    if strategy.refine_scale2d_stop_iter > 0:
        state["radii"].zero_()
    return True
