"""Optimisers and learning-rate schedules from plain settings.

Schedules (``schedule``):

- ``constant``: ``learning_rate`` throughout;
- ``step``: the paper's step decay, multiplied by ``decay_factor`` every ``decay_steps``
  (V-Net: 1e-4, x0.1 every 25,000 iterations);
- ``poly``: ``learning_rate * (1 - step / steps) ** power`` (nnU-Net: power 0.9);
- ``cosine``: cosine decay to 0 over ``steps``.

Each may start with ``warmup_steps`` of linear warm-up from 0.
"""

from __future__ import annotations

import math

import keras
from keras import ops

from vnet_tf.training.config import OptimizerConfig


@keras.saving.register_keras_serializable(package="vnet_tf")
class WarmupSchedule(keras.optimizers.schedules.LearningRateSchedule):
    """One of the schedules above, as a function of the (0-based) step."""

    def __init__(self, kind: str, learning_rate: float, total_steps: int,
                 decay_steps: int = OptimizerConfig.decay_steps, decay_factor: float = OptimizerConfig.decay_factor,
                 poly_power: float = OptimizerConfig.poly_power, warmup_steps: int = OptimizerConfig.warmup_steps):
        # ``total_steps`` may be a variable: a run with a time budget revises its length.
        self.total_steps = total_steps if isinstance(total_steps, keras.Variable) else int(total_steps)
        self.kind, self.learning_rate = kind, float(learning_rate)
        self.decay_steps, self.decay_factor = int(decay_steps), float(decay_factor)
        self.poly_power, self.warmup_steps = float(poly_power), int(warmup_steps)

    def __call__(self, step):
        step = ops.cast(step, "float32")
        lr = ops.convert_to_tensor(self.learning_rate, "float32")
        total = ops.maximum(ops.cast(self.total_steps, "float32"), 1.0)
        if self.kind == "step":
            lr = lr * ops.power(self.decay_factor, ops.floor(step / self.decay_steps))
        elif self.kind == "poly":
            lr = lr * ops.power(ops.maximum(1.0 - step / total, 0.0), self.poly_power)
        elif self.kind == "cosine":
            lr = lr * 0.5 * (1.0 + ops.cos(math.pi * ops.minimum(step / total, 1.0)))
        if self.warmup_steps > 0:
            lr = lr * ops.minimum((step + 1.0) / self.warmup_steps, 1.0)
        return lr

    def get_config(self):
        total = int(ops.convert_to_numpy(self.total_steps))
        return dict(kind=self.kind, learning_rate=self.learning_rate, total_steps=total,
                    decay_steps=self.decay_steps, decay_factor=self.decay_factor,
                    poly_power=self.poly_power, warmup_steps=self.warmup_steps)


def make_optimizer(config: OptimizerConfig, total_steps, mixed_float16: bool = False):
    """The Keras optimizer for ``config`` (wrapped in a loss-scale optimizer for float16);
    ``total_steps``, the schedule's length, is an int or a ``keras.Variable``."""
    config.validate()
    schedule = WarmupSchedule(config.schedule, config.learning_rate, total_steps, config.decay_steps,
                              config.decay_factor, config.poly_power, config.warmup_steps)
    extra = {"clipnorm": config.clipnorm} if config.clipnorm > 0 else {}
    if config.name == "sgd":
        optimizer = keras.optimizers.SGD(schedule, momentum=config.momentum, nesterov=config.nesterov,
                                         weight_decay=config.weight_decay or None, **extra)
    elif config.name == "adam":
        optimizer = keras.optimizers.Adam(schedule, weight_decay=config.weight_decay or None, **extra)
    else:
        optimizer = keras.optimizers.AdamW(schedule, weight_decay=config.weight_decay or 0.01, **extra)
    if mixed_float16:
        optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
    return optimizer
