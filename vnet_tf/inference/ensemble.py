"""Ensembles of trained models: several runs' probabilities averaged per window, inside the
inference graph (:class:`MeanOfModels` stands in for one model in
:class:`vnet_tf.inference.segmenter.Segmenter`).

The members must see the same input and produce the same classes: equal preprocessing,
patch size and number of classes (checked by :func:`check_members`). Averaging the softmax
outputs before the argmax is what nnU-Net does with the models of its cross-validation folds.
"""

from __future__ import annotations

import dataclasses
from typing import List, Sequence

import keras

from vnet_tf.core.errors import UserError
from vnet_tf.inference.config import InferenceConfig
from vnet_tf.data.preprocess import PreprocessConfig


@dataclasses.dataclass(frozen=True)
class Member:
    """One model of an ensemble: its name (for messages) and the settings it was trained with."""
    name: str
    preprocess: PreprocessConfig
    inference: InferenceConfig
    num_classes: int


def check_members(members: Sequence[Member]) -> List[str]:
    """Refuses (ValueError naming both members and the setting) an ensemble whose members were
    trained on different inputs or classes: preprocessing, patch size and number of classes
    must be equal. Returns the names of the other inference settings (overlap, mirroring,
    post-processing, ...) on which the members differ: the first member's are used, so the
    caller can say so."""
    if not members:
        raise ValueError("an ensemble needs at least one model")
    first = members[0]
    shared = (("preprocessing", lambda m: m.preprocess.to_dict()),
              ("patch size", lambda m: tuple(m.inference.patch_size_zyx)),
              ("number of classes", lambda m: m.num_classes))
    differing = set()
    for member in members[1:]:
        for what, get in shared:
            if get(member) != get(first):
                raise UserError(f"{member.name} cannot be ensembled with {first.name}: its {what} differs "
                                f"(expected {get(first)!r} as in {first.name}, got {get(member)!r})")
        mine, theirs = first.inference.to_dict(), member.inference.to_dict()
        differing.update(k for k in mine if mine[k] != theirs[k])
    return sorted(differing)


def training_cases(runs: Sequence[dict]) -> List[str]:
    """The case ids any of ``runs`` (config dicts) trained on, in first-seen order: an
    ensemble has seen a case when one of its members has."""
    return list(dict.fromkeys(c for run in runs for c in run.get("train_cases") or ()))


class MeanOfModels:
    """Keras models called on the same input, their outputs averaged in float32: an ensemble
    that :class:`vnet_tf.inference.segmenter.Segmenter` runs, and exports, as one model (it needs only
    a call and ``variables``)."""

    def __init__(self, models):
        self.models = list(models)
        if not self.models:
            raise ValueError("an ensemble needs at least one model")

    @property
    def variables(self):
        return [v for model in self.models for v in model.variables]

    def __call__(self, inputs, training=False):
        outputs = [keras.ops.cast(model(inputs, training=training), "float32") for model in self.models]
        return keras.ops.mean(keras.ops.stack(outputs, axis=0), axis=0)
