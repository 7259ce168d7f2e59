"""The grid and network width that give a training run the steps it needs within a time budget
on the machine at hand (``vnet-plan --time_budget_minutes``).

The rule (:func:`choose`):

- **Steps needed**: ``STEPS_NEEDED`` (batch 2). On hippocampus the recipe's Dice rose until
  about 6,000 steps and was level from 14,000 to 19,600, and the 30-minute plan's width-8 run
  of 5,250 steps scored 0.013 / 0.014 below it, a width-12 run of 2,860 steps in the same 30
  minutes 0.005 / 0.003 below that (docs/results/hippocampus.md); on the left atrium the
  recipe's width-8 run of 4,757 steps scored level with a width-16 run of 3,480
  (docs/results/la2018.md). Short of the steps needed, steps buy more than width.
- **Candidates**, in order of preference: the finest grid first (the fingerprint's target spacing,
  then coarser by ``GRID_FACTORS`` while the grid keeps a Dice of ``1 - GRID_COST`` of the labels
  (:mod:`vnet_tf.data.grid_cost`)), and on each grid the widest network first (``WIDTHS``; on
  hippocampus a width of 12 scored level with 16). Each grid has its own patch and depth (the
  memory rule of :mod:`vnet_tf.training.plan`).
- **Timing**: the cheapest candidate of each width is measured first (a few real training steps
  on noise, :mod:`vnet_tf.training.step_timing`); every other candidate's step time is predicted
  from its width's in proportion to its multiply-adds (a narrow network does fewer operations a
  second), and the candidates are then measured in order of preference,
  skipping those predicted below ``SKIP_BELOW`` of the steps needed. The first candidate whose
  measured steps reach the steps needed is chosen; if none does (or ``MEASURE_SECONDS`` of
  measuring are spent), the measured candidate with the most steps.
- **Steps in the budget**: ``(1 - VALIDATION_SHARE)`` of the budget over the measured step time;
  the run validates ``VALIDATIONS`` times. The budget, not the step count, ends the run: the
  flagfile's ``--steps`` is ``STEP_CAP`` times the planned steps, the most a faster day may run.
"""

from __future__ import annotations

import dataclasses
import math
import time
from typing import Callable, List, Optional, Sequence, Tuple

STEPS_NEEDED = 6000
GRID_FACTORS = (1.0, 1.25, 1.5, 2.0, 2.5, 3.0, 4.0)
GRID_COST = 0.01
WIDTHS = (16, 12, 8)
SKIP_BELOW = 0.8
MEASURE_SECONDS = 120.0
VALIDATION_SHARE = 0.05
VALIDATIONS = 5
STEP_CAP = 2


@dataclasses.dataclass
class Candidate:
    """One grid and width, with its patch and depth and what is known of its speed."""
    spacing: Tuple[float, float, float]
    patch: Tuple[int, int, int]
    depth: int
    width: int
    multiply_adds: float  # of a training batch's forward pass
    memory_gb: float
    seconds: Optional[float] = None  # measured seconds per step

    def steps(self, budget_minutes: float, seconds: Optional[float] = None) -> int:
        """The training steps that fit the budget at ``seconds`` (default: the measured) a step."""
        return int(budget_minutes * 60.0 * (1.0 - VALIDATION_SHARE) / (seconds or self.seconds))

    def describe(self) -> str:
        grid = ",".join(format(s, ".4g") for s in self.spacing)
        return f"{grid} mm, patch {'x'.join(map(str, self.patch))}, depth {self.depth}, width {self.width}"


def grids_tried(base: Sequence[float], grid_dice: Callable[[Tuple[float, ...]], float]) -> List[Tuple[Tuple[float, ...], float]]:
    """``[(spacing, Dice kept)]``: ``base`` and each coarser grid (``GRID_FACTORS``) up to the
    first that keeps less than ``1 - GRID_COST`` of the labels' Dice (included, last)."""
    grids = [(tuple(float(s) for s in base), 1.0)]
    for factor in GRID_FACTORS[1:]:
        spacing = tuple(float(format(s * factor, ".4g")) for s in base)
        grids.append((spacing, grid_dice(spacing)))
        if grids[-1][1] < 1.0 - GRID_COST:
            break
    return grids


def admissible(dice: float) -> bool:
    return dice >= 1.0 - GRID_COST


@dataclasses.dataclass
class Choice:
    chosen: Candidate
    steps: int  # planned within the budget
    reason: str


def choose(candidates: Sequence[Candidate], budget_minutes: float, measure: Callable[[Candidate], float],
           clock: Callable[[], float] = time.monotonic) -> Choice:
    """The candidate to train (module docstring: the rule); ``candidates`` in order of
    preference; ``measure(candidate)`` returns its seconds per step."""
    candidates = list(candidates)
    started = clock()
    references = {}
    for candidate in sorted(candidates, key=lambda c: c.multiply_adds):
        if candidate.width not in references:
            references[candidate.width] = candidate
            candidate.seconds = measure(candidate)

    def predicted(candidate):
        reference = references[candidate.width]
        return reference.seconds * candidate.multiply_adds / reference.multiply_adds

    chosen = None
    for candidate in candidates:
        if candidate.seconds is None:
            if candidate.steps(budget_minutes, predicted(candidate)) < SKIP_BELOW * STEPS_NEEDED:
                continue
            if clock() - started > MEASURE_SECONDS:
                break
            candidate.seconds = measure(candidate)
        if candidate.steps(budget_minutes) >= STEPS_NEEDED:
            chosen = candidate
            break
    measured = [c for c in candidates if c.seconds is not None]
    if chosen is not None:
        why = (f"the first candidate, finest grid and widest network first, whose measured {chosen.seconds:.4g} s a "
               f"step gives the {STEPS_NEEDED} steps a run needs")
    else:
        chosen = max(measured, key=lambda c: (c.steps(budget_minutes), -candidates.index(c)))
        why = (f"no candidate reaches the {STEPS_NEEDED} steps a run needs in {budget_minutes:g} min: the one with "
               f"the most ({chosen.seconds:.4g} s a step measured)")
    steps = chosen.steps(budget_minutes)
    reason = (f"{why}: {chosen.describe()}, about {steps} steps in the {budget_minutes:g}-minute budget "
              f"(measured: " + "; ".join(f"{c.describe()}: {c.seconds:.4g} s" for c in measured) + ")")
    return Choice(chosen, steps, reason)


def validation_every(steps: int) -> int:
    """About ``VALIDATIONS`` validations over ``steps``, at a round number of steps."""
    every = max(1, steps // VALIDATIONS)
    scale = 10 ** max(0, int(math.log10(every)) - 1)
    return max(1, every // scale * scale)


def step_cap(steps: int) -> int:
    """``--steps`` for a budgeted run: ``STEP_CAP`` times the planned steps, rounded up to 1000."""
    return int(math.ceil(STEP_CAP * steps / 1000.0) * 1000)
