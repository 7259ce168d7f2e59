"""Spatial augmentation: random affine + B-spline elastic deformation in one resampling,
and flips (see :mod:`vnet_tf.augment.chain`)."""

from __future__ import annotations

import math
from typing import Optional, Sequence

import keras
from keras import ops

from vnet_tf.augment import warp
from vnet_tf.augment.base import AugmentationLayer, check_probability, check_range, per_sample

LABEL_INTERPOLATIONS = ("nearest", "linear_argmax")

def _rotation_matrices(angles):
    """``(B, 3, 3)`` rotation about the z, y and x axes (in that order) acting on (z, y, x)."""
    cz, sz = ops.cos(angles[:, 0]), ops.sin(angles[:, 0])
    cy, sy = ops.cos(angles[:, 1]), ops.sin(angles[:, 1])
    cx, sx = ops.cos(angles[:, 2]), ops.sin(angles[:, 2])
    one, zero = ops.ones_like(cz), ops.zeros_like(cz)

    def mat(rows):
        return ops.stack([ops.stack(r, axis=-1) for r in rows], axis=-2)

    # Rotation about z turns the (y, x) plane, about y the (z, x) plane, about x the (z, y) plane.
    rz = mat([[one, zero, zero], [zero, cz, -sz], [zero, sz, cz]])
    ry = mat([[cy, zero, sy], [zero, one, zero], [-sy, zero, cy]])
    rx = mat([[cx, -sx, zero], [sx, cx, zero], [zero, zero, one]])
    return ops.matmul(rz, ops.matmul(ry, rx))


@keras.saving.register_keras_serializable(package="vnet_tf")
class RandomSpatialTransform(AugmentationLayer):
    """A random affine (rotation, scaling) and B-spline elastic deformation, one resampling.

    Args:
      elastic_probability: chance per sample of an elastic deformation.
      mesh_size: B-spline mesh cells per axis ``(z, y, x)`` (``mesh + 3`` control points).
      sigma: standard deviation of the control-point displacements, voxels.
      elastic_axes: which displacement components ``(z, y, x)`` are drawn (others zero).
      affine_probability: chance per sample of a random affine.
      rotation_degrees: maximum absolute rotation about the ``(z, y, x)`` axes.
      scale_range: isotropic zoom range (``> 1`` enlarges the content).
      anisotropic_scale: extra independent per-axis zoom, ``1 +- anisotropic_scale``.
      label_interpolation: ``"nearest"`` or ``"linear_argmax"`` (one-hot trilinear, argmax;
        needs ``num_classes``).
      num_classes: number of label classes, for ``"linear_argmax"``.
      fill_mode: ``"nearest"`` (edge extension) or ``"constant"`` (zeros) outside the input.
      seed: seed of this layer's random generator.
    """

    compile_with_xla = True

    def __init__(self, elastic_probability: float = 0.0, mesh_size: Sequence[int] = (2, 2, 2),
                 sigma: float = 15.0, elastic_axes: Sequence[bool] = (True, True, True),
                 affine_probability: float = 0.0, rotation_degrees: Sequence[float] = (0.0, 0.0, 0.0),
                 scale_range: Sequence[float] = (1.0, 1.0), anisotropic_scale: float = 0.0,
                 label_interpolation: str = "nearest", num_classes: Optional[int] = None,
                 fill_mode: str = "nearest", seed: Optional[int] = None, **kwargs):
        super().__init__(seed=seed, **kwargs)
        self.elastic_probability = check_probability("elastic_probability", elastic_probability)
        self.mesh_size = tuple(int(m) for m in mesh_size)
        if len(self.mesh_size) != 3 or min(self.mesh_size) < 1:
            raise ValueError(f"mesh_size must be 3 positive ints (z, y, x), got {mesh_size!r}")
        if float(sigma) < 0:
            raise ValueError(f"sigma must be >= 0 voxels, got {sigma!r}")
        self.sigma = float(sigma)
        self.elastic_axes = tuple(bool(a) for a in elastic_axes)
        if len(self.elastic_axes) != 3:
            raise ValueError(f"elastic_axes must be 3 booleans (z, y, x), got {elastic_axes!r}")
        self.affine_probability = check_probability("affine_probability", affine_probability)
        self.rotation_degrees = tuple(float(r) for r in rotation_degrees)
        if len(self.rotation_degrees) != 3 or min(self.rotation_degrees) < 0:
            raise ValueError(f"rotation_degrees must be 3 non-negative angles (z, y, x), got {rotation_degrees!r}")
        self.scale_range = check_range("scale_range", scale_range, positive=True)
        if not 0.0 <= float(anisotropic_scale) < 1.0:
            raise ValueError(f"anisotropic_scale must be in [0, 1), got {anisotropic_scale!r}")
        self.anisotropic_scale = float(anisotropic_scale)
        if label_interpolation not in LABEL_INTERPOLATIONS:
            raise ValueError(f"label_interpolation must be one of {LABEL_INTERPOLATIONS}, got {label_interpolation!r}")
        if label_interpolation == "linear_argmax" and (num_classes is None or int(num_classes) < 2):
            raise ValueError(f"label_interpolation='linear_argmax' needs num_classes >= 2, got {num_classes!r}")
        self.label_interpolation = label_interpolation
        self.num_classes = None if num_classes is None else int(num_classes)
        if fill_mode not in warp.FILL_MODES:
            raise ValueError(f"fill_mode must be one of {warp.FILL_MODES}, got {fill_mode!r}")
        self.fill_mode = fill_mode

    def coordinates(self, batch, spatial_shape):
        """The ``(B, D, H, W, 3)`` sampling coordinates of one random draw."""
        grid = warp.identity_grid(spatial_shape)[None]
        centre = (ops.cast(ops.convert_to_tensor(spatial_shape), "float32") - 1.0) / 2.0
        coords = ops.repeat(grid, batch, axis=0) if isinstance(batch, int) else grid + ops.zeros((batch, 1, 1, 1, 3))
        if self.affine_probability > 0:
            limits = ops.convert_to_tensor([math.radians(r) for r in self.rotation_degrees])
            angles = self.uniform((batch, 3), -1.0, 1.0) * limits
            zoom = self.uniform((batch, 1), *self.scale_range)
            a = self.anisotropic_scale
            zoom = zoom * self.uniform((batch, 3), 1.0 - a, 1.0 + a)
            matrix = _rotation_matrices(angles) / zoom[:, None, :]
            on = self.coin(batch, self.affine_probability)
            matrix = ops.where(on[:, None, None], matrix, ops.eye(3)[None])
            relative = coords - centre
            coords = ops.einsum("bij,bzyxj->bzyxi", matrix, relative) + centre
        if self.elastic_probability > 0 and self.sigma > 0:
            mz, my, mx = self.mesh_size
            noise = keras.random.normal((batch, mz + 3, my + 3, mx + 3, 3), stddev=self.sigma,
                                        seed=self.seed_generator)
            axes = ops.convert_to_tensor([float(a) for a in self.elastic_axes])
            on = ops.cast(self.coin(batch, self.elastic_probability), "float32")
            noise = noise * axes * ops.reshape(on, (-1, 1, 1, 1, 1))
            coords = coords + warp.bspline_field(noise, spatial_shape)
        return coords

    def transform(self, image, label):
        shape = ops.shape(image)
        coords = self.coordinates(shape[0], (shape[1], shape[2], shape[3]))
        warped = warp.sample_linear(image, coords, self.fill_mode)
        if label is None:
            return warped, None
        if self.label_interpolation == "nearest":
            new_label = warp.sample_nearest(label[..., None], coords, self.fill_mode)[..., 0]
        else:
            one_hot = ops.one_hot(ops.cast(label, "int32"), self.num_classes, dtype="float32")
            soft = warp.sample_linear(one_hot, coords, self.fill_mode)
            new_label = ops.cast(ops.argmax(soft, axis=-1), label.dtype)
        return warped, new_label

    def get_config(self):
        config = super().get_config()
        config.update(
            elastic_probability=self.elastic_probability, mesh_size=self.mesh_size,
            sigma=self.sigma, elastic_axes=self.elastic_axes,
            affine_probability=self.affine_probability, rotation_degrees=self.rotation_degrees,
            scale_range=self.scale_range, anisotropic_scale=self.anisotropic_scale,
            label_interpolation=self.label_interpolation, num_classes=self.num_classes,
            fill_mode=self.fill_mode)
        return config


@keras.saving.register_keras_serializable(package="vnet_tf")
class RandomElasticDeformation(RandomSpatialTransform):
    """The paper's random B-spline deformation alone (see :class:`RandomSpatialTransform`)."""

    def __init__(self, probability: float = 1.0, mesh_size=(2, 2, 2), sigma: float = 15.0,
                 axes=(True, True, True), **kwargs):
        for key in ("elastic_probability", "elastic_axes", "affine_probability"):
            kwargs.pop(key, None)
        super().__init__(elastic_probability=probability, mesh_size=mesh_size, sigma=sigma,
                         elastic_axes=axes, **kwargs)

    def get_config(self):
        config = super().get_config()
        config["probability"] = config.pop("elastic_probability")
        config["axes"] = config.pop("elastic_axes")
        for key in ("affine_probability", "rotation_degrees", "scale_range", "anisotropic_scale"):
            config.pop(key)
        return config


@keras.saving.register_keras_serializable(package="vnet_tf")
class RandomAffine(RandomSpatialTransform):
    """A random rotation and scaling about the volume centre alone."""

    def __init__(self, probability: float = 1.0, rotation_degrees=(15.0, 15.0, 15.0),
                 scale_range=(0.85, 1.15), anisotropic_scale: float = 0.0, **kwargs):
        for key in ("affine_probability", "elastic_probability", "mesh_size", "sigma", "elastic_axes"):
            kwargs.pop(key, None)
        super().__init__(affine_probability=probability, rotation_degrees=rotation_degrees,
                         scale_range=scale_range, anisotropic_scale=anisotropic_scale, **kwargs)

    def get_config(self):
        config = super().get_config()
        config["probability"] = config.pop("affine_probability")
        for key in ("elastic_probability", "mesh_size", "sigma", "elastic_axes"):
            config.pop(key)
        return config


@keras.saving.register_keras_serializable(package="vnet_tf")
class RandomFlip(AugmentationLayer):
    """Mirrors along each of ``axes`` (0 = z, 1 = y, 2 = x) with ``probability`` each."""

    def __init__(self, axes: Sequence[int] = (0, 1, 2), probability: float = 0.5, seed=None, **kwargs):
        super().__init__(seed=seed, **kwargs)
        self.axes = tuple(int(a) for a in axes)
        if any(a not in (0, 1, 2) for a in self.axes):
            raise ValueError(f"axes must be spatial axes among 0 (z), 1 (y), 2 (x), got {axes!r}")
        self.probability = check_probability("probability", probability)

    def transform(self, image, label):
        batch = ops.shape(image)[0]
        for axis in self.axes:
            on = self.coin(batch, self.probability)
            image = per_sample(on, ops.flip(image, axis=axis + 1), image)
            if label is not None:
                label = per_sample(on, ops.flip(label, axis=axis + 1), label)
        return image, label

    def get_config(self):
        config = super().get_config()
        config.update(axes=self.axes, probability=self.probability)
        return config
