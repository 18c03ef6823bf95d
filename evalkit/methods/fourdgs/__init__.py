"""Method ``4dgs``: 4D Gaussian Splatting (Wu et al., CVPR 2024), the uncompressed baseline.

Canonical 3D Gaussians (SH degree 3) deformed per time step by a HexPlane field and a small
MLP; trained in two stages; stored as float32 (see ``codec``)."""
from __future__ import annotations

import torch

from evalkit.codec.container import Bitstream
from evalkit.data.scene import Camera, Scene
from evalkit.methods.base import Method, RatePoint, TrainContext, TrainedModel
from evalkit.methods.fourdgs import codec
from evalkit.models.fourdgs.config import FourDGSConfig
from evalkit.models.fourdgs.export import export_ply
from evalkit.models.fourdgs.kernel_warmup import KernelsInBackground
from evalkit.models.fourdgs.model import FourDGSModel
from evalkit.models.fourdgs.trainer import train
from evalkit.train.checkpoint import ResumeError, checkpoint_key, resumed_info


class FourDGSTrained(TrainedModel):
    """The runner-facing model (trained or decoded): render, count, encode, export."""

    def __init__(self, model: FourDGSModel, cfg: FourDGSConfig, stats: dict | None = None) -> None:
        self.model = model
        self.cfg = cfg
        self.stats = stats or {}
        self.iterations = cfg.coarse_iterations + cfg.iterations

    def encode(self) -> Bitstream:
        return codec.encode(self.model, self.cfg)

    def effective_config(self) -> dict:
        return self.cfg.to_dict()

    def render(self, camera: Camera, t: float) -> torch.Tensor:
        return self.model.render(camera, t)

    def num_primitives(self) -> int:
        return self.model.num_primitives()

    def export_ply(self, path, t: float | None = None):
        return export_ply(self.model, path, t)


class FourDGS(Method, KernelsInBackground):
    name = "4dgs"

    @staticmethod
    def config(rate: RatePoint, ctx: TrainContext) -> FourDGSConfig:
        """The dataset / scene configuration with the rate point's parameters, scaled to the budget."""
        cfg = FourDGSConfig.from_dict({**ctx.config, **rate.params}, source="methods/4dgs.toml")
        return cfg.scaled_schedule(ctx.budget.iterations)

    def effective_config(self, rate: RatePoint, ctx: TrainContext) -> dict:
        return self.config(rate, ctx).to_dict()

    def train(self, scene: Scene, rate: RatePoint, ctx: TrainContext) -> FourDGSTrained:
        cfg = self.config(rate, ctx)
        key = checkpoint_key(self.name, cfg.to_dict(), ctx.budget.seed, self.speed_options)
        resume = ctx.checkpoint.load(key)

        def run(resume):
            return train(scene, cfg, ctx.device, progress=ctx.progress, log=ctx.log, seed=ctx.budget.seed,
                         before_fine=lambda: self.kernels_ready(ctx.log), checkpoint=ctx.checkpoint,
                         checkpoint_key=key, resume=resume)
        try:
            try:
                model, stages = run(resume)
            except ResumeError as exc:  # a checkpoint this code cannot continue: start over
                ctx.log(ctx.checkpoint.reject(str(exc)))
                model, stages, resume = *run(None), None
        finally:
            self.stop_kernels()
        trained = FourDGSTrained(model, cfg, {s.stage: {"iterations": s.iterations, "seconds": s.seconds,
                                                        "gaussians": s.num_gaussians} for s in stages})
        trained.resumed = resumed_info(resume)
        return trained

    def prepare_training(self, rate: RatePoint, ctx: TrainContext) -> None:
        """One-time setup (timed apart by the runner): start compiling the fine stage's Triton
        kernels in a child process, which runs on while the coarse stage trains (``train`` waits
        for it, inside the training time, before the fine stage), and pay the per-process
        first-use costs (``warm_up``)."""
        self.prepare_kernels(self.config(rate, ctx), ctx.device)

    def decode(self, bits: Bitstream, device: torch.device, source: str = "<bitstream>") -> FourDGSTrained:
        model, cfg = codec.decode(bits, device, source)
        return FourDGSTrained(model, cfg)

