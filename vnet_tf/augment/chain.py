"""Random augmentation as Keras layers on ``keras.ops``.

Every layer (in :mod:`vnet_tf.augment.spatial` and :mod:`vnet_tf.augment.intensity`,
all importable from here) takes and returns a dict ``{"image": (B, D, H, W, C) float, "label":
(B, D, H, W) int}`` (``"label"`` optional; an unbatched ``(D, H, W, C)`` image and
``(D, H, W)`` label work too), draws its random numbers from its own
``keras.random.SeedGenerator`` and applies each transform to each sample with its own
probability. The same layers run inside ``tf.data.Dataset.map`` (host), inside a compiled
training step (device), and under Keras's JAX backend.

Spatial transforms are composed into one resampling: :class:`RandomSpatialTransform`
builds one coordinate field ``c + A (p - c) + u(p)`` per sample (``A`` the random
rotation/scaling about the centre ``c``, ``u`` the cubic B-spline displacement) and samples
the image once (trilinear) and the label once (nearest neighbour, or one-hot trilinear +
argmax). Flips are exact index reversals of the result.

The paper's augmentation (Milletari et al. 2016, section 3): a B-spline deformation from a
2x2x2-cell control grid with control points displaced by N(0, 15 voxels), and histogram
matching to another training volume, drawn anew every iteration::

    RandomElasticDeformation(probability=1.0, mesh_size=(2, 2, 2), sigma=15.0)
    HistogramMatching(reference_quantiles=quantile_table(train_images), probability=1.0)

(The official code instead uses p = 0.5 for the deformation and zeroes one displacement
component: ``axes=(False, True, True)``.)
"""

from __future__ import annotations

import dataclasses
import zlib
from typing import Callable, Optional, Sequence

import keras
from keras import layers

from vnet_tf.augment.base import AugmentationLayer
from vnet_tf.augment.config import AugmentConfig
from vnet_tf.augment.intensity import (HistogramMatching, RandomBrightnessContrast,
                                       RandomGamma, RandomGaussianBlur, RandomGaussianNoise,
                                       RandomLowResolution, quantile_table)
from vnet_tf.augment.spatial import (RandomAffine, RandomElasticDeformation, RandomFlip,
                                     RandomSpatialTransform)

__all__ = [
    "Augmentation", "AugmentConfig", "TRANSFORMS", "Transform", "build_augmentation", "transform_seed",
    "quantile_table",
    "HistogramMatching", "RandomBrightnessContrast", "RandomGamma", "RandomGaussianBlur",
    "RandomGaussianNoise", "RandomLowResolution", "RandomAffine", "RandomElasticDeformation", "RandomFlip",
    "RandomSpatialTransform",
]


@keras.saving.register_keras_serializable(package="vnet_tf")
class Augmentation(AugmentationLayer):
    """Applies augmentation layers in order, on one dict of image and label."""

    def __init__(self, transforms: Sequence[layers.Layer] = (), **kwargs):
        kwargs.pop("seed", None)
        super().__init__(**kwargs)
        self.transforms = [keras.saving.deserialize_keras_object(t) if isinstance(t, dict) else t
                           for t in transforms]

    def transform(self, image, label):
        for layer in self.transforms:
            image, label = layer.transform(image, label)
        return image, label

    def get_config(self):
        config = super().get_config()
        config.pop("seed")
        config["transforms"] = [keras.saving.serialize_keras_object(t) for t in self.transforms]
        return config


@dataclasses.dataclass(frozen=True)
class Transform:
    """One entry of :data:`TRANSFORMS`: when ``config`` enables it, and how to build its layer
    (``build(config, num_classes, reference_quantiles, seed)``)."""

    name: str
    enabled: Callable[[AugmentConfig], bool]
    build: Callable[..., layers.Layer]


# Every transform, in the order applied (nnU-Net's). Adding one: its layer class, its
# AugmentConfig fields, and an entry here; its seed follows from its name.
TRANSFORMS = (
    Transform("histogram_matching", lambda c: c.histogram_probability > 0,
              lambda c, k, refs, s: HistogramMatching(refs, c.histogram_probability,
                                                      num_landmarks=c.histogram_landmarks, seed=s)),
    Transform("spatial", lambda c: c.elastic_probability > 0 or c.affine_probability > 0,
              lambda c, k, refs, s: RandomSpatialTransform(
                  elastic_probability=c.elastic_probability, mesh_size=c.elastic_mesh, sigma=c.elastic_sigma,
                  elastic_axes=c.elastic_axes, affine_probability=c.affine_probability,
                  rotation_degrees=c.rotation_degrees, scale_range=c.scale_range,
                  anisotropic_scale=c.anisotropic_scale, label_interpolation=c.label_interpolation,
                  num_classes=k, fill_mode=c.fill_mode, seed=s)),
    Transform("noise", lambda c: c.noise_probability > 0,
              lambda c, k, refs, s: RandomGaussianNoise(c.noise_probability, c.noise_std, seed=s)),
    Transform("blur", lambda c: c.blur_probability > 0,
              lambda c, k, refs, s: RandomGaussianBlur(c.blur_probability, c.blur_sigma, seed=s)),
    Transform("brightness_contrast", lambda c: c.brightness_contrast_probability > 0,
              lambda c, k, refs, s: RandomBrightnessContrast(c.brightness_contrast_probability, c.brightness_range,
                                                             c.contrast_range, seed=s)),
    Transform("low_resolution", lambda c: c.lowres_probability > 0,
              lambda c, k, refs, s: RandomLowResolution(c.lowres_probability, c.lowres_zoom, seed=s)),
    Transform("inverted_gamma", lambda c: c.gamma_inverted_probability > 0,
              lambda c, k, refs, s: RandomGamma(c.gamma_inverted_probability, c.gamma_range, invert=True,
                                                retain_stats=c.gamma_retain_stats, seed=s)),
    Transform("gamma", lambda c: c.gamma_probability > 0,
              lambda c, k, refs, s: RandomGamma(c.gamma_probability, c.gamma_range,
                                                retain_stats=c.gamma_retain_stats, seed=s)),
    Transform("flip", lambda c: c.flip_probability > 0 and len(c.flip_axes) > 0,
              lambda c, k, refs, s: RandomFlip(c.flip_axes, c.flip_probability, seed=s)),
)


def transform_seed(seed: Optional[int], name: str) -> Optional[int]:
    """The seed of transform ``name`` in a run seeded with ``seed``: a stable hash of both, so
    that adding or reordering transforms leaves the others' random streams as they were."""
    if seed is None:
        return None
    return zlib.crc32(f"{int(seed)}:{name}".encode("utf-8")) % (2 ** 31 - 1)


def build_augmentation(config: AugmentConfig, num_classes: int = 2, reference_quantiles=None,
                       seed: Optional[int] = None) -> Optional[Augmentation]:
    """The :class:`Augmentation` layer for ``config`` (``None`` when nothing is enabled): the
    enabled entries of :data:`TRANSFORMS`, in order.

    ``reference_quantiles`` (:func:`quantile_table` of the training images) are the targets
    of histogram matching; without them a sample is matched to another one of its batch.
    Each transform's seed is :func:`transform_seed` of ``seed`` and its name. Invalid values
    raise ``ValueError`` naming the setting.
    """
    chosen = [entry for entry in TRANSFORMS if entry.enabled(config)]
    if not chosen:
        return None
    return Augmentation([entry.build(config, num_classes, reference_quantiles, transform_seed(seed, entry.name))
                         for entry in chosen], name="augmentation")
