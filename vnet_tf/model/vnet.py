"""V-Net (Milletari et al. 2016) as a Keras 3 functional model.

Built from Keras layers and ``keras.ops`` only (no TensorFlow import), so the same model
runs under the TensorFlow and JAX backends. Tensors are channels-last:
``(batch, depth, height, width, channels)``; a SimpleITK array ``(z, y, x)`` maps to
``(depth, height, width)``.

Layout (``variant="paper"``, the default; widths for ``base_width=16, depth=5``)::

    left stage k   : n_k convs k^3 at width w_k = base_width * 2^k, residual add
    down           : 2^3 conv, stride 2, width w_k -> w_{k+1}
    bottom         : the deepest left stage
    up             : 2^3 transposed conv, stride 2, width -> w_k, concat with skip k
    right stage k  : convs at width 2 * w_k on concat(up, skip), residual = the concat
    head           : 1^3 conv to num_classes, softmax (float32)

The stage-1 residual is the input repeated along the channel axis up to ``base_width``
channels (the paper's "broadcast"); where ``input_channels`` does not divide
``base_width``, a learned 1x1x1 projection to ``base_width`` channels replaces it.

Activation placement:

- ``paper``: every conv is followed by [norm] + activation; the stage output is
  ``input + F(input)`` with no activation after the sum.
- ``caffe`` (the official prototxt): the stage's last conv has no activation; the
  activation follows the residual sum instead. The head has an extra k^3 conv to
  ``num_classes`` + activation before the 1x1x1 conv. Default convs per stage
  (1, 1, 2, 3, 3) / (3, 2, 1, 1) instead of the paper's (1, 2, 3, 3, 3) / (3, 3, 2, 1).

Down and up convolutions are always followed by [norm] + activation. Dropout (if > 0) is a
channel-wise ``SpatialDropout3D`` after every stage output.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
from typing import Optional

import keras
from keras import layers, ops

from vnet_tf.model.config import VNetConfig, check_spatial_shape
from vnet_tf.model.networks import Network

@keras.saving.register_keras_serializable(package="vnet_tf")
class TileChannels(layers.Layer):
    """Repeats the channel axis ``repeats`` times: ``[a, b] -> [a, b, a, b, ...]``.

    The paper's stage-1 residual: a 1-channel scan broadcast to the 16 channels of
    the first stage (along channels, never along the batch axis).
    """

    def __init__(self, repeats: int, **kwargs):
        super().__init__(**kwargs)
        if not isinstance(repeats, int) or repeats < 1:
            raise ValueError(f"TileChannels: repeats must be a positive int, got {repeats!r}")
        self.repeats = repeats

    def call(self, inputs):
        return ops.tile(inputs, [1] * (len(inputs.shape) - 1) + [self.repeats])

    def compute_output_shape(self, input_shape):
        channels = input_shape[-1]
        return tuple(input_shape[:-1]) + (None if channels is None else channels * self.repeats,)

    def get_config(self):
        return {**super().get_config(), "repeats": self.repeats}


@keras.saving.register_keras_serializable(package="vnet_tf")
class SpatialShapeCheck(layers.Layer):
    """Identity that rejects spatial sizes not divisible by ``divisor``.

    It checks the sizes known when the model is traced or called eagerly; code that runs
    the model on fully dynamic shapes should call :func:`check_spatial_shape` itself.
    """

    def __init__(self, depth: int, **kwargs):
        super().__init__(**kwargs)
        self.depth = depth

    def call(self, inputs):
        check_spatial_shape(tuple(inputs.shape[1:4]), self.depth)
        return inputs

    def compute_output_shape(self, input_shape):
        check_spatial_shape(tuple(input_shape[1:4]), self.depth)
        return input_shape

    def get_config(self):
        return {**super().get_config(), "depth": self.depth}


class _Builder:
    """Creates the layers of one model with consistent names, init and dtype."""

    def __init__(self, cfg: VNetConfig):
        self.cfg = cfg
        self.dtype = cfg.dtype_policy

    def conv(self, x, filters, name, kernel_size=None, strides=1, transpose=False):
        conv_cls = layers.Conv3DTranspose if transpose else layers.Conv3D
        return conv_cls(
            filters,
            kernel_size or self.cfg.kernel_size,
            strides=strides,
            padding="same",
            kernel_initializer="he_normal",
            bias_initializer="zeros",
            dtype=self.dtype,
            name=name,
        )(x)

    def norm(self, x, name):
        kind = self.cfg.normalization
        if kind == "none":
            return x
        if kind == "batch":
            return layers.BatchNormalization(dtype=self.dtype, name=f"{name}_bn")(x)
        channels = x.shape[-1]
        groups = channels if kind == "instance" else math.gcd(channels, self.cfg.norm_groups)
        with self.recomputed():
            layer = layers.GroupNormalization(groups=groups, dtype=self.dtype, name=f"{name}_{kind}n")
        return layer(x)

    def act(self, x, name):
        if self.cfg.activation != "prelu":
            return layers.Activation(self.cfg.activation, dtype=self.dtype, name=f"{name}_{self.cfg.activation}")(x)
        with self.recomputed():
            layer = layers.PReLU(
                alpha_initializer=keras.initializers.Constant(0.25),
                shared_axes=[1, 2, 3],
                dtype=self.dtype,
                name=f"{name}_prelu",
            )
        return layer(x)

    def recomputed(self):
        """The scope in which a stateless elementwise layer is created when ``recompute`` is on:
        Keras then wraps its call in ``tf.recompute_grad`` (the mode is read at creation)."""
        return keras.RematScope(mode="full") if self.cfg.recompute else contextlib.nullcontext()

    def conv_unit(self, x, filters, name, activate=True, **conv_kwargs):
        x = self.norm(self.conv(x, filters, name, **conv_kwargs), name)
        return self.act(x, name) if activate else x

    def stage(self, x, residual, n_convs, name):
        """n_convs k^3 convs at the residual's width, added to ``residual``."""
        filters = residual.shape[-1]
        caffe = self.cfg.variant == "caffe"
        for i in range(n_convs):
            last = i == n_convs - 1
            x = self.conv_unit(x, filters, f"{name}_conv{i}", activate=not (caffe and last))
        x = layers.Add(dtype=self.dtype, name=f"{name}_add")([x, residual])
        if caffe:
            x = self.act(x, f"{name}_add")
        if self.cfg.dropout > 0:
            x = layers.SpatialDropout3D(self.cfg.dropout, dtype=self.dtype, name=f"{name}_dropout")(x)
        return x

    def stage1_residual(self, inputs):
        channels, width = self.cfg.input_channels, self.cfg.base_width
        if width % channels == 0:
            return TileChannels(width // channels, dtype=self.dtype, name="left0_tile")(inputs)
        return self.conv(inputs, width, "left0_projection", kernel_size=1)


def build_vnet(config: Optional[VNetConfig] = None, **overrides) -> keras.Model:
    """Builds a V-Net whose spatial input size is left unknown.

    Args:
      config: a :class:`VNetConfig`; ``None`` = the paper's network.
      **overrides: fields of :class:`VNetConfig` to replace, e.g. ``base_width=8``.

    Returns:
      A functional ``keras.Model`` mapping ``(batch, D, H, W, input_channels)`` float32
      to softmax probabilities ``(batch, D, H, W, num_classes)`` float32. D, H and W may
      be any multiples of ``2**(depth-1)``.

    Raises:
      ValueError: for an invalid option, naming it and the received value.

    Example:
      >>> model = build_vnet(base_width=8, depth=4, kernel_size=3)
      >>> model(np.zeros((1, 32, 32, 32, 1), "float32")).shape
      (1, 32, 32, 32, 2)
    """
    return vnet_network(dataclasses.replace(config or VNetConfig(), **overrides)).model


def vnet_network(config: VNetConfig) -> Network:
    """:func:`build_vnet`'s model as a :class:`~vnet_tf.model.networks.Network`, with the output
    of each right (decoder) stage by level: the builder registered as ``"vnet"``."""
    cfg = config.resolved()
    build = _Builder(cfg)
    inputs = keras.Input((None, None, None, cfg.input_channels), name="image")
    x = SpatialShapeCheck(cfg.depth, name="spatial_shape_check")(inputs)

    skips = []
    residual = build.stage1_residual(x)
    for level in range(cfg.depth):
        name = f"left{level}"
        x = build.stage(x, residual, cfg.convs_left[level], name)
        if level < cfg.depth - 1:
            skips.append(x)
            x = build.conv_unit(x, x.shape[-1] * 2, f"{name}_down", kernel_size=2, strides=2)
            residual = x

    decoder = {}
    for i, level in enumerate(reversed(range(cfg.depth - 1))):
        name = f"right{level}"
        skip = skips[level]
        x = build.conv_unit(x, skip.shape[-1], f"{name}_up", kernel_size=2, strides=2, transpose=True)
        x = layers.Concatenate(dtype=build.dtype, name=f"{name}_concat")([x, skip])
        x = decoder[level] = build.stage(x, x, cfg.convs_right[i], name)

    if cfg.variant == "caffe":
        x = build.conv_unit(x, cfg.num_classes, "head_conv")
    logits = build.conv(x, cfg.num_classes, "head_logits", kernel_size=1)
    probabilities = layers.Softmax(axis=-1, dtype="float32", name="probabilities")(logits)
    return Network(keras.Model(inputs, probabilities, name=f"vnet_{cfg.variant}"), decoder, cfg.dtype_policy)

