"""ADC-GS training (the paper gives the losses; the schedule is the public code's, see config).

Loss (Eq. 10): (1 - lambda_ssim) L1 + lambda_ssim (1 - SSIM) + lambda_e R (paper; the code halves
the SSIM term), on the unclamped render (choice: the code clamps it to [0, 1], but its colours are
sigmoid-bounded; with the unbounded C_v + Delta C a clamp stops the gradient of every pixel out of
range, and a synthetic quick run fell from 17.85 to 12.39 dB, results/MEASUREMENTS.md stop 37).
Canonical primitives only before ``deform_from``; quantisation noise from ``quant_from``; the rate
term from ``rate_from`` (code). Refinement every ``refine_interval`` steps in (refine_from,
refine_until]; at ``refine_until`` X_v snaps to the ``snap_grid`` grid, duplicates
merge (keeping the anchor with the larger summed canonical opacity) and X_v freezes (code).
Learning rates decay log-linearly over the run (code; Adam eps 1e-15).

The lambda-independent steps (everything before ``rate_from``) are trained once per scene and
shared by the rate points through ``TrainContext.cache`` (the snapshot holds the model, the
optimiser, the statistics and the random states). The same snapshot, written every few minutes to
the job's ``TrainCheckpoint``, lets an interrupted job continue where it stopped.
"""
from __future__ import annotations

import copy
import random
import time
from typing import NamedTuple

import numpy as np
import torch
from scipy.spatial import cKDTree
from torch import Tensor, nn
from torch.profiler import record_function

from evalkit.data.scene import Scene
from evalkit.metrics.image import ssim
from evalkit.render.api import camera_tensors, rasterize
from evalkit.train.images import ImageBank
from evalkit.train.schedules import log_lerp
from evalkit.train.checkpoint import TrainCheckpoint, checkpoint_key as digest_key, rng_states, set_rng_states
from evalkit.train.cuda_graphs import GraphedCalls
from evalkit.methods.adc_gs.config import ADCConfig
from evalkit.methods.adc_gs.mem import bits_per_value, quantise, stream_names
from evalkit.methods.adc_gs.model import ADCModel, Primitives, deformed, flat
from evalkit.methods.adc_gs.refine import PSI_EPS, RefineStats, in_frustum


def init_model(scene: Scene, cfg: ADCConfig, device: torch.device) -> ADCModel:
    """Anchors from the scene's points (voxel centres when ``init_voxel`` > 0), f_v = f_g = 0,
    Sigma_v = log of the mean distance to the 3 nearest anchors (code), C_v = point colour."""
    xyz = np.asarray(scene.points.xyz, dtype=np.float64)
    rgb = (np.asarray(scene.points.rgb, dtype=np.float64) if scene.points.rgb is not None
           else np.full_like(xyz, 0.5))
    if not np.isfinite(xyz).all() or len(xyz) == 0:
        raise ValueError(f"{scene.points.source}: the initial point cloud is empty or not finite")
    if cfg.init_voxel > 0:
        keys, inv = np.unique(np.round(xyz / cfg.init_voxel).astype(np.int64), axis=0, return_inverse=True)
        inv = inv.ravel()
        xyz = keys * cfg.init_voxel
        rgb = np.stack([np.bincount(inv, rgb[:, c], len(keys)) / np.bincount(inv, None, len(keys)) for c in range(3)], 1)
    k = min(4, len(xyz))
    d, _ = cKDTree(xyz).query(xyz, k=k)
    dist = np.sqrt((d[:, 1:] ** 2).mean(1)) if k > 1 else np.full(len(xyz), 0.01)
    log_d = np.log(np.clip(dist, 1e-7, None))
    sigma = np.repeat(log_d[:, None], 6, axis=1)
    t = lambda a: torch.as_tensor(a, dtype=torch.float32, device=device)
    return ADCModel(cfg, t(xyz), t(rgb), t(sigma), cfg.rows_for(scene.num_time_steps), with_mem=True)


class CanonicalStep(nn.Module):
    """A training step's canonical part: anchor attributes -> (with ``quant``) features with
    quantisation noise and each MEM stream's bits, then F_theta's primitives. Its shapes only change
    when the anchors do, so the trainer replays it from a CUDA graph (``cuda_graphs``): a few hundred
    small kernels, forward and backward, for one launch each way. Not part of the model tree."""

    def __init__(self, model: ADCModel, quant: bool, mode: str = "noise") -> None:
        super().__init__()
        self.theta = model.theta
        self.mem = model.mem if quant else None
        self.names = stream_names(model.cfg) if quant else []
        self.mode = mode  # "noise" in training; "round" (deterministic) for tests

    def forward(self, xyz: Tensor, fv: Tensor, fg: Tensor, sigma: Tensor, color: Tensor,
                *row_weight: Tensor) -> tuple[Tensor, ...]:
        feats = {"fv": fv, "fg": fg, "sigma": sigma, "color": color}
        extra: tuple[Tensor, ...] = ()
        if self.mem is not None:
            feats, bits = quantise(self.mem, feats, self.mode, row_weight[0] if row_weight else None)
            extra = (feats["fv"], *(bits[k] for k in self.names))
        p = self.theta(xyz, feats)
        return (p.means, p.quats, p.scales, p.opacity_logits, p.colors, *extra)


def graph_capacity(n: int, growth: float) -> int:
    """Rows a graphed unit sees for ``n`` anchors: ``n`` (growth 0), else the first of 256,
    ceil(256 g), ceil(ceil(256 g) g), ... that holds them (``graph_capacity_growth``)."""
    if growth <= 1:
        return n
    cap = 256
    while cap < n:
        cap = max(cap + 1, int(np.ceil(cap * growth)))
    return cap


def _pad_rows(t: Tensor, rows: int) -> Tensor:
    """``t`` with zero rows appended up to ``rows`` (differentiable: the padding gets no gradient)."""
    return torch.cat([t, t.new_zeros((rows - t.shape[0], *t.shape[1:]))]) if rows > t.shape[0] else t


def _unit_rows(model: ADCModel) -> tuple[int, int | None]:
    """(anchors, the capacity the graphed units pad them to, or None for exact counts)."""
    n = model.xyz.shape[0]
    growth = model.cfg.graph_capacity_growth
    return n, (graph_capacity(n, growth) if growth > 1 else None)


class CanonicalOut(NamedTuple):
    """A step's canonical part: primitives and f_v (anchor rows), bits per stream (None without
    quantisation), and the graphed unit's padded rows (X_v, f_v, primitives; None for exact counts),
    which each view's deformation takes as they are instead of padding the sliced rows again."""
    prim: Primitives
    fv: Tensor
    bits: dict | None
    unit_rows: tuple[Tensor, ...] | None


def canonical_step(graphs: GraphedCalls, model: ADCModel, quant: bool, mode: str = "noise") -> CanonicalOut:
    """This step's primitives, f_v as the deformation reads it, and bits per stream (or None)."""
    tensors: tuple[Tensor, ...] = (model.xyz, model.fv, model.fg, model.sigma, model.color)
    n, cap = _unit_rows(model)
    if cap is not None:  # zero rows up to the capacity, weighing nothing in the bits, sliced off below
        # (the weights go in even when no row is padded, so one capacity keeps one signature)
        weight = model.xyz.new_zeros((cap, 1))
        weight[:n].fill_(1.0)
        tensors = tuple(_pad_rows(t, cap) for t in tensors) + (weight,)
    out = graphs(("canonical", quant, mode), lambda: CanonicalStep(model, quant, mode), *tensors)
    fv = out[5] if quant else tensors[1]
    unit_rows = (tensors[0], fv, *out[:5]) if cap is not None else None
    if cap is not None:  # per-anchor outputs (views, no copies); the bits are totals
        out = tuple(o[:n] for o in out[:6]) + tuple(out[6:])
        fv = fv[:n]
    bits = dict(zip(stream_names(model.cfg), out[6:])) if quant else None
    return CanonicalOut(Primitives(*out[:5]), fv, bits, unit_rows)


class DeformStep(nn.Module):
    """One view's deformation (Eqs. 2-5) of the step's canonical primitives, flattened for the
    rasteriser; t is a tensor, so one CUDA graph serves every frame. Not part of the model tree."""

    def __init__(self, model: ADCModel) -> None:
        super().__init__()
        self.deform = model.deform

    def forward(self, xyz: Tensor, fv: Tensor, t: Tensor, *prim: Tensor) -> tuple[Tensor, ...]:
        return flat(deformed(Primitives(*prim), self.deform(xyz, fv, t)))


def view_primitives(graphs: GraphedCalls, model: ADCModel, canon: CanonicalOut, t: float, deform: bool,
                    slot: int) -> tuple[Tensor, ...]:
    """Flat (means, quats, scales, opacities, colours) of the frame at ``t`` from this step's canonical
    part; ``slot`` is the view's place in the batch (each slot has its own graph: a graph's buffers
    hold one call at a time). Padded, the deformation takes the canonical unit's rows as they are;
    the padded rows' outputs are sliced off, so they get no gradient."""
    prim = canon.prim
    if not deform or model.cfg.deformation == "none":
        return flat(prim)
    tt = torch.full((), t, dtype=prim.means.dtype, device=prim.means.device)
    n, cap = _unit_rows(model)
    if cap is None:
        rows = (model.xyz, canon.fv, prim.means, prim.quats, prim.scales, prim.opacity_logits, prim.colors)
    elif canon.unit_rows is None or canon.unit_rows[0].shape[0] != cap:
        raise ValueError(f"view_primitives: a canonical part padded to "
                         f"{None if canon.unit_rows is None else canon.unit_rows[0].shape[0]} rows for a capacity "
                         f"of {cap} ({n} anchors): the canonical part of another step")
    else:
        rows = canon.unit_rows
    out = graphs((f"deform{slot}",), lambda: DeformStep(model), rows[0], rows[1], tt, *rows[2:])
    return tuple(o[:n * model.cfg.k] for o in out) if cap is not None else out


# -- optimiser --------------------------------------------------------------------------
def _groups(model: ADCModel) -> list[dict]:
    g = [{"params": [getattr(model, k)], "name": k} for k in ADCModel.ANCHOR_PARAMS]
    th = model.theta
    g += [{"params": list(th.offsets.parameters()), "name": "theta_offsets"},
          {"params": list(th.cov.parameters()), "name": "theta_cov"},
          {"params": list(th.opacity.parameters()), "name": "theta_opacity"},
          {"params": list(th.color.parameters()), "name": "theta_color"},
          {"params": list(model.deform.parameters()), "name": "deform"}]
    if model.mem is not None:
        g.append({"params": list(model.mem.parameters()), "name": "entropy"})
    return g


def set_learning_rates(opt: torch.optim.Optimizer, cfg: ADCConfig, step: int, extent: float, frozen_xyz: bool) -> None:
    n = cfg.iterations
    f = cfg.lr_mlp_final_factor
    lrs = {"xyz": 0.0 if frozen_xyz else log_lerp(cfg.lr_position * extent, cfg.lr_position_final * extent, step, n),
           "fv": log_lerp(cfg.lr_feature, cfg.lr_feature_final, step, n),
           "fg": log_lerp(cfg.lr_feature, cfg.lr_feature_final, step, n),
           "sigma": cfg.lr_sigma, "color": cfg.lr_color,
           "theta_offsets": log_lerp(cfg.lr_offsets, cfg.lr_offsets * f, step, n),
           "theta_cov": log_lerp(cfg.lr_cov, cfg.lr_cov * f, step, n),
           "theta_opacity": log_lerp(cfg.lr_opacity, cfg.lr_opacity * f, step, n),
           "theta_color": log_lerp(cfg.lr_color_mlp, cfg.lr_color_mlp * f, step, n),
           "deform": log_lerp(cfg.lr_deform * extent, cfg.lr_deform_final * extent, step, n),
           "entropy": log_lerp(cfg.lr_entropy, cfg.lr_entropy_final, step, n)}
    for g in opt.param_groups:
        g["lr"] = lrs[g["name"]]


def _edit_anchor_params(model: ADCModel, opt: torch.optim.Optimizer, keep: torch.Tensor,
                        new: dict[str, torch.Tensor] | None) -> None:
    """Keep the anchors ``keep`` (bool mask) and append ``new`` (per anchor parameter); Adam's
    moments follow (new rows start at zero, as 3DGS's densification)."""
    for g in opt.param_groups:
        if g["name"] not in ADCModel.ANCHOR_PARAMS:
            continue
        p = g["params"][0]
        extra = new[g["name"]] if new is not None else p.new_zeros((0,) + p.shape[1:])
        data = torch.cat([p.detach()[keep], extra.to(p.dtype)], dim=0)
        new_p = torch.nn.Parameter(data, requires_grad=p.requires_grad)
        st = opt.state.pop(p, None)
        if st:
            for key in ("exp_avg", "exp_avg_sq"):
                st[key] = torch.cat([st[key][keep], torch.zeros_like(extra)], dim=0)
            opt.state[new_p] = st
        g["params"][0] = new_p
        setattr(model, g["name"], new_p)


@torch.no_grad()
def refine(model: ADCModel, opt: torch.optim.Optimizer, stats: RefineStats, cfg: ADCConfig,
           step: int = 0) -> tuple[int, int]:
    """Grow and prune (Eq. 11); returns (grown, pruned)."""
    k = cfg.k
    sig = stats.significance(cfg.temporal_significance)
    grow = sig >= cfg.grow_threshold
    prune = stats.prune_mask(cfg.prune_threshold(step), 0.8 * cfg.refine_interval)
    new = None
    if grow.any():
        prim = model.canonical()
        idx = torch.nonzero(grow).squeeze(1)
        parent = idx // k
        pos = prim.means.reshape(-1, 3)[idx]
        if cfg.grow_voxel > 0:  # one new anchor per free voxel (choice, Scaffold-GS's rule)
            cells = torch.floor(pos / cfg.grow_voxel).long()
            taken = torch.floor(model.xyz.detach() / cfg.grow_voxel).long()
            both = torch.cat([taken, cells])
            _, inv = torch.unique(both, dim=0, return_inverse=True)
            first = torch.full((int(inv.max()) + 1,), len(both), dtype=torch.long, device=inv.device)
            first.scatter_reduce_(0, inv, torch.arange(len(both), device=inv.device), reduce="amin")
            fresh = first[inv[len(taken):]] == torch.arange(len(taken), len(both), device=inv.device)
            idx, parent, pos = idx[fresh], parent[fresh], pos[fresh]
            grow = torch.zeros_like(grow)
            grow[idx] = True
        sigma = model.sigma[parent]
        if cfg.grow_sigma == "primitive":  # the parent's Sigma_v shrunk to the primitive's own scale
            shrink = torch.log(prim.scales.reshape(-1, 3)[idx]) - sigma[:, 3:]
            sigma = sigma + torch.cat([shrink, shrink], dim=1)
        new = {"xyz": pos, "fv": model.fv[parent], "fg": model.fg[parent],
               "sigma": sigma, "color": prim.colors.reshape(-1, 3)[idx]} if len(idx) else None
    keep = ~prune
    if new is not None or prune.any():
        _edit_anchor_params(model, opt, keep, new)
    return int(grow.sum()), int(prune.sum())


@torch.no_grad()
def snap_positions(model: ADCModel, opt: torch.optim.Optimizer, cfg: ADCConfig) -> int:
    """X_v onto the snap grid, duplicates merged (the one with the larger summed canonical opacity
    stays); X_v frozen afterwards. Returns the number of merged anchors."""
    grid = torch.round(model.xyz.detach().double() / cfg.snap_grid)
    snapped = (grid * cfg.snap_grid).float()
    opacity = torch.sigmoid(model.canonical().opacity_logits).sum(1)
    # order by opacity (descending) so the first of each duplicate group is the one to keep
    order = torch.argsort(opacity, descending=True)
    _, inv = torch.unique(grid[order], dim=0, return_inverse=True)
    first = torch.full((int(inv.max()) + 1 if len(inv) else 0,), len(inv), dtype=torch.long, device=inv.device)
    first.scatter_reduce_(0, inv, torch.arange(len(inv), device=inv.device), reduce="amin")
    keep = torch.zeros(len(inv), dtype=torch.bool, device=inv.device)
    keep[order[first]] = True
    model.xyz.data.copy_(snapped)
    merged = int((~keep).sum())
    if merged:
        _edit_anchor_params(model, opt, keep, None)
    model.xyz.requires_grad_(False)
    return merged


# -- the loop ---------------------------------------------------------------------------
def _snapshot(model: ADCModel, opt, stats: RefineStats, step: int, frozen: bool, perm: list[int],
              history: dict, seconds: float, trace: dict | None = None) -> dict:
    return {"model": copy.deepcopy(model).cpu(), "opt": copy.deepcopy(opt.state_dict()),
            "stats": copy.deepcopy(stats).to("cpu"), "step": step, "frozen": frozen, "perm": list(perm),
            "history": dict(history), "seconds": seconds, "trace": copy.deepcopy(trace or {}),
            "rng": rng_states()}


def _restore(snap: dict, device: torch.device, cfg: ADCConfig):
    model: ADCModel = copy.deepcopy(snap["model"]).to(device)
    model.cfg = cfg
    model.deform.cfg = cfg
    if model.mem is not None:
        model.mem.cfg = cfg
    opt = torch.optim.Adam(_groups(model), eps=1e-15, fused=device.type == "cuda")
    opt.load_state_dict(copy.deepcopy(snap["opt"]))
    stats = copy.deepcopy(snap["stats"]).to(device)
    set_rng_states(snap["rng"])
    return (model, opt, stats, snap["step"], snap["frozen"], list(snap["perm"]), dict(snap["history"]),
            float(snap["seconds"]))


def checkpoint_key(cfg: ADCConfig, seed: int) -> str:
    """A job's checkpoint key: every setting but ``cuda_graphs`` (the same computation replayed), and the seed."""
    return digest_key("adc-gs", cfg.to_dict(), seed, frozenset({"cuda_graphs"}))


def shared_key(cfg: ADCConfig, seed: int) -> str:
    """The cache key of the lambda-independent steps: every setting but lambda_e, and the seed."""
    return digest_key("adc-gs/before-rate", cfg.to_dict(), seed, frozenset({"lambda_e"}))


def _memory_note(device: torch.device, graphs: GraphedCalls) -> str:
    """For the periodic log line on CUDA: reserved memory and the graphs' state (a growth of the
    reserved memory over re-captures ran stop 41's jobs out of memory; a failed capture makes the
    steps about 3x slower)."""
    if device.type != "cuda":
        return ""
    return f"; {torch.cuda.memory_reserved(device) / 2**30:.1f} GiB reserved; {graphs.status()}"


def train(scene: Scene, cfg: ADCConfig, device: torch.device, *, seed: int = 0, progress=None, log=None,
          cache: dict | None = None, checkpoint: TrainCheckpoint | None = None) -> tuple[ADCModel, dict]:
    progress = progress or (lambda it, total, stats: None)
    log = log or (lambda msg: None)
    frames = scene.train
    if not frames:
        raise ValueError(f"{scene.path}: the scene has no training frames")
    rd = cfg.rate_distortion
    key = shared_key(cfg, seed)
    share_until = cfg.rate_from if rd else 0  # last lambda-independent step
    reused = False
    bank = ImageBank(frames, device)
    cams = [camera_tensors(f.camera, device) for f in frames]
    bg3 = torch.as_tensor(np.asarray(scene.background), dtype=torch.float32, device=device)
    bg4 = torch.cat([bg3, bg3.new_zeros(1)])
    extent = scene.camera_extent()
    checkpoint = checkpoint or TrainCheckpoint()
    ckpt_key = checkpoint_key(cfg, seed)
    state = checkpoint.load(ckpt_key)
    restored = None
    if state is not None:
        try:
            restored = _restore(state, device, cfg)
        except Exception as exc:  # e.g. saved by other code: start over, saying why
            checkpoint.reject(f"cannot be restored ({type(exc).__name__}: {exc})")
    if checkpoint.rejected:
        log(checkpoint.rejected)
    own_s = 0.0  # training seconds of this job's earlier processes (a resumed checkpoint)
    trace: dict = {}
    shared_s = 0.0
    # (a sweep's shared store claims a missing key: ask only when there is a stage to share)
    if restored is not None:
        model, opt, stats, start, frozen, perm, history, own_s = restored
        trace = dict(state["trace"])
        reused, shared_s = trace.get("reused", False), trace.get("shared_s", 0.0)
        log(f"resuming from the checkpoint at step {start} ({own_s:.1f} s trained before): {checkpoint.path}")
    elif rd and share_until > 1 and cache is not None and key in cache:
        model, opt, stats, start, frozen, perm, history, shared_s = _restore(cache[key], device, cfg)
        reused = True
        log(f"reusing the lambda-independent steps 1-{start} of this scene (shared between rate points)")
    else:
        torch.manual_seed(seed)
        random.seed(seed)
        np.random.seed(seed)
        model = init_model(scene, cfg, device)
        opt = torch.optim.Adam(_groups(model), eps=1e-15, fused=device.type == "cuda")
        stats = RefineStats(model.num_anchors, cfg.k, device)
        start, frozen, perm = 0, False, []
        history, shared_s = {"grown": 0, "pruned": 0, "merged": 0}, 0.0
    log(f"adc-gs: {model.num_anchors} initial anchors x {cfg.k} primitives, {model.deform.table.weight.shape[0]} "
        f"time rows, lambda_e={cfg.lambda_e}")
    graphs = GraphedCalls(cfg.cuda_graphs, evict_stale=True)
    t0 = time.perf_counter()
    rate_log: list[float] = list(trace.get("rate_log", []))
    ema_psnr: float | None = trace.get("ema_psnr")  # train PSNR of the 100th steps' renders, smoothed as 4dgs's trace
    resumed_from = start if restored is not None else None
    log_every = max(100, min(1000, cfg.iterations // 1000 * 100))  # on reporting steps (train PSNR known)
    for step in range(start + 1, cfg.iterations + 1):
        if rd and cache is not None and step == share_until and not reused and share_until > 1:
            cache[key] = _snapshot(model, opt, stats, step - 1, frozen, perm, history, own_s + time.perf_counter() - t0)
        set_learning_rates(opt, cfg, step, extent, frozen)
        if len(perm) < cfg.batch_size:
            perm += random.sample(range(len(frames)), len(frames))
        views, perm = perm[:cfg.batch_size], perm[cfg.batch_size:]
        deform_on = cfg.deformation != "none" and step > cfg.deform_from
        quant_on = rd and step > cfg.quant_from
        rate_on = rd and step > cfg.rate_from and cfg.lambda_e > 0
        in_window = cfg.refinement and cfg.refine_from < step <= cfg.refine_until
        with record_function("adc-gs: quantise + F_theta"):
            canon = canonical_step(graphs, model, quant_on)
        loss = canon.prim.means.new_zeros(())
        report = step % 100 == 0 or step == cfg.iterations
        mse = 0.0  # of the reporting steps' renders only (no work on the others)
        renders = []
        for slot, v in enumerate(views):
            with record_function("adc-gs: deformation"):
                means, quats, scales, opac, colors = view_primitives(graphs, model, canon, frames[v].time,
                                                                     deform_on, slot)
            if in_window:
                colors = torch.cat([colors, torch.ones_like(colors[:, :1])], dim=1)
                colors.retain_grad()
            cam = frames[v].camera
            with record_function("adc-gs: rasterise"):
                out = rasterize(means, quats, scales, opac, colors, *cams[v], cam.width, cam.height,
                                background=bg4 if in_window else bg3, near=cfg.near_plane)
            img, gt = out.image[..., :3], bank.get(v)
            with record_function("adc-gs: image loss"):
                l = (1 - cfg.lambda_ssim) * (img - gt).abs().mean() + cfg.lambda_ssim * (1 - ssim(img, gt))
            loss = loss + l / len(views)
            if report:  # of the image as evaluation scores it
                mse = mse + (img.detach().clamp(0, 1) - gt).square().mean() / len(views)
            if in_window:
                loss = loss + PSI_EPS * out.image[..., 3].sum()
                renders.append((out, colors, opac, cam, means, v))
        if rate_on:
            with record_function("adc-gs: rate"):
                r = bits_per_value(model.mem, canon.bits, model.num_anchors)
            loss = loss + cfg.lambda_e * r
            if step % 100 == 0:
                rate_log.append(float(r.detach()))
        opt.zero_grad(set_to_none=True)
        with record_function("adc-gs: backward"):
            loss.backward()
        for out, colors, opac, cam, means, v in renders:
            psi = colors.grad[:, 3] / PSI_EPS
            in_view = in_frustum(means.detach(), *cams[v], cam.width, cam.height, cfg.near_plane)
            # the loss averages the batch's views: x len(views) gives each frame's own 2D gradient
            stats.add(out.info["means2d"].grad.reshape(-1, 2) * len(views), out.info["radii"].reshape(-1, 2), psi,
                      opac.detach(), cam.width, cam.height, in_view)
        with record_function("adc-gs: optimiser"):
            opt.step()
        if cfg.refinement and cfg.refine_from < step <= cfg.refine_until and step % cfg.refine_interval == 0:
            grown, pruned = refine(model, opt, stats, cfg, step)
            history["grown"] += grown
            history["pruned"] += pruned
            stats.reset(model.num_anchors)
        if rd and step == min(cfg.refine_until, cfg.iterations) and not frozen:
            history["merged"] += snap_positions(model, opt, cfg)
            frozen = True
            stats.reset(model.num_anchors)
            log(f"step {step}: anchors snapped to the {cfg.snap_grid} grid and frozen ({model.num_anchors} anchors, "
                f"{history['merged']} merged)")
        if report:
            pv = float(-10.0 * torch.log10(mse.clamp_min(1e-10)))
            ema_psnr = pv if ema_psnr is None else 0.6 * ema_psnr + 0.4 * pv
            progress(step, cfg.iterations, {"loss": float(loss.detach()), "psnr": ema_psnr,
                                            "anchors": model.num_anchors})
        if step % log_every == 0:  # a trace in the job log, at least ten over a short schedule
            log(f"step {step}: loss {float(loss.detach()):.4f}, {model.num_anchors} anchors, train PSNR ~{ema_psnr:.2f}"
                f"{_memory_note(device, graphs)}")
        if checkpoint.due() and step < cfg.iterations:
            failed = checkpoint.save(ckpt_key, _snapshot(model, opt, stats, step, frozen, perm, history,
                                                         own_s + time.perf_counter() - t0,
                                                         {"rate_log": rate_log, "ema_psnr": ema_psnr,
                                                          "reused": reused, "shared_s": shared_s}))
            log(f"step {step}: {failed or 'checkpoint written'}")
    if rd and not frozen:
        history["merged"] += snap_positions(model, opt, cfg)
    model.eval()
    # the shared steps count in full (their time measured when they ran) for every rate point
    train_stats = {"seconds": time.perf_counter() - t0 + own_s + shared_s,
                   "shared_steps_s": shared_s if reused else None, "anchors": model.num_anchors,
                   "resumed": None if resumed_from is None else {"from_step": resumed_from, "earlier_train_s": own_s},
                   "primitives": model.num_anchors * cfg.k, "refinement": history, "reused_shared_steps": reused,
                   "rate_bits_per_value": rate_log[-1] if rate_log else None, "train_psnr": ema_psnr,
                   "canonical_step": graphs.status()}
    return model, train_stats
