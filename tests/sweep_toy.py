"""The toy method of tests/test_runner.py for sweeps whose jobs run in child processes.

A child worker imports this module first (``SweepOptions.plugins`` or ``$EVALKIT_PLUGINS``); it
registers ``toy`` in the method registry, as the ``toy_bench`` fixture does in the test process.
Environment hooks (read in the child):

* ``EVALKIT_TOY_TRAIN_LOG``: a file each training appends "<scene>/<rate> <pid>" to (no job ran twice?)
* ``EVALKIT_TOY_SLEEP``: seconds each training sleeps (a job long enough to kill or to contend for)
* ``EVALKIT_TOY_CRASH``: "<scene>/<rate>" whose training kills its process with SIGSEGV

The toy also shares a stage between rate points through ``ctx.cache`` (``"toy/stage"``: the
scene's mean training colour), naming the stored artefact in its record's ``reused``.
"""
from __future__ import annotations

import os
import signal
import time

import numpy as np

from evalkit.methods import registry
from tests.test_runner import ToyMethod, ToyModel

STAGE_KEY = "toy/stage"


class SweepToy(ToyMethod):
    def train(self, scene, rate, ctx):
        job = f"{ctx.scene_name}/{rate.name}"
        if log := os.environ.get("EVALKIT_TOY_TRAIN_LOG"):
            with open(log, "a", encoding="utf-8") as fh:
                fh.write(f"{job} {os.getpid()}\n")
        ctx.log(f"toy training {job}")
        if os.environ.get("EVALKIT_TOY_CRASH") == job:
            ctx.log("about to crash")
            os.kill(os.getpid(), signal.SIGSEGV)
        time.sleep(float(os.environ.get("EVALKIT_TOY_SLEEP", "0")))
        entry = ctx.cache.get(STAGE_KEY)
        reused = entry is not None
        if entry is None:
            mean = np.mean([f.load().reshape(-1, 3).mean(axis=0) for f in scene.train], axis=0)
            ctx.cache[STAGE_KEY] = {"mean": mean}
            entry = ctx.cache[STAGE_KEY]
        colour = np.clip(entry["mean"] * float(rate.params["scale"]) * float(ctx.config.get("gain", 1.0)), 0.0, 1.0)
        model = ToyModel(colour, int(rate.params["pad_bytes"]))
        model.reused = {"stage": entry.get("artefact", "in memory")} if reused else None
        return model


registry.METHODS["toy"] = f"{__name__}:SweepToy"
