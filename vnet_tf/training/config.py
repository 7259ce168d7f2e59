"""The settings of a training run: :class:`TrainConfig` and its :class:`OptimizerConfig`, each
field checked by :meth:`TrainConfig.validate` before any work. Each field declares its
``train.py`` flag (:mod:`vnet_tf.core.settings`): the flags, the flag reference and the
planner's flagfiles are generated from these fields. Importing this module does not import
TensorFlow, so that the flags are defined before it loads."""

from __future__ import annotations

import dataclasses
from typing import Tuple

from vnet_tf.augment.config import NNUNET_KEPT, AugmentConfig
from vnet_tf.core.errors import UserError
from vnet_tf.core.labels import MAX_CLASSES
from vnet_tf.core.settings import Flag, flag, group, no_flag
from vnet_tf.data.cases import FOLDER_LAYOUTS, check_fold
from vnet_tf.data.preprocess import PreprocessConfig
from vnet_tf.inference.config import InferenceConfig
from vnet_tf.inference.segmentation import POSTPROCESS_MODES
from vnet_tf.model.config import VNetConfig, required_divisor
from vnet_tf.model.registry import LOSSES

MIXED_PRECISION = ("none", "mixed_float16", "mixed_bfloat16", "auto")
STRATEGIES = ("default", "mirrored", "multi_worker")
AUGMENT_ON = ("device", "host")
OPTIMIZERS = ("sgd", "adam", "adamw")
SCHEDULES = ("constant", "step", "poly", "cosine")
PATCH_SIZE = InferenceConfig.patch_size_zyx  # the one default patch, training's and inference's


def mixed_policy(name):
    """The Keras dtype policy a ``mixed_precision`` setting names (``None``: float32)."""
    return None if name == "none" else name


@dataclasses.dataclass(frozen=True)
class OptimizerConfig:
    """The optimiser and its learning-rate schedule (:mod:`vnet_tf.training.optim`)."""

    name: str = flag("adam", name="optimizer", help="optimiser", choices=OPTIMIZERS)
    learning_rate: float = flag(3e-3, name="learning_rate", help="initial learning rate", lower=0.0)
    momentum: float = flag(0.99, name="momentum", help="SGD momentum", lower=0.0)
    nesterov: bool = flag(False, name="nesterov", help="Nesterov momentum (SGD)")
    weight_decay: float = flag(0.0, name="weight_decay", help="weight decay", lower=0.0)
    schedule: str = flag("constant", name="lr_schedule", help="learning-rate schedule", choices=SCHEDULES)
    decay_steps: int = flag(25_000, name="lr_decay_steps", help="step schedule: decay every this many steps",
                            lower=0)
    decay_factor: float = flag(0.1, name="lr_decay_factor", help="step schedule: multiply by this")
    poly_power: float = flag(0.9, name="poly_power", help="poly schedule power")
    warmup_steps: int = flag(0, name="warmup_steps", help="linear warm-up steps", lower=0)
    clipnorm: float = flag(0.0, name="clipnorm", help="clip each gradient to this norm (0 = off)", lower=0.0)

    def validate(self) -> "OptimizerConfig":
        if self.name not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {self.name!r}")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"lr_schedule must be one of {SCHEDULES}, got {self.schedule!r}")
        if not self.learning_rate > 0:
            raise ValueError(f"learning_rate must be > 0, got {self.learning_rate!r}")
        if not 0 <= self.momentum < 1:
            raise ValueError(f"momentum must be in [0, 1), got {self.momentum!r}")
        if self.weight_decay < 0:
            raise ValueError(f"weight_decay must be >= 0, got {self.weight_decay!r}")
        if self.decay_steps < 1 or not 0 < self.decay_factor <= 1:
            raise ValueError(f"lr decay needs decay_steps >= 1 and decay_factor in (0, 1], got "
                             f"{self.decay_steps!r}, {self.decay_factor!r}")
        if self.warmup_steps < 0:
            raise ValueError(f"warmup_steps must be >= 0, got {self.warmup_steps!r}")
        return self


# train.py's flags for the run's sliding-window settings (InferenceConfig serves evaluate.py,
# predict.py and export.py too, whose flags override a run's).
_INFERENCE_FLAGS = {
    "overlap": Flag("val_overlap", "sliding-window overlap at validation", lower=0.0, upper=0.95),
    "mirror_axes": Flag("mirror_axes", "test-time mirroring axes, stored for evaluate.py"),
    "postprocess": Flag("postprocess", "post-processing, stored for evaluate.py", choices=POSTPROCESS_MODES),
}
_INFERENCE_NO_FLAGS = {
    "patch_size_zyx": "the run's patch_size_zyx (set from it; config.json holds it once)",
    "batch_size": "evaluate.py --window_batch", "blend": "Gaussian blending only",
    "sigma_scale": "nnU-Net's 1/8 of the patch", "min_size": "with --postprocess=min_size, not yet a flag",
}


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Every setting of a training run. ``inference.patch_size_zyx`` is always the run's
    ``patch_size_zyx`` (one patch size), and :meth:`to_dict` writes it once."""

    data_dir: str = flag(name="data_dir", help="dataset folder; empty = the embedded demo dataset", stage="data",
                         flag_default="")
    workdir: str = flag(name="workdir", help="where the run writes its outputs", stage="data",
                        flag_default="runs/demo")
    cache_dir: str = flag(".cache", name="cache_dir", help="preprocessed-case cache (and the demo dataset)",
                          stage="data")
    layout: str = flag("auto", name="layout", help="dataset layout", stage="data", choices=FOLDER_LAYOUTS)
    num_classes: int = flag(0, name="num_classes", stage="data", lower=0, help=(
        "classes, background included; 0 = those dataset.json declares, else the label values found, which must "
        "then be 0..K-1 without gaps"))
    preprocess: PreprocessConfig = group(PreprocessConfig(), "data")
    model: VNetConfig = group(VNetConfig(base_width=8, depth=4, kernel_size=3, normalization="instance"), "model")
    loss: str = flag("dice_ce", name="loss", stage="loss", choices=LOSSES, help=(
        "the paper's Dice loss, or Dice + cross-entropy (or a loss registered in vnet_tf.model.registry.LOSSES)"))
    include_background: bool = flag(False, name="include_background", stage="loss",
                                    help="count the background class in the Dice loss")
    dice_squared: bool = flag(True, name="dice_squared", stage="loss",
                              help="the paper's sum p^2 + sum g^2 Dice denominator (false: sum p + sum g)")
    batch_dice: bool = flag(False, name="batch_dice", stage="loss", kept=NNUNET_KEPT,
                            help="one Dice over the whole batch (nnU-Net) instead of one per sample")
    deep_supervision: int = flag(0, name="deep_supervision", stage="loss", lower=0, kept=NNUNET_KEPT,
                                 help="softmax heads on right stages 1..N, trained only (0 = off)")
    optimizer: OptimizerConfig = group(OptimizerConfig(), "loss")
    weight_average: float = flag(0.0, name="weight_average", stage="loss", kept=(
        "level with the last weights at the end of the recipe's poly schedule (docs/results/hippocampus.md); kept "
        "for constant and step schedules, whose last weights move more"), help=(
        "momentum of a moving average of the weights, used for validation and the saved models (0 = off, "
        "e.g. 0.999)"))
    augment: AugmentConfig = group(AugmentConfig(), "augmentation")
    augment_on: str = flag("device", name="augment_on", stage="augmentation", choices=AUGMENT_ON,
                           help="augment inside the training step or in tf.data")
    patch_size_zyx: Tuple[int, int, int] = flag(PATCH_SIZE, name="patch_size", stage="data", positive=True,
                                                help="training patch, z,y,x voxels")
    batch_size: int = flag(2, name="batch_size", stage="run", lower=1,
                           help="patches per step (global, split over replicas)")
    foreground_fraction: float = flag(1 / 3, name="foreground_fraction", stage="run", lower=0.0, upper=1.0,
                                      help="patches centred on foreground")
    class_balance: bool = no_flag(True, "patch centres drawn over the classes present (nnU-Net's); the library's "
                                  "switch")
    steps: int = flag(200, name="steps", stage="run", lower=1, help="training steps")
    time_budget_minutes: float = flag(0.0, name="time_budget_minutes", stage="run", lower=0.0, help=(
        "stop training when this much wall time (over resumes) is spent, the schedule planned to end then; "
        "--steps becomes an upper bound (0 = off)"))
    validation_every: int = flag(100, name="validation_every", stage="run", lower=1,
                                 help="validate every this many steps")
    checkpoint_every: int = flag(50, name="checkpoint_every", stage="run", lower=1,
                                 help="checkpoint every this many steps")
    log_every: int = flag(10, name="log_every", stage="run", lower=1,
                          help="TensorBoard's steps/s and patches/s every this many steps")
    num_folds: int = flag(5, name="num_folds", stage="data", lower=2, help="cross-validation folds (case-id hash)")
    fold: int = flag(0, name="fold", stage="data", lower=-1, help=(
        "the validation fold; -1 = train on every case, no validation (the final model; its last weights are "
        "also best.npz)"))
    max_validation_cases: int = flag(0, name="max_validation_cases", stage="data", lower=0,
                                     help="validate on at most this many cases (0 = all)")
    inference: InferenceConfig = group(InferenceConfig(patch_size_zyx=PATCH_SIZE, overlap=0.25), "run",
                                       _INFERENCE_FLAGS, _INFERENCE_NO_FLAGS)
    seed: int = flag(0, name="seed", stage="run", help="random seed")
    deterministic: bool = flag(False, name="deterministic", stage="run",
                               help="deterministic ops: the same weights on every run and after a resume")
    mixed_precision: str = flag("none", name="mixed_precision", stage="run", choices=MIXED_PRECISION, help=(
        "mixed precision; auto = mixed_bfloat16 on a CPU with native bfloat16 (AVX512-BF16 or AMX) and no GPU, "
        "else none"))
    strategy: str = flag("default", name="strategy", stage="run", choices=STRATEGIES,
                         help="tf.distribute strategy")

    def __post_init__(self):
        if tuple(self.inference.patch_size_zyx) != tuple(self.patch_size_zyx):
            object.__setattr__(self, "inference",
                               dataclasses.replace(self.inference, patch_size_zyx=tuple(self.patch_size_zyx)))

    def validate(self) -> "TrainConfig":
        """Raises ``ValueError`` naming the setting, before any work."""
        # pylint: disable=import-outside-toplevel  (TensorFlow loads once the flags are parsed)
        from vnet_tf.augment import chain as aug_lib
        from vnet_tf.model import averaging
        from vnet_tf.model import deep_supervision as ds_lib
        from vnet_tf.training.pipeline import PipelineConfig
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
        if self.preprocess.image_interpolation != "linear":  # what inference reproduces
            raise UserError(f"preprocess.image_interpolation {self.preprocess.image_interpolation!r}: the inference "
                            f"graph (evaluate, predict, serving) resamples with 'linear' only, so a run trained with "
                            f"another would be scored and served on inputs it never saw; use 'linear'")
        self.optimizer.validate()
        averaging.check_momentum(self.weight_average)
        # The model's own checks, under the policy an explicit mixed_precision sets (auto is
        # resolved at build time, to float32 where the model needs it: see _precision).
        explicit = None if self.mixed_precision == "auto" else mixed_policy(self.mixed_precision)
        dataclasses.replace(self.model, dtype_policy=explicit).resolved()
        if any(size % required_divisor(self.model.depth) for size in self.patch_size_zyx):
            raise UserError(f"patch_size_zyx {tuple(self.patch_size_zyx)} must be multiples of "
                            f"{required_divisor(self.model.depth)} (2**(depth-1), the model's depth "
                            f"{self.model.depth})")
        PipelineConfig(self.patch_size_zyx, self.batch_size, self.foreground_fraction).validate()
        self.inference.validate()
        aug_lib.build_augmentation(self.augment.validate(), num_classes=self.model.num_classes)  # checks values
        return self

    def to_dict(self) -> dict:
        """Every setting once: the inference settings without their copy of the patch size."""
        out = dataclasses.asdict(self)
        del out["inference"]["patch_size_zyx"]
        return out
