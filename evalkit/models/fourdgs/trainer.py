"""Two-stage 4DGS training (coarse static 3DGS, then the deformation field), as in the reference.

Choices, each as the reference does unless noted:
* Each stage restarts its iteration counter, learning-rate schedules and densification schedule.
* Loss: L1 (+ lambda_dssim * D-SSIM when set) + HexPlane regularisers in the fine stage (on
  CUDA value and gradient from one fused kernel, ``plane_regulariser``).
* Densification uses gsplat's ``DefaultStrategy`` thresholds and state (clone/split on the
  view-space gradient of the rendered, i.e. deformed, Gaussians), refined by ``evalkit.train.densify``
  on gsplat's public operations. gsplat also prunes at every refinement; the reference's
  ``densify`` only clones and splits and it prunes every ``pruning_interval`` steps, and then only
  above 200k Gaussians (never on D-NeRF). So the strategy's pruning is switched off and
  ``prune_as_reference`` applies the reference's rule (``prune_at_refine`` restores gsplat's).
  gsplat 1.5.3 never resets opacity (its test ``step % reset_every == 0 & step > 0`` is always
  false), so the trainer calls gsplat's ``reset_opa`` itself every ``opacity_reset_interval``
  steps as the reference does.
* Learning rates of positions, deformation MLP and grid decay log-linearly and are scaled by the
  scene extent (the reference's ``spatial_lr_scale``).
* SH degree grows by one every 1000 iterations (counted over both stages).
* Densification only while fewer than ``densify_below`` (360k) Gaussians exist (statistics keep
  accumulating above it). At each densification step the Gaussians get no Adam update (the
  reference's ``densify`` replaces their tensors, which drops their gradients, also when nothing
  is added); the deformation field still does. No update at all on the fine stage's last step.
* Batches of several views: each view is rendered at its own time; for densification the views'
  view-space gradients are summed before their norm is taken, once per step (``accumulate_stats``).
"""
from __future__ import annotations

import math
import random
import time
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from gsplat.strategy import DefaultStrategy
from gsplat.strategy.ops import remove, reset_opa

from evalkit.data.scene import Frame, Scene
from evalkit.train.adam_steps import AdamSteps
from evalkit.train.checkpoint import (ResumeError, TrainCheckpoint, load_module_state, module_state, rng_states,
                                      set_rng_states)
from evalkit.train.densify import refine
from evalkit.train.densify_stats import accumulate_stats
from evalkit.train.images import ImageBank
from evalkit.train.schedules import log_lerp
from evalkit.models.fourdgs.config import FourDGSConfig
from evalkit.models.fourdgs.deformation import DeformationField
from evalkit.models.fourdgs.model import FourDGSModel, init_gaussians
from evalkit.models.fourdgs.plane_regulariser import PlaneRegulariser
from evalkit.metrics.image import ssim


def _optimizers(model: FourDGSModel, cfg: FourDGSConfig, extent: float) -> dict[str, torch.optim.Optimizer]:
    lrs = {"means": cfg.position_lr_init * extent, "scales": cfg.scaling_lr, "quats": cfg.rotation_lr,
           "opacities": cfg.opacity_lr, "sh0": cfg.feature_lr, "shN": cfg.feature_lr / 20.0}
    fused = model.device.type == "cuda"  # one kernel per step instead of a dozen
    return {k: torch.optim.Adam([{"params": [model.gaussians[k]], "lr": lr, "name": k}], eps=1e-15, fused=fused)
            for k, lr in lrs.items()}


def _deformation_optimizer(deform: DeformationField, cfg: FourDGSConfig, extent: float) -> torch.optim.Adam:
    return torch.optim.Adam([
        {"params": deform.mlp_parameters(), "lr": cfg.deformation_lr_init * extent, "name": "deformation"},
        {"params": deform.grid_parameters(), "lr": cfg.grid_lr_init * extent, "name": "grid"},
    ], eps=1e-15, fused=next(deform.parameters()).device.type == "cuda")


def reference_prunes_at(cfg: FourDGSConfig, step: int, num_gaussians: int) -> bool:
    """The reference's pruning condition (train.py, inside the densification block)."""
    return (step < cfg.densify_until_iter and step > cfg.pruning_from_iter and step % cfg.pruning_interval == 0
            and num_gaussians > cfg.prune_above)


@torch.no_grad()
def prune_as_reference(model: FourDGSModel, opts: dict, state: dict, cfg: FourDGSConfig, step: int,
                       extent: float, info: dict) -> int:
    """Remove Gaussians with opacity below ``prune_opacity`` and, after the first opacity reset,
    those larger than 20 px on screen (max since the last refinement) or 0.1 x the scene extent."""
    g = model.gaussians
    mask = torch.sigmoid(g["opacities"].flatten()) < cfg.prune_opacity
    if step > cfg.opacity_reset_interval:
        mask |= torch.exp(g["scales"]).max(dim=-1).values > 0.1 * extent
        if state.get("radii") is not None:
            mask |= state["radii"] * float(max(info["width"], info["height"])) > 20.0
    n = int(mask.sum())
    if n:
        remove(g, opts, state, mask)
    return n


def views_loss(model: FourDGSModel, frames: list[Frame], bank: ImageBank, picks: list[int], times: torch.Tensor,
               cfg: FourDGSConfig, fine: bool, sh_degree: int, report: bool, *, batched: bool):
    """``(loss, sum of the views' MSE or 0, infos)`` of one step's views: the mean over the views
    of L1 (+ lambda_dssim D-SSIM), the reference's loss of a batch. ``batched`` renders them in
    one call (``FourDGSModel.rasterize_views``); otherwise one view at a time."""
    n = len(picks)
    gts = [bank.get(i) for i in picks]
    if batched:
        out = model.rasterize_views([frames[i].camera for i in picks], torch.stack([times[i] for i in picks]),
                                    deform=fine, sh_degree=sh_degree)
        images, infos, gt = out.images, out.infos, torch.stack(gts)
        loss = (images - gt).abs().mean()  # equal-sized views: the mean of the views' L1
        mse_sum = (images.detach() - gt).square().mean() * n if report else 0.0
    else:
        outs = [model.rasterize(frames[i].camera, frames[i].time, deform=fine, sh_degree=sh_degree) for i in picks]
        images, infos = [o.image for o in outs], [o.info for o in outs]
        loss = sum((im - g).abs().mean() for im, g in zip(images, gts)) / n
        mse_sum = sum((im.detach() - g).square().mean() for im, g in zip(images, gts)) if report else 0.0
    if cfg.lambda_dssim > 0:
        loss = loss + cfg.lambda_dssim * sum(1.0 - ssim(images[k], gts[k]) for k in range(n)) / n
    return loss, mse_sum, infos


@dataclass
class StageStats:
    stage: str
    iterations: int
    seconds: float
    num_gaussians: int


def build_model(scene: Scene, cfg: FourDGSConfig, device: torch.device) -> FourDGSModel:
    """Gaussians initialised from the scene's point cloud and a fresh deformation field whose
    AABB is the point cloud's (as the reference)."""
    gaussians = init_gaussians(scene.points, cfg.sh_degree, device)
    xyz = torch.as_tensor(np.asarray(scene.points.xyz), dtype=torch.float32)
    aabb = torch.stack([xyz.min(0).values, xyz.max(0).values])
    deform = DeformationField(cfg.deformation_config(), aabb).to(device)
    background = torch.as_tensor(np.asarray(scene.background), dtype=torch.float32, device=device)
    return FourDGSModel(gaussians, deform, cfg.sh_degree, background, cfg.near_plane)


def train(scene: Scene, cfg: FourDGSConfig, device: torch.device, *, progress=None, log=None,
          seed: int = 0, model: FourDGSModel | None = None, stages: tuple[str, ...] = ("coarse", "fine"),
          extra_loss=None, extra_optimizer=None, bank: "ImageBank | None" = None,
          before_fine=None, checkpoint: TrainCheckpoint | None = None, checkpoint_key: str = "",
          resume: dict | None = None, checkpoint_extra: dict | None = None
          ) -> tuple[FourDGSModel, list[StageStats]]:
    """Train 4DGS on ``scene``'s train split.

    Hooks for methods built on 4DGS (4DGS-CC) so they need not copy this loop: ``model`` (a
    ``FourDGSModel`` or subclass to train instead of a fresh one, e.g. after a shared coarse
    stage), ``stages`` (which stages to run), ``extra_loss(model, stage, step) -> Tensor`` (added
    to the loss, e.g. rate terms), ``extra_optimizer`` (stepped with the others) and
    ``before_fine()`` (called before the fine stage starts, e.g. to wait for its kernels).

    Checkpoints: with ``checkpoint``, the loop writes its whole state under ``checkpoint_key``
    whenever one is due (with ``checkpoint_extra``, the caller's own, e.g. an earlier stage's
    statistics); ``resume`` (such a state, from ``TrainCheckpoint.load``) continues from it: the
    model, optimisers, densification statistics, view order and random streams as they were, so
    the run ends as an uninterrupted one would. ``ResumeError``: the state does not fit the model
    (nothing trained yet; the caller starts over)."""
    progress = progress or (lambda it, total, stats: None)
    log = log or (lambda msg: None)
    torch.manual_seed(seed)
    random.seed(seed)
    np.random.seed(seed)

    frames = scene.train
    if not frames:
        raise ValueError(f"{scene.path}: the scene has no training frames")
    bank = bank or ImageBank(frames, device)
    times = torch.tensor([f.time for f in frames], dtype=torch.float32, device=device)
    # a batch of views in one deformation and one rasteriser call (same views, same loss)
    batched = cfg.batch_size > 1 and len({(f.camera.width, f.camera.height) for f in frames}) == 1
    extent = scene.camera_extent()
    model = model if model is not None else build_model(scene, cfg, device)
    deform = model.deformation
    if resume is not None:
        load_module_state(model, resume["model"])
        try:
            model.restore_training_flags(resume["flags"])
        except (KeyError, TypeError) as exc:
            raise ResumeError(f"the saved training flags do not fit ({type(exc).__name__}: {exc})") from exc

    schedule = [(st, n) for st, n in (("coarse", cfg.coarse_iterations), ("fine", cfg.iterations)) if st in stages]
    total = sum(n for _, n in schedule)
    # SH degree and progress count over both stages, also when the coarse stage ran elsewhere.
    global_step = cfg.coarse_iterations if "coarse" not in stages else 0
    total += global_step
    stats: list[StageStats] = []
    done_before: list[str] = []  # stages a resumed run finished before its checkpoint
    if resume is not None:
        names = [st for st, _ in schedule]
        if resume["stage"] not in names:
            raise ResumeError(f"saved in the {resume['stage']} stage, which this run does not train")
        done_before = names[:names.index(resume["stage"])]
        stats = [StageStats(**d) for d in resume["stats"]]
        global_step = resume["global_step"] - resume["step"]  # where the resumed stage began
    for stage, iters in schedule:
        if iters <= 0 or stage in done_before:
            continue
        resuming = resume is not None and stage == resume["stage"]
        if stage == "fine" and before_fine is not None:
            before_fine()
        t0 = time.perf_counter()
        fine = stage == "fine"
        opts = _optimizers(model, cfg, extent)
        dopt = _deformation_optimizer(deform, cfg, extent) if fine else None
        regulariser = PlaneRegulariser(deform.grid, cfg.plane_tv_weight, cfg.time_smoothness_weight,
                                       cfg.l1_time_planes) if fine else None
        gsplat_prunes = cfg.prune_at_refine
        strategy = DefaultStrategy(
            prune_opa=cfg.prune_opacity if gsplat_prunes else 0.0, grow_grad2d=cfg.densify_grad_threshold,
            grow_scale3d=cfg.percent_dense, prune_scale3d=0.1 if gsplat_prunes else math.inf,
            refine_start_iter=cfg.densify_from_iter, refine_stop_iter=cfg.densify_until_iter,
            reset_every=cfg.opacity_reset_interval, refine_every=cfg.densification_interval,
            # 1: track the max screen radius since the last refinement (the reference's
            # max_radii2D) without gsplat's screen-size split/prune (active only below step 1)
            refine_scale2d_stop_iter=0 if gsplat_prunes else 1,
            absgrad=False, verbose=False)
        strategy.check_sanity(model.gaussians, opts)
        # all of them in a few fused kernel calls (a step is bound by host work; ``adam_steps``)
        optimizers = AdamSteps([*opts.values(), dopt, extra_optimizer])
        state = strategy.initialize_state(scene_scale=extent)
        order: list[int] = []
        ema_loss, ema_psnr = None, None
        first, earlier_s = 1, 0.0
        if resuming:
            try:
                for name, opt in opts.items():
                    opt.load_state_dict(resume["optimizers"][name])
                for opt, saved in ((dopt, resume["deformation_optimizer"]), (extra_optimizer, resume["extra_optimizer"])):
                    if (opt is None) != (saved is None):
                        raise ResumeError("the saved optimisers do not match this run's")
                    if opt is not None:
                        opt.load_state_dict(saved)
            except (KeyError, ValueError, RuntimeError) as exc:
                raise ResumeError(f"the saved optimiser state does not fit ({type(exc).__name__}: {exc})") from exc
            state.update({k: (v.to(device) if isinstance(v, torch.Tensor) else v)
                          for k, v in resume["strategy"].items()})
            order, (ema_loss, ema_psnr) = list(resume["order"]), resume["ema"]
            first, earlier_s = resume["step"] + 1, float(resume["seconds"])
            global_step += resume["step"]
            set_rng_states(resume["rng"])
            log(f"{stage} stage: resuming from the checkpoint at step {resume['step']} ({earlier_s:.1f} s trained before)")
        for step in range(first, iters + 1):
            global_step += 1
            for g in opts["means"].param_groups:
                g["lr"] = log_lerp(cfg.position_lr_init * extent, cfg.position_lr_final * extent,
                                   step, cfg.position_lr_max_steps)
            if dopt is not None:
                dopt.param_groups[0]["lr"] = log_lerp(cfg.deformation_lr_init * extent,
                                                      cfg.deformation_lr_final * extent, step, cfg.position_lr_max_steps)
                dopt.param_groups[1]["lr"] = log_lerp(cfg.grid_lr_init * extent, cfg.grid_lr_final * extent,
                                                      step, cfg.position_lr_max_steps)
            sh_degree = min(global_step // 1000, cfg.sh_degree)

            report = step % 50 == 0 or step == iters  # one host sync per 50 steps
            picks = []
            for _ in range(cfg.batch_size):
                if not order:
                    order = list(range(len(bank)))
                    random.shuffle(order)
                picks.append(order.pop())
            loss, mse_sum, infos = views_loss(model, frames, bank, picks, times, cfg, fine, sh_degree,
                                              report, batched=batched)
            if regulariser is not None:
                loss = loss + regulariser()
            if extra_loss is not None:
                loss = loss + extra_loss(model, stage, step)
            loss.backward()

            with torch.no_grad():
                if step < cfg.densify_until_iter:
                    accumulate_stats(strategy, model.gaussians, state, infos)
                    if model.num_primitives() < cfg.densify_below and refine(strategy, model.gaussians, opts, state, step):
                        for p in model.gaussians.values():  # no Adam update for them (module docstring)
                            p.grad = None
                if not gsplat_prunes and reference_prunes_at(cfg, step, model.num_primitives()):
                    prune_as_reference(model, opts, state, cfg, step, extent, infos[-1])
                if step < cfg.densify_until_iter and step % cfg.opacity_reset_interval == 0:
                    reset_opa(model.gaussians, opts, state, value=cfg.prune_opacity * 2.0)
            if not (fine and step == iters):  # the reference's `iteration < opt.iterations`
                optimizers.step()
            optimizers.zero_grad()
            if step == first:  # one synchronisation: first-use costs (lazy loading, compiles) show here
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                log(f"{stage} stage: first step done {time.perf_counter() - t0:.2f} s after the stage began")

            if report:
                lv = float(loss.detach())
                pv = float(-10.0 * torch.log10(mse_sum / cfg.batch_size))
                ema_loss = lv if ema_loss is None else 0.6 * ema_loss + 0.4 * lv
                ema_psnr = pv if ema_psnr is None else 0.6 * ema_psnr + 0.4 * pv
                progress(global_step, total, {"stage": stage, "loss": ema_loss, "psnr": ema_psnr,
                                              "gaussians": model.num_primitives()})
            if step % max(1, iters // 10) == 0 and step < iters:  # a trace in the job log
                psnr_note = f", train PSNR ~{ema_psnr:.2f}" if ema_psnr is not None else ""
                log(f"{stage} stage: step {step}/{iters}, {earlier_s + time.perf_counter() - t0:.1f} s, "
                    f"{model.num_primitives()} Gaussians{psnr_note}")
            if checkpoint is not None and step < iters and checkpoint.due():
                failed = checkpoint.save(checkpoint_key, {
                    "stage": stage, "step": step, "global_step": global_step,
                    "seconds": earlier_s + time.perf_counter() - t0,
                    "stats": [vars(st) for st in stats], "model": module_state(model), "flags": model.training_flags(),
                    "optimizers": {k: o.state_dict() for k, o in opts.items()},
                    "deformation_optimizer": dopt.state_dict() if dopt is not None else None,
                    "extra_optimizer": extra_optimizer.state_dict() if extra_optimizer is not None else None,
                    "strategy": {k: (v.detach().cpu() if isinstance(v, torch.Tensor) else v) for k, v in state.items()},
                    "order": list(order), "ema": (ema_loss, ema_psnr), "rng": rng_states(),
                    "extra": checkpoint_extra or {}})
                log(f"{stage} stage: step {step}: {failed or 'checkpoint written'}")
        if regulariser is not None and regulariser.failed:
            log(f"HexPlane regularisers ran eagerly (fused kernel failed: {regulariser.failed})")
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        st = StageStats(stage, iters, earlier_s + time.perf_counter() - t0, model.num_primitives())
        stats.append(st)
        log(f"{stage} stage: {iters} iterations in {st.seconds:.1f} s, {st.num_gaussians} Gaussians")
    model.eval()
    return model, stats
