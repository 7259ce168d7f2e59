"""vnet_tf.training.budget and train(time_budget_minutes=...): the planned length against a
brute-force count, the schedule following the plan inside a compiled step, and a run that
the budget ends (then resumes with the same and with a larger budget)."""

import dataclasses
import json
import random

import keras
import pytest
import tensorflow as tf

from vnet_tf.training.budget import BudgetClock, plan_total_steps
from vnet_tf.model.checkpoint import read_meta
from vnet_tf.training.optim import WarmupSchedule


def _brute_force(step, max_steps, remaining, per_step, every, per_validation):
    """Simulates each candidate end step by step, counting every validation it would run."""
    best = step
    for end in range(step + 1, max_steps + 1):
        spent = 0.0
        for i in range(step + 1, end + 1):
            spent += per_step
            if i % every == 0 or i == end:
                spent += per_validation
        if spent <= remaining:
            best = end
    return best


def test_plan_matches_a_brute_force_count():
    rng = random.Random(0)
    for _ in range(300):
        step, every = rng.randrange(0, 60), rng.randrange(1, 12)
        args = (step, step + rng.randrange(0, 50), rng.uniform(-1, 40), rng.uniform(0.1, 2), every,
                rng.choice([0.0, rng.uniform(0, 5)]))
        assert plan_total_steps(*args) == _brute_force(*args), args


def test_plan_edges_and_bad_values():
    assert plan_total_steps(10, 100, remaining_seconds=0.5, seconds_per_step=1.0, validation_every=5) == 10
    assert plan_total_steps(10, 12, remaining_seconds=1e9, seconds_per_step=1.0, validation_every=5) == 12
    # From step 15: steps 16..19 and the validation at the end (19) take 5 s; ending at 20
    # would take 6 s (5 steps + 1 validation), at 21 8 s (6 steps + validations at 20 and 21).
    assert plan_total_steps(15, 100, 5.0, 1.0, 5, seconds_per_validation=1.0) == 19
    assert plan_total_steps(15, 100, 6.0, 1.0, 5, seconds_per_validation=1.0) == 20
    assert plan_total_steps(15, 100, 7.9, 1.0, 5, seconds_per_validation=1.0) == 20
    with pytest.raises(ValueError, match="seconds_per_step"):
        plan_total_steps(0, 10, 5.0, 0.0, 5)
    with pytest.raises(ValueError, match="validation_every"):
        plan_total_steps(0, 10, 5.0, 1.0, 0)


def test_clock_counts_earlier_parts_and_carries_its_rates():
    clock = BudgetClock(100.0, elapsed_before=40.0, now=1000.0)
    assert clock.elapsed(1010.0) == 50.0
    assert clock.plan(0, 500, 10, now=1010.0, has_validation=True) == 500  # nothing measured yet
    clock.add_step(0.5)
    clock.add_step(1.5)
    clock.add_validation(4.0)
    assert clock.rates() == {"seconds_per_step": 1.0, "seconds_per_validation": 4.0}
    assert clock.plan(0, 500, 10, now=1010.0, has_validation=True) == plan_total_steps(0, 500, 50.0, 1.0, 10, 4.0)
    resumed = BudgetClock(100.0, 60.0, now=0.0)
    resumed.seed(**clock.rates())
    assert resumed.rates() == clock.rates()


def test_schedule_length_follows_a_variable_in_a_compiled_function():
    total = keras.Variable(1000.0, dtype="float32", trainable=False)
    schedule = WarmupSchedule("poly", 0.01, total, poly_power=0.9)
    compiled = tf.function(lambda s: schedule(s))
    assert float(compiled(500)) == pytest.approx(0.01 * 0.5 ** 0.9, rel=1e-5)
    total.assign(600.0)
    assert float(compiled(500)) == pytest.approx(0.01 * (100 / 600) ** 0.9, rel=1e-5)
    assert float(compiled(600)) == 0.0
    assert schedule.get_config()["total_steps"] == 600


def _learning_rates(run):
    events = sorted((run / "tensorboard").glob("events.out.tfevents.*"))
    rates = {}
    for path in events:
        for event in tf.compat.v1.train.summary_iterator(str(path)):
            for value in event.summary.value:
                if value.tag == "train/learning_rate":
                    rates[event.step] = float(tf.make_ndarray(value.tensor))
    return rates


class _FakeTime:
    """A clock that advances a fixed half second at every reading: the run's timing, and so its
    planned length, is the same on any machine, and no test waits for real time to pass."""

    def __init__(self):
        self.now = 1000.0

    def perf_counter(self):
        self.now += 0.5
        return self.now


def test_time_budget_ends_the_run_and_its_schedule(tmp_path, monkeypatch):
    from vnet_tf.training import loop, run as training
    from helpers import tiny_train_config
    from vnet_tf.training.config import OptimizerConfig
    from vnet_tf.training.loop import train
    fake = _FakeTime()
    monkeypatch.setattr(training, "time", fake)  # the step loop's clock
    monkeypatch.setattr(loop, "time", fake)  # where the budget starts counting
    budget_minutes = 0.5  # 30 s of the fake clock: a few dozen steps
    config = tiny_train_config(tmp_path, optimizer=OptimizerConfig("adam", 0.01, schedule="poly"), steps=100_000,
                               time_budget_minutes=budget_minutes, validation_every=4, checkpoint_every=2,
                               max_validation_cases=1)
    summary = train(config, log=lambda s: None, progress=False)
    steps = summary["steps"]
    assert summary["stopped_by_budget"] and 5 < steps < 100_000, summary["steps"]
    meta = read_meta(tmp_path / "run" / "checkpoint.npz")
    per_step, per_validation = meta["seconds_per_step"], meta["seconds_per_validation"]
    assert per_step > 0 and per_validation > 0
    # Over by at most one validation that started within the budget and the final saves ...
    assert summary["elapsed_seconds"] <= budget_minutes * 60 + per_validation + 2, summary
    # ... and it stops when one more step and the final validation would not fit.
    assert summary["elapsed_seconds"] >= budget_minutes * 60 - per_validation - per_step - 2, summary
    assert meta["step"] == steps == meta["planned_steps"] and meta["seconds_per_step"] > 0
    rates = _learning_rates(tmp_path / "run")
    assert max(rates) == steps
    assert rates[steps] < 0.25 * 0.01, rates[steps]  # the poly schedule ran (nearly) to its end
    assert rates[steps // 2] > 0.3 * 0.01, rates[steps // 2]

    before = (tmp_path / "run" / "summary.json").read_bytes()
    again = train(config, log=lambda s: None, progress=False)  # the budget is spent: no more steps
    assert again["steps"] == steps and again["already_finished"]
    assert (tmp_path / "run" / "summary.json").read_bytes() == before  # not rewritten with less

    more = train(dataclasses.replace(config, time_budget_minutes=budget_minutes + 0.25), log=lambda s: None,
                 progress=False)
    assert more["resumed_from_step"] == steps and more["steps"] > steps, more["steps"]
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["steps"] == more["steps"]


def test_negative_budget_is_refused():
    from vnet_tf.training.config import TrainConfig
    with pytest.raises(ValueError, match="time_budget_minutes must be >= 0"):
        TrainConfig(data_dir="x", workdir="y", time_budget_minutes=-1.0).validate()
    assert TrainConfig(data_dir="x", workdir="y", time_budget_minutes=5.0).validate().time_budget_minutes == 5.0


def _simulated_run(step_seconds, budget, window, checkpoint_every=100):
    """The training loop's use of the clock with injected step times (no sleeping): a plan at
    every checkpoint; returns (steps run, seconds used, {step: planned total})."""
    clock = BudgetClock(budget, 0.0, now=0.0, window=window)
    now, step, total, plans = 0.0, 0, 10**9, {}
    while step < total:
        seconds = step_seconds(now)
        now, step = now + seconds, step + 1
        clock.add_step(seconds)
        if step % checkpoint_every == 0:
            total = plans[step] = max(clock.plan(step, 10**9, 10**9, now, has_validation=False), step)
    return step, now, plans, clock


def _capacity(step_seconds, budget):
    """The most steps whose injected times fit in the budget."""
    steps, now = 0, 0.0
    while now + step_seconds(now) <= budget:
        now, steps = now + step_seconds(now), steps + 1
    return steps


def test_the_budget_follows_a_machine_that_speeds_up():
    """Slowed by other work for its first third (2 s per step), then 1 s: the run ends within
    one step of what fits, and its schedule's length is right long before the end. Planning
    at the run's mean speed (the old planner) ends short and plans the schedule short."""
    budget = 6000.0
    step_seconds = lambda now: 2.0 if now < budget / 3 else 1.0  # noqa: E731
    capacity = _capacity(step_seconds, budget)
    assert capacity == 1000 + 4000
    steps, used, plans, clock = _simulated_run(step_seconds, budget, window=100)
    assert capacity - 1 <= steps <= capacity and used <= budget
    two_thirds = max(s for s in plans if s <= 0.66 * capacity)
    assert plans[two_thirds] >= 0.99 * capacity, plans[two_thirds]  # the schedule knows its length
    speed = clock.speed()
    assert speed["seconds_per_step_recent"] == 1.0 and speed["seconds_per_step_recent_range"] == [1.0, 2.0]
    assert speed["seconds_per_step_mean"] == round(used / steps, 4)
    # The summary's record of the plan: behind while the slow third lasts, then on the steps run.
    planned = speed["planned_steps_at"]
    assert sorted(planned) == ["25%", "50%", "75%"]
    assert planned["25%"] < 0.8 * steps and abs(planned["50%"] - steps) <= 0.02 * steps and planned["75%"] == steps

    mean_steps, _, mean_plans, _ = _simulated_run(step_seconds, budget, window=10**9)
    assert mean_plans[two_thirds] < 0.95 * capacity  # what the recent rate fixes
    assert mean_steps <= steps
