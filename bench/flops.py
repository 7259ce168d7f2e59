"""Floating-point operations of a Keras V-Net, counted analytically from its layer shapes.

Convention: a multiply-accumulate is 2 FLOPs; only convolutions (``Conv3D`` and
``Conv3DTranspose``) are counted: they are nearly all of a V-Net's arithmetic.
Bias adds, normalisation, activations, residual adds and the softmax are left out. For a
convolution with kernel ``k``, ``c_in`` input and ``c_out`` output channels:

- ``Conv3D``: ``2 * prod(k) * c_in * c_out`` per *output* voxel;
- ``Conv3DTranspose``: ``2 * prod(k) * c_in * c_out`` per *input* voxel (every input voxel
  is scattered through the whole kernel).

A training step is forward + backward. The backward pass of each convolution computes
the gradient of its weights (the forward count again) and the gradient of its input (the
forward count again), except where the input is the model's own input, whose gradient
nothing needs. So ``train = 3 * forward - input-gradient of the first layers``.

Works under any Keras backend (shapes are propagated symbolically, nothing is run).
"""

from __future__ import annotations

import dataclasses
import math
from typing import List, Sequence

import keras

CONV_TYPES = (keras.layers.Conv3D, keras.layers.Conv3DTranspose)


@dataclasses.dataclass(frozen=True)
class LayerFlops:
    """One convolution's shapes and forward FLOPs (for the whole batch)."""

    name: str
    kind: str  # "conv" or "transpose"
    kernel: tuple
    in_shape: tuple  # (batch, D, H, W, C)
    out_shape: tuple
    forward: int
    reads_model_input: bool


@dataclasses.dataclass(frozen=True)
class FlopCount:
    """FLOPs of one forward pass and one training step, for a given batch and shape."""

    layers: List[LayerFlops]

    @property
    def forward(self) -> int:
        return sum(layer.forward for layer in self.layers)

    @property
    def backward(self) -> int:
        weight_grads = self.forward
        input_grads = sum(layer.forward for layer in self.layers if not layer.reads_model_input)
        return weight_grads + input_grads

    @property
    def train(self) -> int:
        return self.forward + self.backward


def conv_forward_flops(kind: str, kernel: Sequence[int], c_in: int, c_out: int,
                       in_voxels: int, out_voxels: int) -> int:
    """Forward FLOPs of one convolution over a batch (voxels summed over the batch)."""
    per_voxel = 2 * math.prod(kernel) * c_in * c_out
    return per_voxel * (in_voxels if kind == "transpose" else out_voxels)


def count_flops(model: keras.Model, spatial_shape: Sequence[int], batch: int = 1) -> FlopCount:
    """Counts the convolution FLOPs of ``model`` on inputs of ``(batch, *spatial_shape, C)``.

    Args:
      model: a functional Keras model with a single 5-D input (channels last).
      spatial_shape: ``(D, H, W)``.
      batch: batch size.

    Raises:
      ValueError: if the model has no convolutions or not exactly one 5-D input.
    """
    if len(model.inputs) != 1 or len(model.inputs[0].shape) != 5:
        raise ValueError(
            f"count_flops expects a model with one 5-D input (batch, D, H, W, C), got inputs "
            f"{[tuple(t.shape) for t in model.inputs]}")
    if len(spatial_shape) != 3 or any(int(s) < 1 for s in spatial_shape):
        raise ValueError(f"spatial_shape must be 3 positive sizes (D, H, W), got {tuple(spatial_shape)}")
    convs = [layer for layer in model.layers if isinstance(layer, CONV_TYPES)]
    if not convs:
        raise ValueError(f"model {model.name!r} has no Conv3D / Conv3DTranspose layers to count")
    model_input = model.inputs[0]
    channels = model_input.shape[-1]
    # One symbolic pass through a probe model that exposes every conv's input and output.
    probe = keras.Model(model.inputs, [t for layer in convs for t in (layer.input, layer.output)])
    spec = keras.KerasTensor((batch, *map(int, spatial_shape), channels), dtype="float32")
    shapes = [tuple(int(d) for d in out.shape) for out in probe.compute_output_spec(spec)]
    counted = []
    for i, layer in enumerate(convs):
        in_shape, out_shape = shapes[2 * i], shapes[2 * i + 1]
        kind = "transpose" if isinstance(layer, keras.layers.Conv3DTranspose) else "conv"
        kernel = tuple(layer.kernel_size)
        forward = conv_forward_flops(kind, kernel, in_shape[-1], out_shape[-1],
                                     math.prod(in_shape[:-1]), math.prod(out_shape[:-1]))
        reads_input = _reads_model_input(layer, model_input)
        counted.append(LayerFlops(layer.name, kind, kernel, in_shape, out_shape, forward, reads_input))
    return FlopCount(counted)


def _reads_model_input(layer, model_input) -> bool:
    """Whether the layer's input is the model input, possibly through shape-only layers
    (the V-Net's ``SpatialShapeCheck`` identity)."""
    tensor = layer.input
    for _ in range(4):
        if tensor is model_input:
            return True
        history = getattr(tensor, "_keras_history", None)
        if history is None:
            return False
        producer = history[0]
        if isinstance(producer, keras.layers.InputLayer):
            return True
        if getattr(producer, "count_params", lambda: 1)() != 0 or isinstance(producer, CONV_TYPES):
            return False
        tensor = producer.input
    return False
