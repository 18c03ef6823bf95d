"""Densification statistics (view-space gradient norms) shared by the Gaussian trainers."""
from __future__ import annotations

import torch
from gsplat.strategy import DefaultStrategy


@torch.no_grad()
def accumulate_stats(strategy: DefaultStrategy, params, state: dict, infos: list[dict]) -> None:
    """Densification statistics of one step, as the reference keeps them for a batch of views:
    the view-space gradients of the batch's views are summed first and the norm of that sum is
    added once, counting a Gaussian once if any view sees it (train.py sums
    ``viewspace_point_tensor.grad`` over the views before ``add_densification_stats``). Adding each
    view's norm and counting each view instead gives a per-count statistic sqrt(B) (uncorrelated
    view gradients) to B (aligned ones) times smaller, and densifies far less on the batched
    datasets (HyperNeRF, Neu3D). ``strategy.absgrad`` needs ``absgrad`` renders (the trainer's are not).
    For one view this is gsplat's ``DefaultStrategy._update_state`` (unpacked) without its boolean
    indexing, which synchronises with the GPU on every step; a test compares the two."""
    n = len(params["means"])
    gx = gy = seen = None
    for info in infos:
        grads = info["means2d"].absgrad if strategy.absgrad else info["means2d"].grad
        # host floats: a tensor built from them would be a host-to-device copy every step
        sx, sy = info["width"] / 2.0 * info["n_cameras"], info["height"] / 2.0 * info["n_cameras"]
        # leading axes (views of a batched call, cameras) flattened: (V, N, 2)
        grads, radii = grads.reshape(-1, n, 2), info["radii"].reshape(-1, n, 2)
        sel = (radii > 0).all(dim=-1)  # (V, N) visible
        vx, vy = (grads[..., 0] * sx * sel).sum(0), (grads[..., 1] * sy * sel).sum(0)
        vis = sel.any(0)
        gx, gy = (vx, vy) if gx is None else (gx + vx, gy + vy)
        seen = vis if seen is None else seen | vis
        if strategy.refine_scale2d_stop_iter > 0:
            if state["radii"] is None:
                state["radii"] = torch.zeros(n, device=grads.device)
            r = (radii.max(dim=-1).values * sel).max(dim=0).values / float(max(info["width"], info["height"]))
            torch.maximum(state["radii"], r, out=state["radii"])
    if gx is None:
        return
    if state["grad2d"] is None:
        state["grad2d"] = torch.zeros(n, device=gx.device)
    if state["count"] is None:
        state["count"] = torch.zeros(n, device=gx.device)
    state["grad2d"] += torch.hypot(gx, gy) * seen
    state["count"] += seen
