"""The model stage's registries, importable without TensorFlow (their names are flag choices).

- :data:`LOSSES`: a Keras loss class, built as ``cls(include_background=..., squared=...,
  batch=..., reduction="none")`` on one-hot or integer labels and softmax probabilities.
- :data:`NETWORKS`: a builder ``build(config: VNetConfig) -> Network`` (:mod:`vnet_tf.model.networks`),
  whose model maps ``(batch, D, H, W, C)`` to softmax probabilities and whose ``decoder`` hands
  deep supervision the decoder's feature map per level.
"""

from vnet_tf.core.registry import Registry

LOSSES = Registry("loss", {"dice": "vnet_tf.model.losses:DiceLoss", "dice_ce": "vnet_tf.model.losses:DiceCELoss"})
NETWORKS = Registry("architecture", {"vnet": "vnet_tf.model.vnet:vnet_network"})
