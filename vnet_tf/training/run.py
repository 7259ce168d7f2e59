"""One run from its checkpoint to its summary (:class:`Run`): the step loop, validation by
sliding window, checkpoints, the time budget's replanning and the final models."""

from __future__ import annotations

import contextlib
import dataclasses
import pathlib
import time
from typing import Callable

import keras
import numpy as np
import tensorflow as tf

from vnet_tf.core.runtime import peak_rss_mb
from vnet_tf.data.cache import load_cached_case
from vnet_tf.inference import run_folder
from vnet_tf.inference.segmenter import Segmenter
from vnet_tf.model.losses import dice_per_class
from vnet_tf.training.budget import BudgetClock
from vnet_tf.training.build import Parts
from vnet_tf.training.config import TrainConfig
from vnet_tf.training.logs import TrainingLogger
from vnet_tf.training.pipeline import PipelineConfig, training_dataset
from vnet_tf.training.step import strategy_is_chief


def validation_segmenter(model, config: TrainConfig, channels: int, num_classes: int) -> Segmenter:
    """The inference graph that validation runs on cached cases (no test-time mirroring or
    post-processing here, for cost; evaluate.py applies them)."""
    infer = dataclasses.replace(config.inference, patch_size_zyx=config.patch_size_zyx, mirror_axes=())
    return Segmenter(model, config.preprocess, infer, channels, num_classes)


def validate_cases(segmenter: Segmenter, cases, num_classes: int):
    """Per-case Dice per class (background first) on whole preprocessed volumes by sliding
    window, and the first case's (image, label, prediction) for image summaries."""
    scores, example = [], None
    for case in cases:
        probabilities = segmenter.sliding_window(tf.constant(case.image, tf.float32))
        prediction = keras.ops.convert_to_numpy(keras.ops.argmax(probabilities, axis=-1))
        hard = keras.ops.one_hot(prediction, num_classes)
        dice = keras.ops.convert_to_numpy(dice_per_class(case.label[None].astype(np.int32), hard[None], smooth=0))[0]
        scores.append(dice)
        if example is None:
            example = (case.image[..., 0], case.label, prediction)
    return np.asarray(scores), example


class Run:
    """One run from its checkpoint to its summary; the state the step loop carries."""

    def __init__(self, config: TrainConfig, workdir: pathlib.Path, log: Callable[[str], None], parts: Parts):
        self.config, self.workdir, self.log, self.parts = config, workdir, log, parts
        self.budget = config.time_budget_minutes * 60.0
        self.start_step, self.step, self.total, self.best, self.meta = 0, 0, config.steps, -1.0, {}
        self.last_scores, self.history = None, []
        # Steady-state rate: time in training steps only (no validation), after the first
        # steps (tracing).
        self.step_seconds, self.first_step_done = 0.0, None

    def restore(self, clock_start: float, has_validation: bool) -> None:
        """Continues from the latest checkpoint, if any, and plans the run's length (for the
        time budget given now, which may differ from the last part's)."""
        config, elapsed_before = self.config, 0.0
        restored = run_folder.restore_state(self.workdir, self.parts.groups)
        if restored is not None:
            self.meta, count = restored
            self.start_step, self.best = int(self.meta["step"]), float(self.meta["best_score"])
            elapsed_before = float(self.meta.get("elapsed_seconds", 0.0))
            self.log(f"resumed from {self.workdir / run_folder.CHECKPOINT} at step {self.start_step} "
                     f"({count} variables restored)")
        self.step = self.start_step
        self.clock = BudgetClock(self.budget, elapsed_before, clock_start)
        if self.budget and self.start_step:
            self.clock.seed(self.meta.get("seconds_per_step"), self.meta.get("seconds_per_validation"))
            self.total = max(self.clock.plan(self.start_step, config.steps, config.validation_every,
                                             time.perf_counter(), has_validation), self.start_step)
        self.parts.planned_steps.assign(float(self.total))

    def start(self, train_paths, val_paths, progress: bool) -> None:
        """The input pipeline at the run's next batch, the compiled step, the validation cases
        and the logger."""
        config, parts = self.config, self.parts
        pipeline = PipelineConfig(config.patch_size_zyx, config.batch_size, config.foreground_fraction,
                                  config.class_balance, config.seed)
        dataset = training_dataset(train_paths, pipeline, start_batch=self.start_step, store=parts.store,
                                   host_augmentation=parts.augmentation if config.augment_on == "host" else None,
                                   deterministic=config.deterministic)
        if config.strategy == "multi_worker":
            options = tf.data.Options()
            options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
            dataset = dataset.with_options(options)
        self.iterator = iter(parts.strategy.experimental_distribute_dataset(dataset))
        self.step_fn = parts.step(config)
        self.val_cases = [load_cached_case(p) for p in val_paths]
        self.validator = (validation_segmenter(parts.model, config, self.val_cases[0].image.shape[-1],
                                               parts.num_classes) if self.val_cases else None)
        self.logger = TrainingLogger(self.workdir / "tensorboard", self.total, self.start_step,
                                     progress and strategy_is_chief(parts.strategy), config.log_every)
        self.warm_steps = 10 if config.steps - self.start_step >= 20 else 1

    def loop(self) -> None:
        """Steps to the planned length, validating and checkpointing on the way."""
        config, self.started = self.config, time.perf_counter()
        while self.step < self.total:
            tick = time.perf_counter()
            loss = float(self.step_fn(next(self.iterator)))
            self.step += 1
            step = self.step
            timed = self.first_step_done is not None
            if timed:
                self.step_seconds += time.perf_counter() - tick
            elif step - self.start_step >= self.warm_steps:
                self.first_step_done = step
            self.history.append(loss)
            lr = float(keras.ops.convert_to_numpy(self.parts.optimizer.learning_rate))
            self.logger.step(step, loss, lr, config.batch_size)
            validating = bool(self.val_cases) and step % config.validation_every == 0
            if self.budget and step % config.checkpoint_every == 0 and not validating:
                self._replan()  # (at a validation step, once the validation's time is known)
            validation_seconds = 0.0
            if step % config.validation_every == 0 or step == self.total:
                validation_seconds = self._validate()
            if step % config.checkpoint_every == 0 or step == self.total:
                self._checkpoint(loss)
            if timed:  # the step, its logs and checkpoint: what each further step will cost
                self.clock.add_step(time.perf_counter() - tick - validation_seconds)
        self.seconds = time.perf_counter() - self.started

    def _replan(self) -> None:
        """The run's length for the time left (the schedule and progress bar follow it)."""
        planned = max(self.clock.plan(self.step, self.config.steps, self.config.validation_every,
                                      time.perf_counter(), bool(self.val_cases)), self.step)
        self.parts.planned_steps.assign(float(planned))
        self.logger.bar.target = planned
        self.total = planned

    def _averaged(self):
        """The model holds the weight average (where there is one) inside the block."""
        return self.parts.average.applied() if self.parts.average is not None else contextlib.nullcontext()

    def _validate(self) -> float:
        """Scores the validation cases, keeps the best weights; returns the seconds it took."""
        if not self.val_cases:
            return 0.0
        started = time.perf_counter()
        with self._averaged():
            scores, example = validate_cases(self.validator, self.val_cases, self.parts.num_classes)
            self.last_scores = scores.mean(axis=0)
            score = float(self.last_scores[1:].mean())
            self.logger.validation(self.step, self.last_scores, example)
            if score > self.best:
                self.best = score
                run_folder.save_best(self.workdir, self.parts.groups["model"], self.step, self.best)
        seconds = time.perf_counter() - started
        self.clock.add_validation(seconds)
        if self.budget and self.step < self.total:  # if it used up the budget, it was the last one
            self._replan()
        return seconds

    def _checkpoint(self, loss: float) -> None:
        run_folder.save_state(self.workdir, self.parts.groups,
                        {"step": self.step, "best_score": self.best, "planned_steps": self.total,
                         "elapsed_seconds": self.clock.elapsed(time.perf_counter()), **self.clock.rates(),
                         "final_loss": loss, "validation_dice_per_class": _floats(self.last_scores)})

    def finish(self) -> dict:
        """Saves the final models and writes ``summary.json``; returns the summary."""
        config, workdir, step = self.config, self.workdir, self.step
        self.logger.close()
        if not (workdir / run_folder.BEST).exists():  # no validation (--fold=-1): the final weights are the best
            with self._averaged():
                run_folder.save_best(workdir, self.parts.groups["model"], step, self.best)
        seconds, ran = self.seconds, step - self.start_step
        summary = {"steps": step, "resumed_from_step": self.start_step, "seconds_this_run": round(seconds, 1),
                   "steps_per_second": round(ran / seconds, 4) if seconds > 0 and ran > 0 else None,
                   "steps_per_second_steady": (round((step - self.first_step_done) / self.step_seconds, 4)
                                               if self.first_step_done is not None and self.step_seconds > 0
                                               else None),
                   # (a resumed run that had no step left to take reports its checkpoint's figures)
                   "final_loss": self.history[-1] if self.history else self.meta.get("final_loss"),
                   "loss_history": self.history,
                   "validation_dice_per_class": (_floats(self.last_scores) if self.last_scores is not None
                                                 else self.meta.get("validation_dice_per_class")),
                   "best_validation_dice": self.best if self.best >= 0 else None,
                   "time_budget_minutes": config.time_budget_minutes or None,
                   "weight_average": config.weight_average or None,
                   "elapsed_seconds": round(self.clock.elapsed(time.perf_counter()), 1),
                   "stopped_by_budget": bool(self.budget) and step < config.steps,
                   "speed": self.clock.speed(),
                   "peak_memory_mb": round(peak_rss_mb(), 1), "workdir": str(workdir.resolve())}
        run_folder.write_json(workdir, run_folder.SUMMARY, summary)
        return summary


def _floats(values):
    return None if values is None else [float(v) for v in values]
