"""A wall-clock budget for training: how many steps fit in the time that is left.

With a budget, ``steps`` is an upper bound and the run's length (and with it the length of
the learning-rate schedule) is planned from the recent speed (a moving average over about
:data:`RECENT_STEPS` steps), so the schedule ends, decayed, when the budget does, on a fast
machine or a slow one, and on a machine that speeds up or slows down during the run (other
work on it): the plan follows the speed of the last minutes, not the run's average. The plan is revised while
training runs (every ``checkpoint_every`` steps and after each validation); it counts the
time of the validations still to come (every ``validation_every`` steps and one at the end) at the measured cost of
one validation. A budgeted run is therefore not bit-reproducible across machines: its
summary records the steps it ran, and ``--steps`` with no budget trains a run of that length.
"""

from __future__ import annotations

import math
from typing import Optional

RECENT_STEPS = 100  # the moving average's window, in steps
PLAN_MARKS = (0.25, 0.5, 0.75)  # the fractions of the budget at which the summary records the plan


def plan_total_steps(step: int, max_steps: int, remaining_seconds: float, seconds_per_step: float,
                     validation_every: int, seconds_per_validation: float = 0.0) -> int:
    """The step count to end at: the most steps after ``step`` (at most ``max_steps`` in all)
    whose training time and validations fit in ``remaining_seconds``; ``step`` itself when
    not one more step fits (stop now).

    ``n`` more steps cost ``n * seconds_per_step`` plus one validation at every multiple of
    ``validation_every`` in ``(step, step + n]`` and one at ``step + n`` if that is not one.
    """
    if seconds_per_step <= 0:
        raise ValueError(f"seconds_per_step must be > 0, got {seconds_per_step!r}")
    if validation_every < 1:
        raise ValueError(f"validation_every must be >= 1, got {validation_every!r}")
    if step >= max_steps or remaining_seconds <= 0:
        return min(step, max_steps)

    def cost(n):
        end = step + n
        validations = end // validation_every - step // validation_every + (end % validation_every != 0)
        return n * seconds_per_step + validations * seconds_per_validation

    # Upper estimate from the average cost per step, then walk down to what fits exactly.
    per_step = seconds_per_step + seconds_per_validation / validation_every
    n = min(max_steps - step, int(math.floor(remaining_seconds / per_step)) + 1)
    while n > 0 and cost(n) > remaining_seconds:
        n -= 1
    return step + n


class BudgetClock:
    """The time a run has used (this process and the parts before a resume) and its rates:
    the recent seconds per step (an exponential moving average that is the plain mean over
    the first ``window`` steps), the mean over the run, and the range the recent rate took."""

    def __init__(self, budget_seconds: float, elapsed_before: float, now: float, window: int = RECENT_STEPS):
        self.budget, self.before, self.started = float(budget_seconds), float(elapsed_before), float(now)
        self.window = int(window)
        self.validation_seconds, self.validations = 0.0, 0
        self.step_seconds, self.steps_timed = 0.0, 0
        self.recent: Optional[float] = None
        self.recent_range: Optional[list] = None
        self.plans_at: dict = {}  # the first plan made at or after each of PLAN_MARKS of the budget

    def seed(self, seconds_per_step, seconds_per_validation) -> None:
        """Starts the averages from rates a checkpoint recorded (``None``: not measured)."""
        if seconds_per_step:
            self.add_step(float(seconds_per_step))
        if seconds_per_validation:
            self.add_validation(float(seconds_per_validation))

    def rates(self) -> dict:
        """The rates a resumed part starts from, for a checkpoint (``None`` where nothing was
        measured): the recent seconds per step and the mean seconds per validation."""
        return {"seconds_per_step": self.recent,
                "seconds_per_validation": self.validation_seconds / self.validations if self.validations else None}

    def speed(self) -> dict:
        """How the speed varied, for the run's summary: the mean seconds per step over the
        steps timed, the recent rate at the end, the slowest and fastest recent rates that
        plans were made with, and the run's planned length when a quarter, half and three
        quarters of the budget were spent (``planned_steps_at``; plans of this process only)."""
        mean = self.step_seconds / self.steps_timed if self.steps_timed else None
        return {"seconds_per_step_mean": _rounded(mean), "seconds_per_step_recent": _rounded(self.recent),
                "seconds_per_step_recent_range": [_rounded(v) for v in self.recent_range] if self.recent_range else None,
                "steps_timed": self.steps_timed, "planned_steps_at": dict(self.plans_at)}

    def elapsed(self, now: float) -> float:
        return self.before + (now - self.started)

    def add_step(self, seconds: float) -> None:
        self.step_seconds += seconds
        self.steps_timed += 1
        weight = 1.0 / min(self.steps_timed, self.window)
        self.recent = seconds if self.recent is None else self.recent + weight * (seconds - self.recent)

    def add_validation(self, seconds: float) -> None:
        self.validation_seconds += seconds
        self.validations += 1

    def plan(self, step: int, max_steps: int, validation_every: int, now: float, has_validation: bool) -> int:
        """:func:`plan_total_steps` at the recent rate; ``max_steps`` until a step has been
        timed."""
        rates = self.rates()
        if rates["seconds_per_step"] is None:
            return max_steps
        low, high = self.recent_range or (self.recent, self.recent)
        self.recent_range = [min(low, self.recent), max(high, self.recent)]
        per_validation = (rates["seconds_per_validation"] or 0.0) if has_validation else 0.0
        spent = self.elapsed(now)
        planned = plan_total_steps(step, max_steps, self.budget - spent, rates["seconds_per_step"],
                                   validation_every, per_validation)
        for mark in PLAN_MARKS:
            if self.budget > 0 and spent >= mark * self.budget:
                self.plans_at.setdefault(f"{mark:.0%}", planned)
        return planned


def _rounded(value):
    return None if value is None else round(float(value), 4)
