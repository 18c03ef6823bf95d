"""The contract between the runner and a method. The runner knows nothing else about methods.

A method subclasses ``Method`` and returns a ``TrainedModel`` from ``train`` and a ``Model`` from
``decode``. Every hook the runner or the CLI may call is declared here, with its default; the
runner calls them directly. ``check_contract`` (run by the registry when it loads a method, and by
the runner on the models a method returns) refuses a class that lacks a required member or
defines a public name that looks like a misspelt hook.
"""
from __future__ import annotations

import difflib
import inspect
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from evalkit.codec.container import Bitstream
from evalkit.data.scene import Camera, Scene
from evalkit.train.checkpoint import TrainCheckpoint


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
    # where this job's training checkpoint lives (off by default); a method that supports it resumes
    # from it and says so in ``TrainedModel.resumed``
    checkpoint: TrainCheckpoint = field(default_factory=TrainCheckpoint)


RenderFn = Callable[[Camera, float], torch.Tensor]


class Model:
    """A model the runner renders: what ``Method.decode`` returns (and the base of ``TrainedModel``)."""

    def render(self, camera: Camera, t: float) -> torch.Tensor:
        """(H, W, 3) in [0, 1]: the view of ``camera`` at time ``t``. Required."""
        raise NotImplementedError

    def num_primitives(self) -> int:
        """Number of primitives (Gaussians) in the model. Required."""
        raise NotImplementedError

    def export_ply(self, path: str | Path, t: float | None = None) -> Path:
        """Write a standard 3DGS PLY (canonical, or deformed to time ``t``) for ``evalkit export``.
        Default: the method has no PLY export (``NotImplementedError``; the CLI says so)."""
        raise NotImplementedError(f"{type(self).__name__} has no PLY export")


class TrainedModel(Model):
    """What ``Method.train`` returns: a ``Model`` that also encodes itself and says how it was made."""

    #: iterations actually trained (after ``--iterations`` / ``--quick`` scaling); None: unknown
    iterations: int | None = None
    #: what was reused from an earlier rate point of the same scene (e.g. a shared coarse stage);
    #: stored in the record as ``reused``. None: nothing.
    reused: dict[str, Any] | None = None
    #: training continued from a checkpoint of an earlier, interrupted run of this job:
    #: ``{"from_step": N, "earlier_train_s": seconds trained before it}``. None: trained in one go.
    resumed: dict[str, Any] | None = None

    def encode(self) -> Bitstream:
        """The bitstream the decoder rebuilds the model from. Required."""
        raise NotImplementedError

    def effective_config(self) -> dict[str, Any] | None:
        """The complete configuration the model was trained with (inherited keys, variant and rate
        point parameters, the schedule after scaling): the record's ``config``. It must equal what
        ``Method.effective_config`` predicted for the job (the runner checks). Default: None, the
        prediction is taken as it is."""
        return None

    def quality_stages(self) -> list[tuple[str, RenderFn]]:
        """The trained model before each lossy coding step, in the order the steps apply, as
        ``(label, render)`` with ``render`` like ``Model.render`` (e.g. "unquantised", "+ HexPlane
        quantised"); the decoded bitstream, which the record measures anyway, is the step after
        the last. The runner evaluates each on the test views after encoding into
        ``Record.stage_metrics``. Default: none."""
        return []


class Method:
    """A compression method: trains a ``TrainedModel`` per rate point and decodes bitstreams."""

    name: str = ""  # the registry name, e.g. "4dgs". Required.
    # Configuration keys that change how fast a job runs, not what it computes (e.g. replaying
    # from CUDA graphs): a record made with another value is still this job's, so a resumed sweep
    # keeps it (``runner.settings_changed``). Its record says which value it ran with.
    speed_options: frozenset[str] = frozenset()

    def train(self, scene: Scene, rate: RatePoint, ctx: TrainContext) -> TrainedModel:
        """Train on ``scene``'s train split at ``rate``. Required."""
        raise NotImplementedError

    def decode(self, bits: Bitstream, device: torch.device, source: str = "<bitstream>") -> Model:
        """A fresh model from ``bits`` alone; ``source`` names the file in errors. Required."""
        raise NotImplementedError

    def effective_config(self, rate: RatePoint, ctx: TrainContext) -> dict[str, Any]:
        """The complete configuration ``train(scene, rate, ctx)`` will use, without training: what a
        resumed sweep compares with an existing record. Default: the spec's configuration for the
        dataset / scene with the rate point's parameters over it."""
        return {**ctx.config, **rate.params}

    def prepare_training(self, rate: RatePoint, ctx: TrainContext) -> None:
        """One-time setup training needs that is not training (e.g. compiling GPU kernels on first
        use). Called before the training timer; timed apart (``timings["training_setup_s"]``).
        Default: nothing."""

    def prepare_coding(self) -> None:
        """One-time setup the coder needs that is not encoding (e.g. building a compiled arithmetic
        coder). Called before the encode timer; timed apart (``timings["coding_setup_s"]``).
        Default: nothing."""


_CONTRACT: dict[type, tuple[type, tuple[str, ...]]] = {
    # class -> (its contract base, the members a subclass must define)
    Method: (Method, ("name", "train", "decode")),
    TrainedModel: (TrainedModel, ("render", "num_primitives", "encode")),
    Model: (Model, ("render", "num_primitives")),
}


class ContractError(TypeError):
    """A method or model class does not keep the contract; the message names the class and the hook."""


def _hooks(base: type) -> set[str]:
    return {n for c in base.__mro__ if c is not object for n in vars(c) if not n.startswith("_")}


def check_contract(cls: type, kind: type, owner: str) -> None:
    """Raise ``ContractError`` when ``cls`` (a subclass of ``kind``: ``Method``, ``TrainedModel`` or
    ``Model``) lacks a required member, or defines a public name one or two letters away from a
    hook (a misspelt hook would silently never run). ``owner`` names the method in the message."""
    base, required = _CONTRACT[kind]
    if not (isinstance(cls, type) and issubclass(cls, base)):
        raise ContractError(f"method {owner!r}: {getattr(cls, '__qualname__', cls)!r} is not a subclass of "
                            f"evalkit.methods.base.{base.__name__}")
    for name in required:
        mine = inspect.getattr_static(cls, name, None)
        if mine is None or mine is inspect.getattr_static(base, name) or (name == "name" and not mine):
            raise ContractError(f"method {owner!r}: {cls.__qualname__} lacks the required {name!r} "
                                f"(evalkit.methods.base.{base.__name__})")
    hooks = _hooks(base)
    for c in cls.__mro__:
        if c in (base, Model, object) or issubclass(base, c):
            continue
        for name in vars(c):
            if name.startswith("_") or name in hooks:
                continue
            close = difflib.get_close_matches(name, hooks, n=1, cutoff=0.85)
            if close:
                raise ContractError(f"method {owner!r}: {c.__qualname__}.{name} is not a hook of "
                                    f"evalkit.methods.base.{base.__name__}; did you mean {close[0]!r}?")
