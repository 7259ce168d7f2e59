"""Base class and helpers of the augmentation layers (see :mod:`vnet_tf.augment.chain`)."""

from __future__ import annotations

from typing import Optional

import keras
from keras import layers, ops


def check_probability(name, value):
    if not 0.0 <= float(value) <= 1.0:
        raise ValueError(f"{name} must be in [0, 1], got {value!r}")
    return float(value)


def check_range(name, value, low=None, positive=False):
    if len(value) != 2 or float(value[0]) > float(value[1]):
        raise ValueError(f"{name} must be (min, max) with min <= max, got {value!r}")
    if positive and float(value[0]) <= 0:
        raise ValueError(f"{name} must be positive, got {value!r}")
    if low is not None and float(value[0]) < low:
        raise ValueError(f"{name} must be >= {low}, got {value!r}")
    return (float(value[0]), float(value[1]))


class AugmentationLayer(layers.Layer):
    """Base: unbatched-input handling, per-sample coin flips, seed generator."""

    # Whether the training step compiles this transform with XLA: gathers (resampling) run
    # 6-12x faster under XLA on a CPU, random-number generation and sorting slower (BENCHMARKS.md).
    compile_with_xla = False

    def __init__(self, seed: Optional[int] = None, **kwargs):
        kwargs.setdefault("autocast", False)
        super().__init__(**kwargs)
        self.seed = seed
        self.seed_generator = keras.random.SeedGenerator(seed)
        self.built = True  # no weights; only the seed generator's state

    def call(self, inputs):
        if not isinstance(inputs, dict) or "image" not in inputs:
            raise ValueError(f"{self.name} expects a dict with an 'image' entry, got {type(inputs).__name__}")
        image = inputs["image"]
        label = inputs.get("label")
        rank = len(image.shape)
        if rank not in (4, 5):
            raise ValueError(f"{self.name}: 'image' must be (D, H, W, C) or (B, D, H, W, C), got shape {tuple(image.shape)}")
        unbatched = rank == 4
        if unbatched:
            image = image[None]
            label = None if label is None else label[None]
        image, label = self.transform(image, label)
        out = dict(inputs)
        out["image"] = image[0] if unbatched else image
        if label is not None:
            out["label"] = label[0] if unbatched else label
        return out

    def transform(self, image, label):  # pragma: no cover - abstract
        raise NotImplementedError

    def coin(self, batch, probability):
        """A (B,) boolean: which samples this transform touches."""
        return keras.random.uniform((batch,), seed=self.seed_generator) < probability

    def uniform(self, shape, low, high):
        return keras.random.uniform(shape, minval=low, maxval=high, seed=self.seed_generator)

    def get_config(self):
        config = super().get_config()
        config["seed"] = self.seed
        return config


def per_sample(mask, transformed, original):
    shape = [-1] + [1] * (len(original.shape) - 1)
    return ops.where(ops.reshape(mask, shape), transformed, original)
