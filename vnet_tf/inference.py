"""Whole-volume inference: Gaussian-blended sliding window, test-time mirroring,
post-processing, and the way back to the scan's own grid.

:func:`sliding_window` works on any predictor ``f(patches (n, pz, py, px, C)) ->
probabilities (n, pz, py, px, K)`` (a Keras model, a SavedModel signature, a test
double). Memory beyond the output arrays is bounded by ``batch_size`` windows.
"""

from __future__ import annotations

import dataclasses
import itertools
from typing import Callable, List, Optional, Sequence, Tuple

import keras
import numpy as np
import SimpleITK as sitk

from vnet_tf.io import Geometry
from vnet_tf.preprocess import PreprocessConfig, preprocess_case, restore_label

BLENDS = ("gaussian", "constant")
POSTPROCESS = ("none", "largest", "min_size")

Predictor = Callable[[np.ndarray], np.ndarray]


@dataclasses.dataclass(frozen=True)
class InferenceConfig:
    """Sliding-window settings.

    ``overlap``: fraction of the patch that neighbouring windows share (0.5: nnU-Net).
    ``sigma_scale``: Gaussian sigma as a fraction of the patch (nnU-Net: 1/8).
    ``mirror_axes``: spatial axes (0 = z, 1 = y, 2 = x) to mirror over for test-time
    augmentation; every subset is predicted and the probabilities averaged (2^n passes).
    ``postprocess``: ``"largest"`` keeps each class's largest connected component;
    ``"min_size"`` removes components smaller than ``min_size`` voxels.
    """

    patch_size_zyx: Tuple[int, int, int] = (32, 32, 32)
    overlap: float = 0.5
    batch_size: int = 2
    blend: str = "gaussian"
    sigma_scale: float = 0.125
    mirror_axes: Tuple[int, ...] = ()
    postprocess: str = "none"
    min_size: int = 0

    def validate(self) -> "InferenceConfig":
        if len(self.patch_size_zyx) != 3 or min(self.patch_size_zyx) < 1:
            raise ValueError(f"patch_size_zyx must be 3 positive sizes, got {self.patch_size_zyx!r}")
        if not 0.0 <= self.overlap < 1.0:
            raise ValueError(f"overlap must be in [0, 1), got {self.overlap!r}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size!r}")
        if self.blend not in BLENDS:
            raise ValueError(f"blend must be one of {BLENDS}, got {self.blend!r}")
        if self.sigma_scale <= 0:
            raise ValueError(f"sigma_scale must be > 0, got {self.sigma_scale!r}")
        if any(a not in (0, 1, 2) for a in self.mirror_axes) or len(set(self.mirror_axes)) != len(self.mirror_axes):
            raise ValueError(f"mirror_axes must be distinct axes among 0 (z), 1 (y), 2 (x), got {self.mirror_axes!r}")
        if self.postprocess not in POSTPROCESS:
            raise ValueError(f"postprocess must be one of {POSTPROCESS}, got {self.postprocess!r}")
        if self.min_size < 0:
            raise ValueError(f"min_size must be >= 0, got {self.min_size!r}")
        return self

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def parse_mirror_axes(values: Sequence[str]) -> Tuple[int, ...]:
    """Axes from command-line text: integers among 0 (z), 1 (y), 2 (x), or ``["none"]`` for
    no mirroring. Raises ``ValueError`` naming ``mirror_axes``."""
    texts = [] if list(values) == ["none"] else list(values)
    try:
        axes = tuple(int(a) for a in texts)
    except ValueError as err:
        raise ValueError(f"mirror_axes: expected integers 0-2 or 'none', got {','.join(values)}") from err
    if any(a not in (0, 1, 2) for a in axes):
        raise ValueError(f"mirror_axes: expected integers 0-2 or 'none', got {','.join(values)}")
    return axes


def gaussian_weights(patch: Sequence[int], sigma_scale: float = 0.125) -> np.ndarray:
    """Importance map of a window: a Gaussian centred on the patch, sigma = patch *
    ``sigma_scale`` per axis, scaled to a maximum of 1 and floored at its smallest
    non-zero value (so that no voxel gets weight 0)."""
    axes = []
    for n in patch:
        x = np.arange(n, dtype=np.float64) - (n - 1) / 2.0
        sigma = max(n * sigma_scale, 1e-6)
        axes.append(np.exp(-0.5 * (x / sigma) ** 2))
    weights = axes[0][:, None, None] * axes[1][None, :, None] * axes[2][None, None, :]
    weights /= weights.max()
    weights = np.maximum(weights, weights[weights > 0].min())
    return weights.astype(np.float32)


def window_starts(size: int, patch: int, overlap: float) -> List[int]:
    """Start positions covering ``[0, size)`` with windows of ``patch`` (``size >= patch``),
    spaced at most ``patch * (1 - overlap)`` apart and spread evenly, first at 0 and last
    at ``size - patch``."""
    if size <= patch:
        return [0]
    step = max(1, int(patch * (1.0 - overlap)))
    count = int(np.ceil((size - patch) / step)) + 1
    return sorted({int(round(v)) for v in np.linspace(0, size - patch, count)})


def _mirrored_predict(predictor: Predictor, batch: np.ndarray, mirror_axes: Sequence[int]) -> np.ndarray:
    subsets = [()] + [c for r in range(1, len(mirror_axes) + 1) for c in itertools.combinations(mirror_axes, r)]
    total = None
    for axes in subsets:
        flip = tuple(a + 1 for a in axes)
        x = np.flip(batch, flip) if flip else batch
        y = np.asarray(predictor(np.ascontiguousarray(x)), dtype=np.float32)
        y = np.flip(y, flip) if flip else y
        total = y if total is None else total + y
    return total / len(subsets)


def sliding_window(image: np.ndarray, predictor: Predictor, config: InferenceConfig) -> np.ndarray:
    """Class probabilities ``(z, y, x, K)`` of a whole ``(z, y, x, C)`` volume.

    The volume is zero-padded (centred) where smaller than the patch; windows are predicted
    ``config.batch_size`` at a time, weighted by the Gaussian (or constant) importance map,
    summed, and divided by the summed weights.
    """
    config.validate()
    if image.ndim != 4:
        raise ValueError(f"image must be (z, y, x, channels), got shape {image.shape}")
    patch = np.array(config.patch_size_zyx)
    size = np.array(image.shape[:3])
    padded_size = np.maximum(size, patch)
    before = (padded_size - size) // 2
    pad = [(int(b), int(p - s - b)) for b, p, s in zip(before, padded_size, size)] + [(0, 0)]
    volume = np.pad(image.astype(np.float32, copy=False), pad) if np.any(padded_size > size) else image
    weights = (gaussian_weights(patch, config.sigma_scale) if config.blend == "gaussian"
               else np.ones(tuple(patch), np.float32))
    starts = list(itertools.product(*[window_starts(int(s), int(p), config.overlap)
                                      for s, p in zip(padded_size, patch)]))
    accum = None
    norm = np.zeros(tuple(padded_size), np.float32)
    for first in range(0, len(starts), config.batch_size):
        chunk = starts[first:first + config.batch_size]
        batch = np.stack([volume[z:z + patch[0], y:y + patch[1], x:x + patch[2]] for z, y, x in chunk])
        probabilities = _mirrored_predict(predictor, batch, config.mirror_axes)
        if probabilities.shape[:4] != batch.shape[:4]:
            raise ValueError(f"the predictor returned shape {probabilities.shape} for windows of shape {batch.shape}")
        if accum is None:
            accum = np.zeros(tuple(padded_size) + (probabilities.shape[-1],), np.float32)
        for (z, y, x), prob in zip(chunk, probabilities):
            accum[z:z + patch[0], y:y + patch[1], x:x + patch[2]] += prob * weights[..., None]
            norm[z:z + patch[0], y:y + patch[1], x:x + patch[2]] += weights
    accum /= norm[..., None]
    crop = tuple(slice(int(b), int(b + s)) for b, s in zip(before, size))
    return accum[crop]


def postprocess_label(label: np.ndarray, mode: str = "largest", min_size: int = 0) -> np.ndarray:
    """Per foreground class, keeps the largest connected component (``"largest"``) or the
    components of at least ``min_size`` voxels (``"min_size"``); removed voxels become 0.
    Components are face-and-edge-and-corner connected (26-neighbourhood)."""
    if mode == "none":
        return label
    if mode not in POSTPROCESS:
        raise ValueError(f"postprocess must be one of {POSTPROCESS}, got {mode!r}")
    out = np.array(label, copy=True)
    for cls in np.unique(label):
        if cls == 0:
            continue
        mask = sitk.GetImageFromArray((label == cls).astype(np.uint8))
        components = sitk.RelabelComponent(sitk.ConnectedComponent(mask, True), sortByObjectSize=True)
        comp = sitk.GetArrayFromImage(components)
        if mode == "largest":
            drop = (comp > 1)
        else:
            ids, counts = np.unique(comp[comp > 0], return_counts=True)
            drop = np.isin(comp, ids[counts < min_size])
        out[drop & (label == cls)] = 0
    return out


def keras_predictor(model) -> Predictor:
    """A predictor over a Keras model (float32 probabilities as numpy).

    Under the TensorFlow backend the model call is a ``tf.function`` (traced once per window
    shape): on the reference CPU that made a window batch 1.6-2.3x faster than calling the
    model eagerly (BENCHMARKS.md, issue 8). Other backends call the model directly.
    """
    def call(batch):
        return model(batch, training=False)

    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf  # pylint: disable=import-outside-toplevel
        call = tf.function(call, reduce_retracing=True)

    def predict(batch):
        return np.asarray(call(batch), dtype=np.float32)
    return predict


@dataclasses.dataclass
class Prediction:
    label: np.ndarray                 # (z, y, x) on the original grid
    geometry: Geometry                # the original scan's geometry
    probabilities: Optional[np.ndarray] = None   # (z, y, x, K) on the preprocessed grid


def predict_case(images: Sequence[sitk.Image], predictor: Predictor, preprocess: PreprocessConfig,
                 config: InferenceConfig, keep_probabilities: bool = False) -> Prediction:
    """Preprocesses a case as at training, segments it, post-processes, and maps the label
    map back to the original grid (undoing crop/pad, resampling and reorientation)."""
    image, _, record = preprocess_case(images, None, preprocess)
    probabilities = sliding_window(image, predictor, config)
    label = np.argmax(probabilities, axis=-1).astype(np.uint8)
    label = postprocess_label(label, config.postprocess, config.min_size)
    restored, geometry = restore_label(label, record)
    return Prediction(restored, geometry, probabilities if keep_probabilities else None)
