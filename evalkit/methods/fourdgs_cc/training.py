"""4DGS-CC training: the 4DGS coarse stage (shared between rate points), then the fine stage with
the compression modules and the rate terms of Eq. (2), through the 4DGS trainer's hooks."""
from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from typing import Callable

import torch

from evalkit.data.scene import Scene
from evalkit.methods.base import TrainContext
from evalkit.models.fourdgs.config import FourDGSConfig
from evalkit.models.fourdgs.model import FourDGSModel
from evalkit.models.fourdgs.trainer import build_model, train
from evalkit.train.checkpoint import resumed_info
from evalkit.methods.fourdgs_cc.config import CCConfig
from evalkit.methods.fourdgs_cc.model import FourDGSCCModel

COARSE_CACHE_KEY = "4dgs-cc/coarse-stage"


@dataclass
class VQSchedule:
    """Fine-stage steps: VQ starts at ``start``; indices re-assigned every ``interval`` until ``until``."""
    start: int
    until: int
    interval: int

    @classmethod
    def of(cls, fcfg: FourDGSConfig, cc: CCConfig) -> "VQSchedule":
        iters = fcfg.iterations
        if cc.vq_start is not None:
            start = cc.vq_start
        elif cc.vq_start_fraction is not None:
            start = int(cc.vq_start_fraction * iters)
        else:
            start = min(fcfg.densify_until_iter, int(0.75 * iters))
        start = max(1, int(start))
        until = start + int(cc.vq_assign_fraction * max(iters - start, 0))
        return cls(start, until, max(1, int(cc.vq_assign_interval)))

    def action(self, step: int) -> str | None:
        """What the quantiser does before fine-stage step ``step``."""
        if step == self.start:
            return "init"
        if self.start < step <= self.until and (step - self.start) % self.interval == 0:
            return "assign"
        return None


def coarse_stage(scene: Scene, fcfg: FourDGSConfig, ctx: TrainContext, checkpoint_key: str = "",
                 resume: dict | None = None) -> tuple[FourDGSModel, bool | str, dict]:
    """The coarse (static 3DGS) stage; one run per scene and 4DGS configuration, reused by the
    other rate points through ``ctx.cache`` (it does not depend on any 4DGS-CC option). Under a
    sweep the cache is stored beside the records (``evalkit.sweep.shared``): reused, the second
    value is the stored artefact's path (relative to the results folder), else True / False."""
    key = json.dumps({"config": fcfg.to_dict(), "seed": ctx.budget.seed}, sort_keys=True)
    entry = ctx.cache.get(COARSE_CACHE_KEY)
    if entry is not None and entry["key"] == key:
        ctx.log("coarse stage: reused from an earlier rate point of this scene")
        return copy.deepcopy(entry["model"]), entry.get("artefact") or True, entry["stats"]
    model, stats = train(scene, fcfg, ctx.device, stages=("coarse",), progress=ctx.progress, log=ctx.log,
                         seed=ctx.budget.seed, checkpoint=ctx.checkpoint, checkpoint_key=checkpoint_key,
                         resume=resume)
    st = {s.stage: {"iterations": s.iterations, "seconds": s.seconds, "gaussians": s.num_gaussians} for s in stats}
    ctx.cache[COARSE_CACHE_KEY] = {"key": key, "model": copy.deepcopy(model), "stats": st}
    return model, False, st


def rate_loss(cc: CCConfig, schedule: VQSchedule, last: dict[str, float]
              ) -> Callable[[FourDGSCCModel, str, int], torch.Tensor]:
    """The trainer's ``extra_loss``: lambda_e R_voxels + lambda_c R_code (Eq. 2) every
    ``rate_interval``-th step (weighted by it); every 50 steps the rates (bits per coded value) go to
    ``last``. It also sets the quantiser's action for the next step from ``schedule``."""
    def extra_loss(m: FourDGSCCModel, stage: str, step: int) -> torch.Tensor:
        loss = None
        terms = m.rate_terms(cc.quantization) if step % cc.rate_interval == 0 else {}
        for name, (bits, count) in terms.items():
            weight = (cc.lambda_e if name == "nvcc" else cc.lambda_c) * cc.rate_interval
            term = bits * (weight / count)  # one kernel: the factor is a host number
            loss = term if loss is None else loss + term
            if step % 50 == 0:
                last[f"{name}_bits_per_value"] = float(bits.detach()) / count
        if m.vq is not None and m.vq.pending is None:
            m.vq.pending = schedule.action(step + 1)  # applied at the next step's first render
        return loss if loss is not None else torch.zeros((), device=m.device)

    return extra_loss


def entropy_optimizer(model: FourDGSCCModel) -> torch.optim.Optimizer | None:
    """Adam over the entropy models' parameters (the trainer steps it with its own). Fused on CUDA
    as the trainer's own: one kernel for its ~90 small tensors, and ``AdamSteps`` batches it with
    the others instead of calling its Python ``step``."""
    groups = model.extra_parameters()
    return torch.optim.Adam(groups, eps=1e-15, fused=model.device.type == "cuda") if groups else None


def fine_stage(scene: Scene, fcfg: FourDGSConfig, cc: CCConfig, base: FourDGSModel,
               ctx: TrainContext, bank=None, checkpoint_key: str = "", resume: dict | None = None,
               checkpoint_extra: dict | None = None) -> tuple[FourDGSCCModel, dict]:
    """The 4DGS fine stage with L = L_4DGS + lambda_e R_voxels + lambda_c R_code (Eq. 2), rates in
    bits per coded value (as HAC [5]; the paper does not say how its rates are normalised).
    ``resume``: a fine-stage checkpoint (``base`` is then only the skeleton it is loaded into)."""
    model = FourDGSCCModel(base, cc, seed=ctx.budget.seed)
    schedule = VQSchedule.of(fcfg, cc)
    if model.vq is not None:
        model.vq.pending = schedule.action(1)
    last: dict[str, float] = {}
    _, stats = train(scene, fcfg, ctx.device, model=model, stages=("fine",), extra_loss=rate_loss(cc, schedule, last),
                     extra_optimizer=entropy_optimizer(model), progress=ctx.progress, log=ctx.log,
                     seed=ctx.budget.seed, bank=bank, checkpoint=ctx.checkpoint, checkpoint_key=checkpoint_key,
                     resume=resume, checkpoint_extra=checkpoint_extra)
    st = {s.stage: {"iterations": s.iterations, "seconds": s.seconds, "gaussians": s.num_gaussians} for s in stats}
    st["rate_estimates"] = last
    st["rate_terms"] = model.rate_graph_status()
    ctx.log(f"fine stage: rate terms {st['rate_terms']}")
    st["vq"] = {"start": schedule.start, "assign_until": schedule.until, "interval": schedule.interval}
    if model.vq is not None and model.vq.active:  # how much of the codebook the Gaussians use
        st["vq"].update(model.vq.usage())
    return model, st


def train_stages(scene: Scene, fcfg: FourDGSConfig, cc: CCConfig, ctx: TrainContext, key: str,
                 resume: dict | None, kernels_ready: Callable[[], None]
                 ) -> tuple[FourDGSCCModel, dict, bool | str, dict | None]:
    """Coarse stage (shared, or resumed from a coarse-stage checkpoint), then the fine stage (or
    only the fine stage, from a fine-stage checkpoint). Returns the model, the fine-stage
    statistics with ``coarse`` added, how the coarse stage was obtained, ``TrainedModel.resumed``."""
    fine_resume = resume if resume is not None and resume["stage"] == "fine" else None
    if fine_resume is not None:
        extra = fine_resume["extra"]
        base, reused, coarse_stats = build_model(scene, fcfg, ctx.device), extra["coarse_reused"], extra["coarse_stats"]
        ctx.log("coarse stage: in the fine-stage checkpoint")
    else:
        base, reused, coarse_stats = coarse_stage(scene, fcfg, ctx, key, resume)
    kernels_ready()
    # the coarse stage's time counts for this job unless another rate point trained it
    coarse_s = 0.0 if reused else float(coarse_stats.get("coarse", {}).get("seconds", 0.0))
    model, stats = fine_stage(scene, fcfg, cc, base, ctx, checkpoint_key=key, resume=fine_resume,
                              checkpoint_extra={"coarse_stats": coarse_stats, "coarse_reused": reused})
    stats["coarse"] = coarse_stats
    return model, stats, reused, resumed_info(resume, coarse_s if fine_resume is not None else 0.0)
