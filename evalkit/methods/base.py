"""The contract between the runner and a method. The runner knows nothing else about methods."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Protocol, runtime_checkable

import torch

from evalkit.codec.container import Bitstream
from evalkit.data.scene import Camera, Scene


@dataclass
class RatePoint:
    """A named quality level (CompressAI style) with the method's parameters for it."""

    name: str
    params: dict[str, Any] = field(default_factory=dict)


@dataclass
class Budget:
    """How long to train and at what resolution. ``quick`` marks honest short schedules."""

    iterations: int | None = None  # None: the method's protocol schedule
    resolution_scale: float = 1.0
    quick: bool = False
    seed: int = 0


@dataclass
class TrainContext:
    device: torch.device
    budget: Budget
    config: dict[str, Any]  # method hyperparameters for this dataset (from methods/<name>.toml)
    progress: Callable[[int, int, dict[str, float]], None] = lambda it, total, stats: None
    log: Callable[[str], None] = lambda msg: None
    cache: dict[str, Any] = field(default_factory=dict)  # shared between rate points of one scene
    dataset: str = ""  # dataset spec name (e.g. "dnerf"), for methods that build on another's spec
    scene_name: str = ""


@runtime_checkable
class Model(Protocol):
    def encode(self) -> Bitstream: ...

    def render(self, camera: Camera, t: float) -> torch.Tensor: ...  # (H, W, 3) in [0, 1]

    def num_primitives(self) -> int: ...

    # Optional: ``quality_stages() -> list[(label, render)]`` with ``render(camera, t)`` like
    # ``render``: the trained model before each lossy coding step, in the order the steps apply
    # (e.g. "unquantised", "+ HexPlane quantised"); the decoded bitstream, which the record
    # measures anyway, is the step after the last. The runner evaluates each on the test views
    # (after encoding) into ``Record.stage_metrics``; reports list them with the decoded bitstream
    # as the last row, so a record shows what every step costs in quality.


class Method(Protocol):
    name: str

    def train(self, scene: Scene, rate: RatePoint, ctx: TrainContext) -> Model: ...

    def decode(self, bits: Bitstream, device: torch.device, source: str = "<bitstream>") -> Model: ...
    # ``source`` names the file in error messages (BitstreamError).

    # Optional: ``prepare_training(rate, ctx) -> None``: one-time setup training needs that is not
    # training (e.g. compiling GPU kernels on first use). The runner calls it before it starts the
    # training timer and records its time apart (``timings["training_setup_s"]``).
    # Optional: ``prepare_coding() -> None``: one-time setup the coder needs that is not encoding
    # (e.g. building a compiled arithmetic coder on first use). The runner calls it before it
    # starts the encode timer and records its time apart (``timings["coding_setup_s"]``).
