"""What a run trains on and with: the data checked and cached (:func:`prepare_data`), then the
model, optimiser, augmentation and loss built inside the strategy's scope (:func:`build_parts`)."""

from __future__ import annotations

import dataclasses
from typing import Callable, Optional

import keras

from vnet_tf.augment import chain as aug_lib
from vnet_tf.core.errors import UserError
from vnet_tf.core.runtime import resolve_mixed_precision
from vnet_tf.data.cache import preprocess_dataset
from vnet_tf.data.cases import find_cases, split_cases
from vnet_tf.data.check import check_dataset
from vnet_tf.model import averaging
from vnet_tf.model import deep_supervision as ds_lib
from vnet_tf.model.networks import build_network
from vnet_tf.model.registry import LOSSES
from vnet_tf.training.config import TrainConfig, mixed_policy
from vnet_tf.training.optim import make_optimizer
from vnet_tf.training.pipeline import CaseStore
from vnet_tf.training.step import make_step, make_strategy


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


def training_precision(config: TrainConfig, log: Callable[[str], None]) -> str:
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


@dataclasses.dataclass
class Training:
    """What a training step runs with, built from the settings, the channel and class counts
    alone (no data): :func:`build_parts` for a run, and the planner's step timing."""
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
    model_config: object  # the VNetConfig as resolved (channels, classes, precision)

    def step(self, config: TrainConfig):
        """The compiled training step (:func:`~vnet_tf.training.step.make_step`), with the
        augmentation on the device where ``config.augment_on`` puts it there."""
        device_aug = self.augmentation if config.augment_on == "device" else None
        return make_step(self.train_model, self.optimizer, self.loss_fn, device_aug, self.strategy,
                         config.batch_size, self.average)


@dataclasses.dataclass
class Parts(Training):
    """What a run trains with: :class:`Training` and its data."""
    store: CaseStore
    resolved: dict  # config.json: the settings as resolved against the data, and the case split


def build_parts(config: TrainConfig, train_paths, val_paths, num_classes: int, log: Callable[[str], None]) -> Parts:
    store = CaseStore(train_paths)
    references = None
    if config.augment.histogram_probability > 0:
        references = aug_lib.quantile_table([store.case(i).image for i in range(len(store))],
                                            num_landmarks=config.augment.histogram_landmarks)
    parts = build_training(config, store.channels, num_classes, log, references)
    # Each setting once, with the value the run used: the model's channels, classes and
    # precision as read from the data and resolved, in place of their placeholders.
    resolved = {"train": {**config.to_dict(), "model": dataclasses.asdict(parts.model_config)},
                "train_cases": [p.stem for p in train_paths], "validation_cases": [p.stem for p in val_paths]}
    return Parts(**{f.name: getattr(parts, f.name) for f in dataclasses.fields(Training)}, store=store,
                 resolved=resolved)


def build_training(config: TrainConfig, channels: int, num_classes: int, log: Callable[[str], None],
                   references=None) -> Training:
    """The model, optimiser, augmentation and loss inside the strategy's scope; ``references``:
    the histogram-matching targets (needed only where that augmentation is on)."""
    precision = training_precision(config, log)
    model_config = dataclasses.replace(config.model, input_channels=channels, num_classes=num_classes,
                                       dtype_policy=mixed_policy(precision))
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
    return Training(strategy, model, train_model, planned_steps, optimizer, average, augmentation, loss_fn, groups,
                    num_classes, model_config)
