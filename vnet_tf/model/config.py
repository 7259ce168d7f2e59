"""The V-Net's settings (:class:`VNetConfig`) and the shape rule its input must meet, without
importing Keras or TensorFlow (the command-line flags are generated from these fields)."""

from __future__ import annotations

import dataclasses
from typing import Optional, Sequence, Tuple

from vnet_tf.core.settings import flag, no_flag
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

    input_channels: int = no_flag(1, "read from the data")
    num_classes: int = no_flag(2, "read from the data (or --num_classes)")
    base_width: int = flag(16, name="base_width", help="channels of the first stage", lower=1)
    depth: int = flag(5, name="depth", help="resolution levels", lower=1)
    kernel_size: int = flag(5, name="kernel_size", help="odd conv kernel edge", lower=1)
    convs_left: Optional[Tuple[int, ...]] = flag(None, name="convs_left", positive=True,
                                                 help="convs per left stage (empty = the variant's default)")
    convs_right: Optional[Tuple[int, ...]] = flag(None, name="convs_right", positive=True,
                                                  help="convs per right stage (empty = the variant's default)")
    activation: str = flag("prelu", name="activation", help="activation", choices=ACTIVATIONS)
    normalization: str = flag("none", name="normalization", help="layer normalisation", choices=NORMALIZATIONS)
    norm_groups: int = no_flag(8, "group normalisation's groups; the library's default in the commands")
    dropout: float = flag(0.0, name="dropout", help="channel dropout after every stage", lower=0.0, upper=0.99)
    variant: str = flag("paper", name="variant", help="V-Net layout", choices=VARIANTS)
    dtype_policy: Optional[str] = no_flag(None, "set by --mixed_precision")
    recompute: bool = flag(False, name="recompute", help=(
        "recompute the instance / group normalisations and PReLUs in the backward pass instead of keeping their "
        "intermediates: less training memory, the same results; float32 only (--mixed_precision=auto then trains "
        "in float32)"))
    architecture: str = flag("vnet", name="architecture", choices=NETWORKS, help=(
        "the network these settings build (or one registered in vnet_tf.model.registry.NETWORKS, which reads "
        "the settings it uses)"))

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
            import keras  # pylint: disable=import-outside-toplevel  (only to name the policy)
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
