"""Building a network by its registered name (:data:`vnet_tf.model.registry.NETWORKS`).

Every place that builds a model (training, inference, export, the planner's memory estimate)
calls :func:`build_network`; a builder returns a :class:`Network`: the Keras model and, by
level, the decoder feature maps that deep supervision puts its heads on.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Dict, Optional

import keras

from vnet_tf.model.registry import NETWORKS


@dataclasses.dataclass(frozen=True)
class Network:
    """A built network: ``model`` maps ``(batch, D, H, W, C)`` float32 to softmax probabilities
    ``(batch, D, H, W, K)``; ``decoder[level]`` is the decoder's output at ``1 / 2**level`` of
    the input's resolution (level 0: full resolution), for deep-supervision heads, which
    compute in ``dtype_policy``."""
    model: keras.Model
    decoder: Dict[int, Any] = dataclasses.field(default_factory=dict)
    dtype_policy: Optional[str] = None  # the layers' policy (None: the global one), for added heads


def build_network(config) -> Network:
    """The network ``config.architecture`` names, built from ``config`` (a
    :class:`~vnet_tf.model.vnet.VNetConfig`)."""
    network = NETWORKS.get(config.architecture)(config)
    if not isinstance(network, Network):
        raise TypeError(f"the builder of architecture {config.architecture!r} returned "
                        f"{type(network).__name__}, expected a Network")
    return network
