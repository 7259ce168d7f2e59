"""The settings of a training run: :class:`TrainConfig`, each field checked by
:meth:`TrainConfig.validate` before any work (``train.py``'s flags build it)."""

from __future__ import annotations

import dataclasses
from typing import Tuple

from vnet_tf.augment import chain as aug_lib
from vnet_tf.core.errors import UserError
from vnet_tf.core.labels import MAX_CLASSES
from vnet_tf.data.cases import check_fold
from vnet_tf.data.preprocess import PreprocessConfig
from vnet_tf.inference.config import InferenceConfig
from vnet_tf.model import averaging
from vnet_tf.model import deep_supervision as ds_lib
from vnet_tf.model.registry import LOSSES
from vnet_tf.model.vnet import VNetConfig, check_spatial_shape
from vnet_tf.training.optim import OptimizerConfig
from vnet_tf.training.pipeline import PipelineConfig

MIXED_PRECISION = ("none", "mixed_float16", "mixed_bfloat16", "auto")
STRATEGIES = ("default", "mirrored", "multi_worker")
AUGMENT_ON = ("device", "host")


def mixed_policy(name):
    """The Keras dtype policy a ``mixed_precision`` setting names (``None``: float32)."""
    return None if name == "none" else name


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
        graph = {"image_interpolation": "linear", "label_interpolation": "nearest"}  # what inference reproduces
        for name, served in graph.items():
            if getattr(self.preprocess, name) != served:
                raise UserError(f"preprocess.{name} {getattr(self.preprocess, name)!r}: the inference graph "
                                f"(evaluate, predict, serving) resamples with {served!r} only, so a run trained "
                                f"with another would be scored and served on inputs it never saw; use {served!r}")
        self.optimizer.validate()
        averaging.check_momentum(self.weight_average)
        # The model's own checks, under the policy an explicit mixed_precision sets (auto is
        # resolved at build time, to float32 where the model needs it: see _precision).
        explicit = None if self.mixed_precision == "auto" else mixed_policy(self.mixed_precision)
        dataclasses.replace(self.model, dtype_policy=explicit).resolved()
        check_spatial_shape(self.patch_size_zyx, self.model.depth)
        PipelineConfig(self.patch_size_zyx, self.batch_size, self.foreground_fraction).validate()
        dataclasses.replace(self.inference, patch_size_zyx=self.patch_size_zyx).validate()
        aug_lib.build_augmentation(self.augment, num_classes=self.model.num_classes)  # checks values
        return self

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)
