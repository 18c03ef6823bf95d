"""Plain progress lines for output that is not a terminal (a log file, a batch job): a long job
says how it goes without flooding the log."""
from __future__ import annotations

from evalkit.progress_lines import ProgressLines


class FakeClock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def test_training_lines_come_every_tenth_of_the_iterations_or_every_minute() -> None:
    out, clock = [], FakeClock()
    lines = ProgressLines(out.append, every_s=60.0, every_fraction=0.1, clock=clock)
    lines.started("run", "m / d / s / low", "[1/2] ")
    lines.phase("run", "training")
    for it in range(1, 1001):  # fast: 0.25 s an iteration, so the fraction decides
        clock.t += 0.25
        lines.iteration("run", it, 1000, "loss 0.1")
    assert out[:2] == ["[1/2] m / d / s / low: started", "m / d / s / low: training"]
    its = [line for line in out if "iteration" in line]
    assert len(its) == 10 and its[0].startswith("m / d / s / low: iteration 100/1000 (10 %), 25s into the job")
    assert [int(line.split("iteration ")[1].split("/")[0]) for line in its] == list(range(100, 1001, 100))
    assert its[-1].startswith("m / d / s / low: iteration 1000/1000 (100 %), 4m10s into the job") and its[-1].endswith("  loss 0.1")

    out.clear()
    lines.started("run", "m / d / s / high")
    for it in range(1, 301):  # slow: 1 s an iteration, so also a line a minute between the tenths
        clock.t += 1.0
        lines.iteration("run", it, 1000)
    assert [line.split(" (")[0] for line in out[1:]] == [f"m / d / s / high: iteration {k}/1000" for k in (60, 100, 160, 200, 260, 300)]
    lines.iteration("run", 300, 1000)  # a repeated event prints nothing new
    assert len(out) == 7


def test_sources_are_tracked_apart() -> None:
    out, clock = [], FakeClock()
    lines = ProgressLines(out.append, clock=clock)
    lines.started("cpu0", "a", "cpu0 ")
    lines.started("cpu1", "b", "cpu1 ")
    lines.iteration("cpu0", 50, 100)
    lines.iteration("cpu1", 5, 100)  # 5 %: not yet
    lines.phase("cpu1", "encoding")
    assert out == ["cpu0 a: started", "cpu1 b: started", "a: iteration 50/100 (50 %), 0s into the job", "b: encoding"]
