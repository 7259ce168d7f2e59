"""Intensity augmentation: histogram matching to another training volume, gamma,
brightness/contrast, Gaussian noise, blur and simulated low resolution (see
:mod:`vnet_tf.augment.chain`)."""

from __future__ import annotations

import math

import keras
import numpy as np
from keras import ops

from vnet_tf.augment.base import AugmentationLayer, check_probability, check_range, per_sample


def _sample_values(image):
    """``(B, N)`` intensities of each sample (all channels)."""
    return ops.reshape(image, (ops.shape(image)[0], -1))


def _sample_stat(reduce, image):
    """``reduce`` (``ops.min``, ``ops.mean``, ...) of each sample, shaped (B, 1, 1, 1, 1)."""
    return ops.reshape(reduce(_sample_values(image), axis=1), (-1, 1, 1, 1, 1))


def _match_moments(image, reference):
    """``image`` shifted and scaled, per sample, to ``reference``'s mean and standard deviation."""
    std = ops.maximum(_sample_stat(ops.std, image), 1e-7)
    return ((image - _sample_stat(ops.mean, image)) / std * _sample_stat(ops.std, reference)
            + _sample_stat(ops.mean, reference))


def landmark_levels(num_landmarks: int, lower: float, upper: float) -> np.ndarray:
    """The quantile levels used as histogram landmarks."""
    return np.linspace(lower, upper, num_landmarks).astype(np.float32)


def quantile_table(images, num_landmarks: int = 11, lower: float = 0.01, upper: float = 0.99,
                   max_voxels: int = 200_000, seed: int = 0) -> np.ndarray:
    """``(num_images, num_landmarks)`` intensity quantiles of each image (numpy), the
    references :class:`HistogramMatching` maps onto. Large images are subsampled."""
    levels = landmark_levels(num_landmarks, lower, upper)
    rng = np.random.default_rng(seed)
    rows = []
    for image in images:
        values = np.asarray(image, np.float32).ravel()
        if values.size > max_voxels:
            values = values[rng.choice(values.size, max_voxels, replace=False)]
        rows.append(np.quantile(values, levels))
    return np.asarray(rows, np.float32)


def piecewise_linear(x, source, target):
    """Monotone piecewise-linear map taking ``source[:, k]`` to ``target[:, k]`` per sample
    (``x`` ``(B, ...)``, landmarks ``(B, K)`` increasing), extended linearly past the ends."""
    shape = [-1] + [1] * (len(x.shape) - 1)
    eps = 1e-6
    widths = ops.maximum(source[:, 1:] - source[:, :-1], eps)
    slopes = ops.maximum(target[:, 1:] - target[:, :-1], 0.0) / widths
    out = ops.reshape(target[:, 0], shape) + ops.reshape(slopes[:, 0], shape) * ops.minimum(
        x - ops.reshape(source[:, 0], shape), 0.0)
    for k in range(int(source.shape[1]) - 1):
        lo = ops.reshape(source[:, k], shape)
        if k == int(source.shape[1]) - 2:
            span = ops.maximum(x - lo, 0.0)  # the last segment extends past the top landmark
        else:
            span = ops.clip(x - lo, 0.0, ops.reshape(widths[:, k], shape))
        out = out + ops.reshape(slopes[:, k], shape) * span
    return out


@keras.saving.register_keras_serializable(package="vnet_tf")
class HistogramMatching(AugmentationLayer):
    """Maps each sample's intensity quantiles onto those of another training volume.

    Args:
      reference_quantiles: ``(num_volumes, num_landmarks)`` quantiles of the training
        volumes (:func:`quantile_table`); one row is drawn per sample. Without it, each
        sample is matched to another sample of the same batch (a random other one).
      probability: chance per sample.
      num_landmarks, lower, upper: the quantile levels (``linspace(lower, upper, n)``).

    The map is piecewise linear between the landmarks and monotone non-decreasing.
    """

    def __init__(self, reference_quantiles=None, probability: float = 1.0, num_landmarks: int = 11,
                 lower: float = 0.01, upper: float = 0.99, seed=None, **kwargs):
        super().__init__(seed=seed, **kwargs)
        self.probability = check_probability("probability", probability)
        if not 0.0 <= lower < upper <= 1.0:
            raise ValueError(f"need 0 <= lower < upper <= 1, got lower={lower!r}, upper={upper!r}")
        if int(num_landmarks) < 2:
            raise ValueError(f"num_landmarks must be >= 2, got {num_landmarks!r}")
        self.num_landmarks, self.lower, self.upper = int(num_landmarks), float(lower), float(upper)
        self.levels = landmark_levels(self.num_landmarks, self.lower, self.upper)
        self.reference = None
        if reference_quantiles is not None:
            table = np.asarray(reference_quantiles, np.float32)
            if table.ndim != 2 or table.shape[1] != self.num_landmarks or table.shape[0] < 1:
                raise ValueError(f"reference_quantiles must be (num_volumes, {self.num_landmarks}), got shape {table.shape}")
            if np.any(np.diff(table, axis=1) < 0):
                raise ValueError("reference_quantiles rows must be non-decreasing")
            self.reference = table

    def transform(self, image, label):
        batch = ops.shape(image)[0]
        values = ops.cast(_sample_values(image), "float32")
        source = ops.transpose(ops.quantile(values, self.levels, axis=1))  # (B, K)
        if self.reference is not None:
            table = ops.convert_to_tensor(self.reference)
            pick = keras.random.randint((batch,), 0, self.reference.shape[0], seed=self.seed_generator)
            target = ops.take(table, pick, axis=0)
        else:
            shift = keras.random.randint((), 1, ops.maximum(batch, 2), seed=self.seed_generator)
            partner = (ops.arange(batch) + shift) % batch
            target = ops.take(source, partner, axis=0)
        matched = piecewise_linear(ops.cast(image, "float32"), source, target)
        on = self.coin(batch, self.probability)
        return per_sample(on, ops.cast(matched, image.dtype), image), label

    def get_config(self):
        config = super().get_config()
        config.update(reference_quantiles=None if self.reference is None else self.reference.tolist(),
                      probability=self.probability, num_landmarks=self.num_landmarks,
                      lower=self.lower, upper=self.upper)
        return config


@keras.saving.register_keras_serializable(package="vnet_tf")
class RandomGamma(AugmentationLayer):
    """Gamma on each sample rescaled to [0, 1], then scaled back to its own range.

    ``invert=True`` applies it to the inverted intensities, ``1 - (1 - u) ** gamma``
    (nnU-Net's second gamma transform), which brightens where plain gamma darkens.
    ``retain_stats=True`` then shifts and scales the result back to the sample's own mean and
    standard deviation, as nnU-Net's gamma transforms do; the default leaves them changed."""

    def __init__(self, probability: float = 0.3, gamma_range=(0.7, 1.5), invert: bool = False,
                 retain_stats: bool = False, seed=None, **kwargs):
        super().__init__(seed=seed, **kwargs)
        self.probability = check_probability("probability", probability)
        self.gamma_range = check_range("gamma_range", gamma_range, positive=True)
        self.invert = bool(invert)
        self.retain_stats = bool(retain_stats)

    def transform(self, image, label):
        batch = ops.shape(image)[0]
        shape = (-1, 1, 1, 1, 1)
        low, high = _sample_stat(ops.min, image), _sample_stat(ops.max, image)
        span = ops.maximum(high - low, 1e-7)
        gamma = ops.reshape(self.uniform((batch,), *self.gamma_range), shape)
        unit = (image - low) / span
        if self.invert:
            unit = 1.0 - ops.power(1.0 - unit, gamma)
        else:
            unit = ops.power(unit, gamma)
        out = unit * span + low
        if self.retain_stats:
            out = _match_moments(out, image)
        return per_sample(self.coin(batch, self.probability), out, image), label

    def get_config(self):
        config = super().get_config()
        config.update(probability=self.probability, gamma_range=self.gamma_range, invert=self.invert,
                      retain_stats=self.retain_stats)
        return config


@keras.saving.register_keras_serializable(package="vnet_tf")
class RandomBrightnessContrast(AugmentationLayer):
    """``x * brightness``, then contrast about the sample's mean: ``m + (x - m) * contrast``."""

    def __init__(self, probability: float = 0.3, brightness_range=(0.75, 1.25),
                 contrast_range=(0.75, 1.25), seed=None, **kwargs):
        super().__init__(seed=seed, **kwargs)
        self.probability = check_probability("probability", probability)
        self.brightness_range = check_range("brightness_range", brightness_range, low=0.0)
        self.contrast_range = check_range("contrast_range", contrast_range, low=0.0)

    def transform(self, image, label):
        batch = ops.shape(image)[0]
        shape = (-1, 1, 1, 1, 1)
        bright = ops.reshape(self.uniform((batch,), *self.brightness_range), shape)
        contrast = ops.reshape(self.uniform((batch,), *self.contrast_range), shape)
        out = image * bright
        mean = _sample_stat(ops.mean, out)
        out = mean + (out - mean) * contrast
        return per_sample(self.coin(batch, self.probability), out, image), label

    def get_config(self):
        config = super().get_config()
        config.update(probability=self.probability, brightness_range=self.brightness_range,
                      contrast_range=self.contrast_range)
        return config


@keras.saving.register_keras_serializable(package="vnet_tf")
class RandomGaussianNoise(AugmentationLayer):
    """Adds N(0, s^2) noise, ``s`` drawn uniformly from ``[0, max_std]`` per sample."""

    def __init__(self, probability: float = 0.15, max_std: float = 0.1, seed=None, **kwargs):
        super().__init__(seed=seed, **kwargs)
        self.probability = check_probability("probability", probability)
        if float(max_std) < 0:
            raise ValueError(f"max_std must be >= 0, got {max_std!r}")
        self.max_std = float(max_std)

    def transform(self, image, label):
        batch = ops.shape(image)[0]
        std = ops.reshape(self.uniform((batch,), 0.0, self.max_std), (-1, 1, 1, 1, 1))
        noise = keras.random.normal(ops.shape(image), seed=self.seed_generator)
        out = image + ops.cast(noise * std, image.dtype)
        return per_sample(self.coin(batch, self.probability), out, image), label

    def get_config(self):
        config = super().get_config()
        config.update(probability=self.probability, max_std=self.max_std)
        return config


@keras.saving.register_keras_serializable(package="vnet_tf")
class RandomGaussianBlur(AugmentationLayer):
    """Separable Gaussian blur with sigma (voxels) drawn per sample from ``sigma_range``;
    edges are mirrored (symmetric padding). Kernel radius ``ceil(3 * max sigma)``."""

    def __init__(self, probability: float = 0.2, sigma_range=(0.5, 1.0), seed=None, **kwargs):
        super().__init__(seed=seed, **kwargs)
        self.probability = check_probability("probability", probability)
        self.sigma_range = check_range("sigma_range", sigma_range, positive=True)
        self.radius = max(1, int(math.ceil(3 * self.sigma_range[1])))

    def transform(self, image, label):
        batch = ops.shape(image)[0]
        sigma = self.uniform((batch, 1), *self.sigma_range)
        offsets = ops.arange(-self.radius, self.radius + 1, dtype="float32")[None]
        kernel = ops.exp(-0.5 * (offsets / sigma) ** 2)
        kernel = kernel / ops.sum(kernel, axis=1, keepdims=True)  # (B, K)
        out = image
        r = self.radius
        for axis in (1, 2, 3):
            pad = [(0, 0)] * 5
            pad[axis] = (r, r)
            padded = ops.pad(out, pad, mode="symmetric")
            out_shape = ops.shape(out)
            acc = None
            for k in range(2 * r + 1):
                start = [0] * 5
                start[axis] = k
                piece = ops.slice(padded, start, out_shape)
                term = ops.reshape(kernel[:, k], (-1, 1, 1, 1, 1)) * piece
                acc = term if acc is None else acc + term
            out = acc
        return per_sample(self.coin(batch, self.probability), ops.cast(out, image.dtype), image), label

    def get_config(self):
        config = super().get_config()
        config.update(probability=self.probability, sigma_range=self.sigma_range)
        return config


def _lowres_axis(n: int, coarse):
    """Per-sample resampling of one axis of length ``n`` through ``coarse`` (B,) cells:
    nearest-neighbour down (coarse cell ``j`` takes the voxel under its centre,
    ``floor((j + 1/2) n / m)``), then linear back up with the edges held constant. Returns
    the two source voxels ``(B, n)`` of every output voxel and the weight of the second."""
    m = coarse[:, None]
    x = ops.arange(n, dtype="float32")[None]
    c = ops.clip((x + 0.5) * m / n - 0.5, 0.0, m - 1.0)  # output voxel in coarse units
    j0 = ops.floor(c)
    j1 = ops.minimum(j0 + 1.0, m - 1.0)

    def source(j):
        return ops.cast(ops.minimum(ops.floor((j + 0.5) * n / m), n - 1.0), "int32")

    return source(j0), source(j1), c - j0


def _along(values, rank, axis):
    """``values`` (B, n) reshaped to broadcast along ``axis`` of a rank-``rank`` tensor."""
    shape = [1] * rank
    shape[0], shape[axis] = -1, values.shape[-1]
    return ops.reshape(values, shape)


def _take(x, index, axis):
    return ops.take_along_axis(x, ops.broadcast_to(_along(index, len(x.shape), axis), ops.shape(x)), axis=axis)


def simulate_low_resolution(image, zoom):
    """``image`` (B, D, H, W, C) resampled down to ``round(zoom * shape)`` voxels per axis
    (nearest neighbour) and back up to its own shape (trilinear); ``zoom`` (B,) in (0, 1]."""
    out = image
    for axis in (1, 2, 3):
        n = int(image.shape[axis])
        coarse = ops.maximum(ops.round(zoom * n), 1.0)
        first, second, weight = _lowres_axis(n, coarse)
        weight = ops.cast(_along(weight, len(image.shape), axis), image.dtype)
        a = _take(out, first, axis)
        out = a + weight * (_take(out, second, axis) - a)
    return out


@keras.saving.register_keras_serializable(package="vnet_tf")
class RandomLowResolution(AugmentationLayer):
    """nnU-Net's simulated low resolution: each chosen sample is resampled to a coarser grid,
    ``zoom`` drawn per sample from ``zoom_range`` (the same on every axis), and back, so edges
    blur into steps as in a thick-slice scan. Down by nearest neighbour, up by trilinear
    interpolation (nnU-Net uses cubic); all channels alike."""

    def __init__(self, probability: float = 0.25, zoom_range=(0.5, 1.0), seed=None, **kwargs):
        super().__init__(seed=seed, **kwargs)
        self.probability = check_probability("probability", probability)
        self.zoom_range = check_range("zoom_range", zoom_range, positive=True)
        if self.zoom_range[1] > 1.0:
            raise ValueError(f"zoom_range must lie in (0, 1] (a coarser grid), got {zoom_range!r}")

    def transform(self, image, label):
        batch = ops.shape(image)[0]
        out = simulate_low_resolution(image, self.uniform((batch,), *self.zoom_range))
        return per_sample(self.coin(batch, self.probability), out, image), label

    def get_config(self):
        config = super().get_config()
        config.update(probability=self.probability, zoom_range=self.zoom_range)
        return config
