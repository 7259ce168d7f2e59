"""Deep supervision (as in nnU-Net): extra softmax heads on the coarser right (decoder)
stages, each scored against the labels at its own resolution, during training only.

:func:`supervised_model` wraps a network built by :func:`vnet_tf.model.networks.build_network`
into a training model that shares all its layers and adds a 1x1x1 conv + softmax head on the
decoder feature maps its builder hands over, levels ``1 .. levels`` (level ``k`` works at
``1 / 2**k`` of the input size; a V-Net's right stages). The network itself is untouched: it
is what validation, ``best.npz``, evaluation and export use, so the heads never reach a
deployed model.

The targets of a head are the one-hot labels averaged over ``2**k``-voxel blocks (soft
labels: the fraction of each class in the block), which the Dice and cross-entropy losses
accept as they are. The losses of the outputs are weighted ``1, 1/2, 1/4, ...`` (full
resolution first) and the weights normalised to sum to one.
"""

from __future__ import annotations

from typing import List, Sequence

import keras
from keras import layers, ops

from vnet_tf.model.losses import one_hot_labels
from vnet_tf.model.networks import Network


def max_levels(depth: int) -> int:
    """The most heads a V-Net of ``depth`` levels can take: right stages 1 .. depth - 2."""
    return max(depth - 2, 0)


def output_weights(levels: int) -> List[float]:
    """Loss weights of the full-resolution output and ``levels`` heads, summing to 1."""
    raw = [0.5 ** i for i in range(levels + 1)]
    return [w / sum(raw) for w in raw]


def supervised_model(network: Network, levels: int) -> keras.Model:
    """A training model sharing ``network.model``'s layers, with outputs
    ``[probabilities, head_1, ..., head_levels]`` (head ``k`` at ``1 / 2**k`` resolution, on the
    decoder feature map the network's builder hands over as ``network.decoder[k]``).

    Raises:
      ValueError: if ``levels`` is not in ``[1, N]``, N the decoder's coarsest level.
    """
    model, most = network.model, max(network.decoder, default=0)
    if isinstance(levels, bool) or not isinstance(levels, int) or not 1 <= levels <= most:
        raise ValueError(f"deep supervision levels must be an integer in [1, {most}] for the network "
                         f"{model.name!r} (its decoder levels: {sorted(network.decoder)}), got {levels!r}")
    num_classes = model.output.shape[-1]
    dtype = network.dtype_policy
    outputs = [model.output]
    for level in range(1, levels + 1):
        logits = layers.Conv3D(num_classes, 1, kernel_initializer="he_normal", dtype=dtype,
                               name=f"deep_supervision{level}_logits")(network.decoder[level])
        outputs.append(layers.Softmax(axis=-1, dtype="float32", name=f"deep_supervision{level}")(logits))
    return keras.Model(model.input, outputs, name=f"{model.name}_deep_supervision")


def head_variables(train_model: keras.Model, model: keras.Model) -> list:
    """The variables ``train_model`` adds to ``model`` (the heads' kernels and biases)."""
    own = {id(v) for v in model.variables}
    return [v for v in train_model.variables if id(v) not in own]


def downsampled_targets(labels, num_classes: int, levels: int, rank: int = 5) -> list:
    """Soft one-hot targets of ``labels`` at ``1/2, 1/4, ... 1/2**levels`` resolution: the
    class fractions of each ``2**k``-voxel block (sizes must divide ``2**levels``)."""
    one_hot = one_hot_labels(labels, num_classes, rank)
    return [ops.average_pool(one_hot, 2 ** k, strides=2 ** k, padding="valid") for k in range(1, levels + 1)]


def multi_scale_loss(loss_fn, labels, outputs: Sequence, weights: Sequence[float]):
    """Per-sample ``sum_k weights[k] * loss_fn(target_k, outputs[k])``; ``outputs[0]`` is at
    full resolution and scored against ``labels`` as they are."""
    if len(outputs) != len(weights):
        raise ValueError(f"multi_scale_loss: {len(outputs)} outputs but {len(weights)} weights")
    num_classes = outputs[0].shape[-1]
    targets = [labels] + downsampled_targets(labels, num_classes, len(outputs) - 1, rank=len(outputs[0].shape))
    total = 0.0
    for weight, target, output in zip(weights, targets, outputs):
        total = total + weight * loss_fn(target, output)
    return total
