"""Dice loss as the V-Net paper defines it, and a Dice + cross-entropy combination.

For class c of sample b, with softmax probabilities p and one-hot ground truth g summed
over the voxels i of that sample::

    D[b, c] = (2 * sum_i p_i g_i + smooth) / (sum_i p_i^2 + sum_i g_i^2 + smooth)

(``squared=False`` uses ``sum p + sum g`` in the denominator). The loss of a sample is
``1 - weighted mean over classes of D[b, c]``; Keras then averages over the batch, so
each sample's Dice counts once (a mean, never a sum, over the batch). ``batch=True``
(nnU-Net's "batch Dice") sums over the voxels of the whole batch instead, as if it were
one volume, and gives every sample that one loss.

All sums run in float32 whatever the model's compute dtype: half-precision sums over a
volume overflow. With ``smooth > 0`` an empty prediction of an empty class scores
D = 1 (loss 0); with ``smooth = 0`` a zero denominator is clamped and scores D = 0.

The functions hold the maths; the ``keras.losses.Loss`` classes hold the options and
serialise with the model.
"""

from __future__ import annotations

from typing import Optional, Sequence

import keras
from keras import ops

LABEL_FORMATS = ("auto", "integer", "one_hot")
_DENOMINATOR_FLOOR = 1e-12
_LOG_FLOOR = 1e-7


def _validate_options(smooth, label_format, class_weights) -> None:
    if isinstance(smooth, bool) or not float(smooth) >= 0.0:
        raise ValueError(f"smooth must be a number >= 0, got {smooth!r}")
    if label_format not in LABEL_FORMATS:
        raise ValueError(f"label_format must be one of {LABEL_FORMATS}, got {label_format!r}")
    if class_weights is not None:
        weights = [float(w) for w in class_weights]
        if any(w < 0 for w in weights) or sum(weights) <= 0:
            raise ValueError(
                f"class_weights must be >= 0 with a positive sum, got {list(class_weights)}"
            )


def one_hot_labels(y_true, num_classes: int, rank: int, label_format: str = "auto"):
    """Returns float32 one-hot labels of rank ``rank`` (channels last).

    ``y_true`` is either integer class ids of shape ``(batch, *spatial)`` or
    ``(batch, *spatial, 1)``, or one-hot / soft labels ``(batch, *spatial, num_classes)``.
    ``label_format="auto"`` decides from the shape: a last axis of ``num_classes`` entries
    at the prediction's rank is one-hot, anything else is integer ids.
    """
    shape = tuple(y_true.shape)
    one_hot_shape = len(shape) == rank and shape[-1] == num_classes
    if label_format == "auto":
        label_format = "one_hot" if one_hot_shape else "integer"
    if label_format == "one_hot":
        if not one_hot_shape:
            raise ValueError(
                f"one-hot labels need shape (batch, ..., {num_classes}) at rank {rank}, "
                f"got {shape}"
            )
        return ops.cast(y_true, "float32")
    if len(shape) == rank and shape[-1] == 1:
        y_true = ops.squeeze(y_true, axis=-1)
    elif len(shape) != rank - 1:
        raise ValueError(
            f"integer labels need shape (batch, ...spatial) or (batch, ...spatial, 1) "
            f"for predictions of rank {rank}, got {shape}"
        )
    return ops.one_hot(ops.cast(y_true, "int32"), num_classes, dtype="float32")


def dice_per_class(y_true, y_pred, *, squared: bool = True, smooth: float = 1e-5,
                   label_format: str = "auto", batch: bool = False):
    """Soft Dice of every sample and class: float32 of shape ``(batch, num_classes)``;
    with ``batch=True`` one Dice per class over the whole batch, shape ``(1, num_classes)``."""
    _validate_options(smooth, label_format, None)
    y_pred = ops.cast(y_pred, "float32")
    rank = len(y_pred.shape)
    target = one_hot_labels(y_true, y_pred.shape[-1], rank, label_format)
    axes = tuple(range(0 if batch else 1, rank - 1))
    intersection = ops.sum(y_pred * target, axis=axes)
    if squared:
        denominator = ops.sum(ops.square(y_pred), axis=axes) + ops.sum(ops.square(target), axis=axes)
    else:
        denominator = ops.sum(y_pred, axis=axes) + ops.sum(target, axis=axes)
    denominator = ops.maximum(denominator + smooth, _DENOMINATOR_FLOOR)
    dice = (2.0 * intersection + smooth) / denominator
    return dice[None] if batch else dice


def _class_weight_vector(num_classes: int, include_background: bool,
                         class_weights: Optional[Sequence[float]]):
    scored = num_classes if include_background else num_classes - 1
    if scored < 1:
        raise ValueError(
            f"include_background=False leaves no class to score with {num_classes} "
            f"output channel(s); use include_background=True or more classes"
        )
    if class_weights is None:
        weights = [1.0] * scored
    else:
        weights = [float(w) for w in class_weights]
        if len(weights) != scored:
            raise ValueError(
                f"class_weights needs one entry per scored class ({scored}: "
                f"{num_classes} classes, include_background={include_background}), "
                f"got {len(weights)}: {weights}"
            )
    if not include_background:
        weights = [0.0] + weights
    return ops.convert_to_tensor(weights, dtype="float32")


def dice_loss(y_true, y_pred, *, include_background: bool = True, squared: bool = True,
              smooth: float = 1e-5, class_weights: Optional[Sequence[float]] = None,
              label_format: str = "auto", batch: bool = False):
    """Per-sample Dice loss ``1 - mean_c D[b, c]``: float32 of shape ``(batch,)``.

    Args:
      y_true: integer labels ``(batch, D, H, W)`` / ``(batch, D, H, W, 1)`` or one-hot
        ``(batch, D, H, W, C)``.
      y_pred: softmax probabilities ``(batch, D, H, W, C)``, any float dtype.
      include_background: score class 0 too.
      squared: the paper's ``sum p^2 + sum g^2`` denominator (else ``sum p + sum g``).
      smooth: added to numerator and denominator (>= 0).
      class_weights: one weight per scored class (``C`` or ``C - 1`` entries); the
        classes' Dice are averaged with these weights.
      label_format: ``auto``, ``integer`` or ``one_hot`` (see :func:`one_hot_labels`).
      batch: one Dice over the voxels of the whole batch (nnU-Net's batch Dice), given
        to every sample, instead of one Dice per sample.

    Raises:
      ValueError: for invalid options or label shapes, naming what was received.
    """
    _validate_options(smooth, label_format, class_weights)
    dice = dice_per_class(y_true, y_pred, squared=squared, smooth=smooth, label_format=label_format,
                          batch=batch)
    weights = _class_weight_vector(y_pred.shape[-1], include_background, class_weights)
    loss = 1.0 - ops.sum(dice * weights, axis=-1) / ops.sum(weights)
    if batch:  # the same loss for every sample, so that the batch mean is that loss
        loss = ops.broadcast_to(loss, ops.shape(y_pred)[:1])
    return loss


def cross_entropy(y_true, y_pred, label_format: str = "auto"):
    """Per-sample categorical cross-entropy of probabilities, mean over voxels (float32)."""
    y_pred = ops.cast(y_pred, "float32")
    rank = len(y_pred.shape)
    target = one_hot_labels(y_true, y_pred.shape[-1], rank, label_format)
    log_p = ops.log(ops.clip(y_pred, _LOG_FLOOR, 1.0))
    per_voxel = -ops.sum(target * log_p, axis=-1)
    return ops.mean(per_voxel, axis=tuple(range(1, rank - 1)))


def dice_ce_loss(y_true, y_pred, *, dice_weight: float = 1.0, ce_weight: float = 1.0,
                 **dice_options):
    """``dice_weight * dice_loss + ce_weight * cross_entropy``, per sample."""
    _validate_mix(dice_weight, ce_weight)
    label_format = dice_options.get("label_format", "auto")
    total = 0.0
    if dice_weight:
        total = total + dice_weight * dice_loss(y_true, y_pred, **dice_options)
    if ce_weight:
        total = total + ce_weight * cross_entropy(y_true, y_pred, label_format)
    return total


def _validate_mix(dice_weight, ce_weight) -> None:
    if dice_weight < 0 or ce_weight < 0 or dice_weight + ce_weight <= 0:
        raise ValueError(
            f"dice_weight and ce_weight must be >= 0 and not both 0, "
            f"got dice_weight={dice_weight!r}, ce_weight={ce_weight!r}"
        )


@keras.saving.register_keras_serializable(package="vnet_tf")
class DiceLoss(keras.losses.Loss):
    """The paper's Dice loss with the options of :func:`dice_loss`; batch mean by default."""

    def __init__(self, include_background=True, squared=True, smooth=1e-5,
                 class_weights=None, label_format="auto", batch=False, name="dice_loss", **kwargs):
        super().__init__(name=name, **kwargs)
        _validate_options(smooth, label_format, class_weights)
        self.options = dict(
            include_background=bool(include_background),
            squared=bool(squared),
            smooth=float(smooth),
            class_weights=None if class_weights is None else [float(w) for w in class_weights],
            label_format=label_format,
            batch=bool(batch),
        )

    def call(self, y_true, y_pred):
        return dice_loss(y_true, y_pred, **self.options)

    def get_config(self):
        return {**super().get_config(), **self.options}


@keras.saving.register_keras_serializable(package="vnet_tf")
class DiceCELoss(DiceLoss):
    """Dice loss plus categorical cross-entropy, each with its own weight."""

    def __init__(self, dice_weight=1.0, ce_weight=1.0, name="dice_ce_loss", **kwargs):
        super().__init__(name=name, **kwargs)
        _validate_mix(dice_weight, ce_weight)
        self.dice_weight = float(dice_weight)
        self.ce_weight = float(ce_weight)

    def call(self, y_true, y_pred):
        return dice_ce_loss(y_true, y_pred, dice_weight=self.dice_weight,
                            ce_weight=self.ce_weight, **self.options)

    def get_config(self):
        return {**super().get_config(), "dice_weight": self.dice_weight, "ce_weight": self.ce_weight}
