"""How long a training step of given settings takes on this machine, measured without training
data: the run's own step (model, optimiser, device-side augmentation, loss: :func:`build_training`)
on a batch of noise. Against training on data with the same settings it came within about 25 %
(docs/experiments-log.md, 2026-12-07), about as much as it varies between runs.

The planner (``vnet-plan --time_budget_minutes``) times its candidate settings with it; the
first step traces the graph and is not counted.
"""

from __future__ import annotations

import time
from typing import Callable

import keras
import numpy as np
import tensorflow as tf

from vnet_tf.training.build import build_training
from vnet_tf.training.config import TrainConfig


def seconds_per_step(config: TrainConfig, channels: int, num_classes: int, steps: int = 5,
                     log: Callable[[str], None] = lambda _: None) -> float:
    """The median seconds of ``steps`` training steps of ``config`` after a first, untimed one."""
    keras.backend.clear_session()
    keras.utils.set_random_seed(config.seed)
    parts = build_training(config, channels, num_classes, log)
    step = parts.step(config)
    rng = np.random.default_rng(config.seed)
    shape = (config.batch_size, *config.patch_size_zyx)
    batch = {"image": tf.constant(rng.standard_normal(shape + (channels,), dtype=np.float32)),
             "label": tf.constant(rng.integers(0, num_classes, shape, dtype=np.int32))}
    float(step(batch))  # traces the step
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        float(step(batch))
        times.append(time.perf_counter() - start)
    keras.backend.clear_session()
    return float(np.median(times))
