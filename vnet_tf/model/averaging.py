"""An exponential moving average of the model's weights during training (Polyak averaging).

``average = m * average + (1 - m) * weight`` after every optimiser step, with the momentum
warmed up as ``m_n = min(momentum, (1 + n) / (10 + n))`` for the ``n``-th update, so the
random initial weights fade out within the first few dozen steps instead of ``1 / (1 - m)``.
Non-trainable variables (batch-norm moving statistics, already averages) are copied as they
are. The average covers ``model.variables`` in order, so a checkpoint's ``weight_average``
group restores straight into a freshly built model.

:meth:`WeightAverage.applied` swaps the averages into the model for validation and for
saving, then puts the training weights back.
"""

from __future__ import annotations

import contextlib
from typing import Sequence

import keras
from keras import ops

GROUP, UPDATES_GROUP = "weight_average", "weight_average_updates"  # checkpoint groups


def check_momentum(momentum: float) -> float:
    """``momentum`` when it is 0 (off) or in (0, 1); ``ValueError`` otherwise."""
    if not 0.0 <= momentum < 1.0:
        raise ValueError(f"weight_average must be in [0, 1) (0 = off, e.g. 0.999), got {momentum!r}")
    return momentum


def warmed_momentum(momentum: float, updates_done):
    """The momentum used for update number ``updates_done`` (0-based)."""
    n = ops.cast(updates_done, "float32")
    return ops.minimum(ops.cast(momentum, "float32"), (1.0 + n) / (10.0 + n))


class WeightAverage:
    """Averages of ``variables`` (create it inside the distribution strategy's scope)."""

    def __init__(self, variables: Sequence, momentum: float):
        self.momentum = check_momentum(momentum)
        self.sources = list(variables)
        self.averages = [keras.Variable(ops.convert_to_numpy(v.value), trainable=False, dtype=v.dtype,
                                        name=f"average_{i}") for i, v in enumerate(self.sources)]
        self.updates = keras.Variable(0.0, trainable=False, dtype="float32", name="average_updates")

    def update(self) -> None:
        """One averaging step (traceable: call it inside the compiled training step)."""
        m = warmed_momentum(self.momentum, self.updates)
        for average, source in zip(self.averages, self.sources):
            value = ops.cast(source.value, average.dtype)
            if source.trainable:
                value = ops.cast(m, average.dtype) * average.value + ops.cast(1.0 - m, average.dtype) * value
            average.assign(value)
        self.updates.assign(self.updates.value + 1.0)

    @contextlib.contextmanager
    def applied(self):
        """The model holds the averages inside the block, its own weights again after it."""
        saved = [ops.convert_to_numpy(v.value) for v in self.sources]
        try:
            for source, average in zip(self.sources, self.averages):
                source.assign(average.value)
            yield
        finally:
            for source, value in zip(self.sources, saved):
                source.assign(value)
