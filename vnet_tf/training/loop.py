"""Training: data check -> cache -> tf.data patches -> (device) augmentation -> V-Net ->
Dice loss -> optimiser, with checkpoints that resume exactly, validation by sliding window,
TensorBoard logs, mixed precision and tf.distribute.

:func:`train` is what ``train.py`` calls; every setting is a field of :class:`TrainConfig`.

Exact resume: batch ``i`` of the input pipeline depends only on ``(seed, i)``; the
checkpoint holds the model, the optimiser (including its step and loss scale), and the
random-generator states of the model (dropout) and of the device-side augmentation. A
rerun of the same command continues from the latest checkpoint, and with
``deterministic=True`` (TensorFlow op determinism) it ends with the weights of an
uninterrupted run. Host-side augmentation draws ahead of the training step (prefetch), so
its draws after a resume are fresh ones: exact resume needs ``augment_on="device"``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import pathlib
import time
from typing import Callable, Optional, Tuple

import keras
import numpy as np
import tensorflow as tf

from vnet_tf.core.errors import UserError
from vnet_tf.augment import chain as aug_lib
from vnet_tf.model import averaging
from vnet_tf.training.budget import BudgetClock
from vnet_tf.data.cache import load_cached_case, preprocess_dataset
from vnet_tf.data.cases import check_fold, find_cases, split_cases
from vnet_tf.data.check import check_dataset
from vnet_tf.model import deep_supervision as ds_lib
from vnet_tf.core.folders import CHECKPOINT_TEMPORARIES, remove_stale, writable_folder
from vnet_tf.core.lock import folder_lock
from vnet_tf.inference.segmenter import InferenceConfig, Segmenter
from vnet_tf.core.labels import MAX_CLASSES
from vnet_tf.model.losses import dice_per_class
from vnet_tf.model.networks import build_network
from vnet_tf.model.registry import LOSSES
from vnet_tf.model.vnet import VNetConfig, check_spatial_shape
from vnet_tf.training.optim import OptimizerConfig, make_optimizer
from vnet_tf.training.pipeline import CaseStore, PipelineConfig, training_dataset
from vnet_tf.data.preprocess import PreprocessConfig
from vnet_tf.core.runtime import resolve_mixed_precision
from vnet_tf.training.logs import TrainingLogger
from vnet_tf.inference import workdir as run_files

MIXED_PRECISION = ("none", "mixed_float16", "mixed_bfloat16", "auto")
STRATEGIES = ("default", "mirrored", "multi_worker")
AUGMENT_ON = ("device", "host")


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    data_dir: str
    workdir: str
    cache_dir: str = ".cache"
    layout: str = "auto"
    num_classes: int = 0  # background included; 0 = declared by the dataset, else the label values found
    preprocess: PreprocessConfig = PreprocessConfig()
    model: VNetConfig = VNetConfig(base_width=8, depth=4, kernel_size=3, normalization="instance")
    loss: str = "dice_ce"
    include_background: bool = False
    dice_squared: bool = True
    batch_dice: bool = False
    deep_supervision: int = 0
    optimizer: OptimizerConfig = OptimizerConfig()
    weight_average: float = 0.0
    augment: aug_lib.AugmentConfig = aug_lib.AugmentConfig()
    augment_on: str = "device"
    patch_size_zyx: Tuple[int, int, int] = (32, 32, 32)
    batch_size: int = 2
    foreground_fraction: float = 1 / 3
    class_balance: bool = True
    steps: int = 200
    time_budget_minutes: float = 0.0
    validation_every: int = 100
    checkpoint_every: int = 50
    log_every: int = 10
    num_folds: int = 5
    fold: int = 0
    max_validation_cases: int = 0
    inference: InferenceConfig = InferenceConfig(overlap=0.25)
    seed: int = 0
    deterministic: bool = False
    mixed_precision: str = "none"
    strategy: str = "default"

    def validate(self) -> "TrainConfig":
        """Raises ``ValueError`` naming the setting, before any work."""
        LOSSES.check(self.loss)
        for name, value, allowed in (("mixed_precision", self.mixed_precision, MIXED_PRECISION),
                                     ("strategy", self.strategy, STRATEGIES), ("augment_on", self.augment_on, AUGMENT_ON)):
            if value not in allowed:
                raise UserError(f"{name} must be one of {allowed}, got {value!r}")
        for name in ("batch_size", "steps", "validation_every", "checkpoint_every", "log_every"):
            if getattr(self, name) < 1:
                raise UserError(f"{name} must be >= 1, got {getattr(self, name)!r}")
        if not 0 <= self.deep_supervision <= ds_lib.max_levels(self.model.depth):
            raise UserError(f"deep_supervision must be in [0, {ds_lib.max_levels(self.model.depth)}] "
                            f"(heads on right stages 1 .. depth - 2) for depth {self.model.depth}, "
                            f"got {self.deep_supervision}")
        if not self.time_budget_minutes >= 0:
            raise UserError(f"time_budget_minutes must be >= 0 (0 = no budget), got {self.time_budget_minutes!r}")
        if self.num_classes != 0 and not 2 <= self.num_classes <= MAX_CLASSES:
            raise UserError(f"num_classes must be 0 (from the dataset) or in [2, {MAX_CLASSES}], got {self.num_classes}")
        check_fold(self.fold, self.num_folds)
        self.preprocess.validate()
        self.optimizer.validate()
        averaging.check_momentum(self.weight_average)
        # The model's own checks, under the policy an explicit mixed_precision sets (auto is
        # resolved at build time, to float32 where the model needs it: see _precision).
        explicit = None if self.mixed_precision == "auto" else _mixed_policy(self.mixed_precision)
        dataclasses.replace(self.model, dtype_policy=explicit).resolved()
        check_spatial_shape(self.patch_size_zyx, self.model.depth)
        PipelineConfig(self.patch_size_zyx, self.batch_size, self.foreground_fraction).validate()
        dataclasses.replace(self.inference, patch_size_zyx=self.patch_size_zyx).validate()
        aug_lib.build_augmentation(self.augment, num_classes=self.model.num_classes)  # checks values
        return self

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def make_strategy(name: str):
    if name == "mirrored":
        return tf.distribute.MirroredStrategy()
    if name == "multi_worker":
        return tf.distribute.MultiWorkerMirroredStrategy()
    return tf.distribute.get_strategy()


def prepare_data(config: TrainConfig, log: Callable[[str], None]):
    """Checks every case (training and validation alike: each needs a label) and caches the
    dataset; returns ``(train_paths, val_paths, num_classes)``."""
    dataset = find_cases(config.data_dir, config.layout)
    if config.num_classes and dataset.labels and len(dataset.labels) != config.num_classes:
        raise UserError(f"num_classes {config.num_classes} differs from the {len(dataset.labels)} classes "
                        f"{dataset.root / 'dataset.json'} declares")
    report = check_dataset(dataset, num_classes=config.num_classes or None, require_labels=True)
    if not report.ok:
        raise UserError(f"the data check found unusable cases in {config.data_dir}:\n{report.summary()}")
    for warning in report.warnings[:5]:
        log(f"data check warning: {warning}")
    cases = dataset.cases
    train_cases, val_cases = split_cases(cases, config.num_folds, config.fold)
    if not train_cases:
        raise UserError(f"fold {config.fold} of {config.num_folds} leaves no training case out of {len(cases)}")
    if config.max_validation_cases:
        val_cases = val_cases[: config.max_validation_cases]
    paths = preprocess_dataset(train_cases + val_cases, config.preprocess, config.cache_dir)
    train_paths, val_paths = paths[: len(train_cases)], paths[len(train_cases):]
    return train_paths, val_paths, report.num_classes


def _mixed_policy(name):
    return None if name == "none" else name


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


def train(config: TrainConfig, log: Callable[[str], None] = print, progress: bool = True,
          on_end: Optional[Callable] = None, replay_flags: Optional[str] = None) -> dict:
    """Trains (or resumes) and writes into ``config.workdir``: ``config.json``,
    ``checkpoint.npz`` (the latest training state), ``best.npz`` (the weights of the best
    validation Dice; without validation, the final weights), ``tensorboard/`` and
    ``summary.json``; :mod:`vnet_tf.inference.workdir` reads them. With ``weight_average``,
    validation and ``best.npz`` use the weights' moving average (:mod:`vnet_tf.model.averaging`),
    and ``checkpoint.npz`` holds both. Returns the summary;
    ``on_end(model, strategy)`` is called with the trained model (tests inspect replicas).

    With ``time_budget_minutes``, ``steps`` is an upper bound: the run (and its learning-rate
    schedule) ends when the budget, counted from this call and over resumed parts, is spent
    (:mod:`vnet_tf.training.budget`).

    A workdir holds one run: rerunning it with other settings is refused, and rerunning a
    finished run changes nothing and returns its summary (``"already_finished": True``).
    ``replay_flags`` (the command's flags as text) is written to ``flags.txt`` once those
    checks pass. The workdir is locked for the whole call (:mod:`vnet_tf.core.lock`): a second
    process training there is refused. Errors the user can fix are :class:`~vnet_tf.core.errors.UserError`.

    The parts, in order: :func:`_open_workdir` (checks), :func:`prepare_data` (data check and
    cache), :func:`_build` (model, optimiser, augmentation, loss inside the strategy's scope),
    then a :class:`_Run`: :meth:`~_Run.restore`, :meth:`~_Run.start` (input pipeline,
    validation cases), :meth:`~_Run.loop` (steps, validation, checkpoints) and
    :meth:`~_Run.finish` (final models, summary)."""
    config.validate()
    clock_start = time.perf_counter()
    with folder_lock(writable_folder(config.workdir, "workdir"), "workdir"):
        return _train(config, clock_start, log, progress, on_end, replay_flags)


def _train(config: TrainConfig, clock_start: float, log: Callable[[str], None], progress: bool,
           on_end: Optional[Callable], replay_flags: Optional[str]) -> dict:
    """:func:`train` with the workdir locked."""
    workdir = _open_workdir(config, log)
    finished = _finished_summary(workdir, config, run_files.state_meta(workdir))
    if finished is not None:  # the caller says so (and which setting continues it)
        return finished
    keras.utils.set_random_seed(config.seed)
    if config.deterministic:
        tf.config.experimental.enable_op_determinism()

    train_paths, val_paths, num_classes = prepare_data(config, log)
    if replay_flags is not None:
        run_files.write_text(workdir, run_files.FLAGS_FILE, replay_flags)
    if num_classes < 2:
        raise UserError(f"{config.data_dir}: every label is empty (background only); expected at least one "
                        f"foreground class")
    parts = _build(config, train_paths, val_paths, num_classes, log)
    run = _Run(config, workdir, log, parts)
    run.restore(clock_start, bool(val_paths))
    run_files.write_json(workdir, run_files.CONFIG, parts.resolved)
    run.start(train_paths, val_paths, progress)
    run.loop()
    summary = run.finish()
    if on_end is not None:
        on_end(parts.model, parts.strategy)
    return summary


def _open_workdir(config: TrainConfig, log: Callable[[str], None]) -> pathlib.Path:
    """The run's folder, checked before any work: writable (and the cache's), cleared of a
    stopped run's temporaries, and holding no run with other settings."""
    workdir = pathlib.Path(config.workdir)
    writable_folder(config.cache_dir, "cache_dir")
    for stale in remove_stale(workdir, CHECKPOINT_TEMPORARIES):
        log(f"removed {stale.name}, a temporary file left by a stopped run")
    _check_same_run(workdir / run_files.CONFIG, config.to_dict())
    return workdir


@dataclasses.dataclass
class _Parts:
    """What a run trains with: built once, inside the distribution strategy's scope."""
    store: CaseStore
    resolved: dict  # config.json: the settings as resolved against the data, and the case split
    strategy: object
    model: keras.Model  # the V-Net that is validated, saved and exported
    train_model: keras.Model  # the V-Net, or the V-Net with deep-supervision heads (training only)
    planned_steps: keras.Variable  # the schedule's length, revised by the time budget
    optimizer: keras.optimizers.Optimizer
    average: Optional[averaging.WeightAverage]
    augmentation: Optional[aug_lib.Augmentation]
    loss_fn: keras.losses.Loss
    groups: dict  # the checkpoint's variable groups
    num_classes: int


def _precision(config: TrainConfig, log: Callable[[str], None]) -> str:
    """The mixed-precision policy to train in; ``auto`` picks float32 under ``recompute``,
    which Keras cannot combine with mixed precision (see :meth:`VNetConfig.resolved`)."""
    precision = resolve_mixed_precision(config.mixed_precision)
    if config.mixed_precision == "auto":
        if config.model.recompute and precision != "none":
            precision = "none"
            log("mixed precision auto: none (recompute needs float32)")
        else:
            log(f"mixed precision auto: {precision}")
    return precision


def _build(config: TrainConfig, train_paths, val_paths, num_classes: int, log: Callable[[str], None]) -> _Parts:
    store = CaseStore(train_paths)
    precision = _precision(config, log)
    model_config = dataclasses.replace(config.model, input_channels=store.channels, num_classes=num_classes,
                                       dtype_policy=_mixed_policy(precision))
    resolved = {"train": config.to_dict(), "num_classes": num_classes, "input_channels": store.channels,
                "model": dataclasses.asdict(model_config), "train_cases": [p.stem for p in train_paths],
                "validation_cases": [p.stem for p in val_paths]}
    strategy = make_strategy(config.strategy)
    replicas = strategy.num_replicas_in_sync
    if config.batch_size % replicas:
        raise UserError(f"batch_size {config.batch_size} must be divisible by the {replicas} replicas")
    with strategy.scope():
        network = build_network(model_config)
        model = network.model
        train_model = ds_lib.supervised_model(network, config.deep_supervision) if config.deep_supervision else model
        planned_steps = keras.Variable(float(config.steps), dtype="float32", trainable=False, name="planned_steps")
        optimizer = make_optimizer(config.optimizer, planned_steps, precision == "mixed_float16")
        optimizer.build(train_model.trainable_variables)
        average = averaging.WeightAverage(model.variables, config.weight_average) if config.weight_average else None
        references = None
        if config.augment.histogram_probability > 0:
            references = aug_lib.quantile_table([store.case(i).image for i in range(len(store))],
                                                num_landmarks=config.augment.histogram_landmarks)
        augmentation = aug_lib.build_augmentation(config.augment, num_classes, references, seed=config.seed)
    loss_fn = LOSSES.get(config.loss)(include_background=config.include_background, squared=config.dice_squared,
                                      batch=config.batch_dice, reduction="none")
    aug_states = [t.seed_generator.state for t in augmentation.transforms] if augmentation else []
    groups = {"model": model.variables, "optimizer": optimizer.variables, "augmentation": aug_states}
    if average is not None:
        groups[averaging.GROUP] = average.averages
        groups[averaging.UPDATES_GROUP] = [average.updates]
    if train_model is not model:
        groups["deep_supervision"] = ds_lib.head_variables(train_model, model)
    return _Parts(store, resolved, strategy, model, train_model, planned_steps, optimizer, average, augmentation,
                  loss_fn, groups, num_classes)


class _Run:
    """One run from its checkpoint to its summary; the state the step loop carries."""

    def __init__(self, config: TrainConfig, workdir: pathlib.Path, log: Callable[[str], None], parts: _Parts):
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
        restored = run_files.restore_state(self.workdir, self.parts.groups)
        if restored is not None:
            self.meta, count = restored
            self.start_step, self.best = int(self.meta["step"]), float(self.meta["best_score"])
            elapsed_before = float(self.meta.get("elapsed_seconds", 0.0))
            self.log(f"resumed from {self.workdir / run_files.CHECKPOINT} at step {self.start_step} "
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
        device_aug = parts.augmentation if config.augment_on == "device" else None
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
        self.step_fn = _make_step(parts.train_model, parts.optimizer, parts.loss_fn, device_aug, parts.strategy,
                                  config.batch_size, parts.average)
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
                run_files.save_best(self.workdir, self.parts.groups["model"], self.step, self.best)
        seconds = time.perf_counter() - started
        self.clock.add_validation(seconds)
        if self.budget and self.step < self.total:  # if it used up the budget, it was the last one
            self._replan()
        return seconds

    def _checkpoint(self, loss: float) -> None:
        run_files.save_state(self.workdir, self.parts.groups,
                        {"step": self.step, "best_score": self.best, "planned_steps": self.total,
                         "elapsed_seconds": self.clock.elapsed(time.perf_counter()), **self.clock.rates(),
                         "final_loss": loss, "validation_dice_per_class": _floats(self.last_scores)})

    def finish(self) -> dict:
        """Saves the final models and writes ``summary.json``; returns the summary."""
        config, workdir, step = self.config, self.workdir, self.step
        self.logger.close()
        if not (workdir / run_files.BEST).exists():  # no validation (--fold=-1): the final weights are the best
            with self._averaged():
                run_files.save_best(workdir, self.parts.groups["model"], step, self.best)
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
                   "peak_memory_mb": round(_peak_rss_mb(), 1), "workdir": str(workdir.resolve())}
        run_files.write_json(workdir, run_files.SUMMARY, summary)
        return summary


def strategy_is_chief(strategy) -> bool:
    resolver = getattr(strategy, "cluster_resolver", None)
    return resolver is None or resolver.task_type in (None, "chief") or (
        resolver.task_type == "worker" and resolver.task_id == 0)


def _make_step(model, optimizer, loss_fn, device_aug, strategy, global_batch, average=None):
    """The compiled training step; a model with several outputs (deep supervision) has its
    outputs' losses weighted by :func:`vnet_tf.model.deep_supervision.output_weights`. With a
    :class:`~vnet_tf.model.averaging.WeightAverage`, it is updated after the optimiser step."""
    weights = ds_lib.output_weights(len(model.outputs) - 1)
    transforms = [tf.function(layer.transform, jit_compile=True) if layer.compile_with_xla else layer.transform
                  for layer in (device_aug.transforms if device_aug else [])]

    def augment(batch):
        image, label = batch["image"], batch["label"]
        for transform in transforms:
            image, label = transform(image, label)
        return image, label

    def replica_step(batch):
        image, label = augment(batch)
        with tf.GradientTape() as tape:
            outputs = model(image, training=True)
            if isinstance(outputs, (list, tuple)):
                per_sample = ds_lib.multi_scale_loss(loss_fn, label, outputs, weights)
            else:
                per_sample = loss_fn(label, outputs)
            loss = tf.reduce_sum(per_sample) / global_batch
            scaled = optimizer.scale_loss(loss)
        grads = tape.gradient(scaled, model.trainable_variables)
        optimizer.apply(grads, model.trainable_variables)
        return loss

    @tf.function
    def step(batch):
        losses = strategy.run(replica_step, args=(batch,))
        if average is not None:
            average.update()
        return strategy.reduce(tf.distribute.ReduceOp.SUM, losses, axis=None)

    return step


def _floats(values):
    return None if values is None else [float(v) for v in values]


def _finished_summary(workdir: pathlib.Path, config: TrainConfig, meta: Optional[dict]) -> Optional[dict]:
    """The summary of the run in ``workdir`` where it has already done what ``config`` asks
    (its steps, or its time budget) and written its summary; else ``None``."""
    if not meta:
        return None
    try:
        summary = json.loads((workdir / run_files.SUMMARY).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None  # killed after its last checkpoint: the run writes its final models and summary
    if not isinstance(summary, dict) or summary.get("steps") != meta["step"]:
        return None
    # A budget that ended the run ends it again unless it grew (a step more would not fit).
    spent = bool(summary.get("stopped_by_budget")) and 0 < config.time_budget_minutes <= (
        summary.get("time_budget_minutes") or 0)
    if meta["step"] < config.steps and not spent:
        return None
    return {**summary, "already_finished": True}


def _check_same_run(config_file: pathlib.Path, settings: dict) -> None:
    """A workdir holds one run: resuming with other settings (apart from ``steps``,
    ``time_budget_minutes``, the workdir and cache folders, which may move, and
    ``model.recompute``, which changes memory, not results) is an error."""
    if not config_file.is_file() or not (config_file.parent / run_files.CHECKPOINT).is_file():
        return
    try:
        previous = json.loads(config_file.read_text(encoding="utf-8"))
        old = dict(previous["train"])
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise UserError(f"{config_file}: expected the settings of the run in this workdir (JSON with 'train'), "
                        f"found a truncated or corrupt file ({type(err).__name__}: {err}); restore it, or use "
                        f"another workdir") from err
    new = dict(json.loads(json.dumps(settings)))
    # Settings added after the run was written: it ran with their defaults.
    defaults = {f.name: f.default for f in dataclasses.fields(TrainConfig)
                if f.default is not dataclasses.MISSING and not dataclasses.is_dataclass(f.default)}
    old = {**{k: v for k, v in defaults.items() if k in new}, **old}
    for d in (old, new):  # the run's length, where its files live and its memory use may change
        for key in ("steps", "time_budget_minutes", "workdir", "cache_dir"):
            d.pop(key, None)
        if isinstance(d.get("model"), dict):
            d["model"] = {k: v for k, v in d["model"].items() if k != "recompute"}
    changed = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
    if changed:
        raise UserError(f"{config_file.parent} holds a run with other settings ({', '.join(changed)} differ); "
                        f"use another workdir, or the same settings to resume")


def _peak_rss_mb() -> float:
    import resource  # pylint: disable=import-outside-toplevel
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
