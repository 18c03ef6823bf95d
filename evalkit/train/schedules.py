"""Learning-rate schedules shared by the trainers."""
from __future__ import annotations

import math


def log_lerp(init: float, final: float, step: int, max_steps: int) -> float:
    t = min(max(step / max(max_steps, 1), 0.0), 1.0)
    return math.exp(math.log(init) * (1 - t) + math.log(final) * t)
