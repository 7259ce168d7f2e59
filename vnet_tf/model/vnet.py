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
from typing import Optional, Sequence, Tuple

import keras
from keras import layers, ops

from vnet_tf.model.networks import Network
from vnet_tf.model.registry import NETWORKS

ACTIVATIONS = ("prelu", "relu", "elu")
NORMALIZATIONS = ("none", "batch", "instance", "group")
VARIANTS = ("paper", "caffe")


def required_divisor(depth: int) -> int:
    """Spatial sizes must be multiples of this: ``2 ** (depth - 1)``."""
    return 2 ** (depth - 1)


def check_spatial_shape(spatial_shape: Sequence[Optional[int]], depth: int) -> None:
    """Raise ``ValueError`` unless every known spatial size is divisible by ``2**(depth-1)``.

    Args:
      spatial_shape: ``(depth, height, width)`` sizes; ``None`` entries are skipped.
      depth: number of V-Net stages.

    Raises:
      ValueError: naming the axis, the size and the divisor.
    """
    divisor = required_divisor(depth)
    if len(spatial_shape) != 3:
        raise ValueError(
            f"expected 3 spatial sizes (depth, height, width), got {tuple(spatial_shape)}"
        )
    for axis_name, size in zip(("depth", "height", "width"), spatial_shape):
        if size is not None and int(size) % divisor != 0:
            raise ValueError(
                f"spatial size {int(size)} along the {axis_name} axis is not divisible by "
                f"{divisor} (= 2**(depth-1) for a V-Net of depth {depth}); pad or crop "
                f"the volume to a multiple of {divisor}"
            )


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


def _default_convs_left(variant: str, depth: int) -> Tuple[int, ...]:
    if variant == "caffe":  # (1, 1, 2, 3, 3)
        return tuple(max(1, min(k, 3)) for k in range(depth))
    return tuple(min(k + 1, 3) for k in range(depth))  # (1, 2, 3, 3, 3)


def _positive_int(name: str, value, minimum: int = 1) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")


def _conv_counts(name: str, value, expected_len: int) -> Tuple[int, ...]:
    counts = tuple(value)
    if len(counts) != expected_len:
        raise ValueError(
            f"{name} needs {expected_len} entries (one per stage for this depth), "
            f"got {len(counts)}: {counts}"
        )
    for count in counts:
        _positive_int(f"each entry of {name}", count)
    return counts


@dataclasses.dataclass(frozen=True)
class VNetConfig:
    """Every option of :func:`build_vnet`. Defaults are the paper's network.

    Attributes:
      input_channels: channels (modalities) of the input scan.
      num_classes: output classes, background included (softmax over them).
      base_width: channels of stage 1; stage k has ``base_width * 2**k``.
      depth: number of resolution levels (the paper: 5); sizes must divide
        ``2**(depth-1)``.
      kernel_size: odd edge of the cubic stage convolutions (the paper: 5).
      convs_left: convs per left stage, top to bottom; ``None`` = the variant's default.
      convs_right: convs per right stage, bottom to top (``depth - 1`` entries);
        ``None`` = the left counts mirrored, as in the paper.
      activation: ``prelu`` (per channel, initial slope 0.25), ``relu`` or ``elu``.
      normalization: ``none``, ``batch``, ``instance`` or ``group``.
      norm_groups: groups for ``group`` normalisation; reduced to the greatest common
        divisor with a layer's channels where they do not divide.
      dropout: ``SpatialDropout3D`` rate after every stage, in [0, 1).
      variant: ``paper`` or ``caffe`` (the official prototxt; see the module docstring).
      dtype_policy: Keras dtype policy for the layers, e.g. ``mixed_float16``;
        ``None`` uses the global policy. The softmax output is always float32.
      recompute: recompute the instance / group normalisations and the PReLUs in the
        backward pass instead of keeping their intermediates (``keras.RematScope`` on those
        layers): less training memory for a little more compute, the same outputs and
        gradients. Only these layers keep tensors that nothing else keeps: ReLU and ELU keep
        their output, which the next convolution keeps anyway; batch normalisation and
        dropout must not run twice (moving statistics, random masks). Float32 only (Keras
        recomputes outside the mixed-precision cast). No effect outside training.
      architecture: the registered network these settings build
        (:data:`vnet_tf.model.registry.NETWORKS`; :func:`vnet_tf.model.networks.build_network`);
        another architecture reads the fields it uses.
    """

    input_channels: int = 1
    num_classes: int = 2
    base_width: int = 16
    depth: int = 5
    kernel_size: int = 5
    convs_left: Optional[Tuple[int, ...]] = None
    convs_right: Optional[Tuple[int, ...]] = None
    activation: str = "prelu"
    normalization: str = "none"
    norm_groups: int = 8
    dropout: float = 0.0
    variant: str = "paper"
    dtype_policy: Optional[str] = None
    recompute: bool = False
    architecture: str = "vnet"

    def resolved(self) -> "VNetConfig":
        """Checks every option and fills the default conv counts; raises ``ValueError``."""
        NETWORKS.check(self.architecture)
        if self.variant not in VARIANTS:
            raise ValueError(f"variant must be one of {VARIANTS}, got {self.variant!r}")
        _positive_int("input_channels", self.input_channels)
        _positive_int("num_classes", self.num_classes, minimum=2)
        _positive_int("base_width", self.base_width)
        _positive_int("depth", self.depth)
        _positive_int("kernel_size", self.kernel_size)
        if self.kernel_size % 2 == 0:
            raise ValueError(
                f"kernel_size must be odd so that 'same' padding is symmetric, "
                f"got {self.kernel_size}"
            )
        _positive_int("norm_groups", self.norm_groups)
        if self.activation not in ACTIVATIONS:
            raise ValueError(
                f"activation must be one of {ACTIVATIONS}, got {self.activation!r}"
            )
        if self.normalization not in NORMALIZATIONS:
            raise ValueError(
                f"normalization must be one of {NORMALIZATIONS}, got {self.normalization!r}"
            )
        if not isinstance(self.recompute, bool):
            raise ValueError(f"recompute must be True or False, got {self.recompute!r}")
        if isinstance(self.dropout, bool) or not 0.0 <= float(self.dropout) < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout!r}")
        if self.dtype_policy is not None:
            try:
                policy = keras.dtype_policies.get(self.dtype_policy)
            except (ValueError, TypeError) as err:
                raise ValueError(
                    f"dtype_policy must name a Keras dtype policy such as 'float32', "
                    f"'mixed_float16' or 'mixed_bfloat16', got {self.dtype_policy!r}"
                ) from err
            if self.recompute and policy.compute_dtype != policy.variable_dtype:
                raise ValueError(
                    f"recompute works in float32 only, got dtype_policy {self.dtype_policy!r}: "
                    f"Keras recomputes the layers outside their mixed-precision cast "
                    f"(keras-team/keras#21448); train in float32 (mixed_precision none or auto), "
                    f"or leave recompute off"
                )
        left = _conv_counts(
            "convs_left",
            self.convs_left or _default_convs_left(self.variant, self.depth),
            self.depth,
        )
        right_default = tuple(reversed(left[:-1]))
        right = _conv_counts(
            "convs_right",
            right_default if self.convs_right is None else self.convs_right,
            self.depth - 1,
        )
        return dataclasses.replace(self, convs_left=left, convs_right=right)

    @classmethod
    def caffe(cls, **overrides) -> "VNetConfig":
        """The official Caffe prototxt's network."""
        return cls(variant="caffe", **overrides)


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

