"""Whole-volume inference, written once as a TensorFlow graph.

:class:`Segmenter` takes a scan's array as it was read (any orientation, any spacing) and
returns its label map on the same grid. Inside, in this order: reorientation to the run's
orientation, resampling to the run's spacing, the intensity normalisation of training, the
centre crop where the run used one, the Gaussian-blended sliding window with test-time
mirroring (the mean over an ensemble's models when the model is one), the argmax, and the
way back to the scan's grid. The same functions serve ``evaluate.py`` (called from a
workdir, or loaded from an export), training-time validation (:meth:`Segmenter.sliding_window`
on cached, preprocessed cases) and the exported SavedModel (:mod:`vnet_tf.inference.signatures`), so what
is served is what was evaluated.

Invalid inputs fail with ``tf.errors.InvalidArgumentError`` and a message naming the input,
what was expected and what was found (docs/reference/serving.md: the list).
"""

from __future__ import annotations

import dataclasses
import itertools
from typing import Sequence, Tuple

import numpy as np
import tensorflow as tf

from vnet_tf.core.integrity import NONFINITE
from vnet_tf.inference import volume_ops
from vnet_tf.data.preprocess import PreprocessConfig
from vnet_tf.inference.segmentation import POSTPROCESS_MODES as POSTPROCESS

BLENDS = ("gaussian", "constant")
# The largest volume, at the run's spacing, that one call may segment (sized by the measured
# peak memory of a larger request: BENCHMARKS.md, "Serving: memory and response sizes"), and
# the smallest axis it accepts.
DEFAULT_MAX_VOXELS = 48 * 1024 * 1024
MIN_AXIS = 4
# How far a request's direction may be from orthonormal (each entry of DᵀD - I): float32
# cosines written by scanners and converters are within 1e-6; a sheared grid is refused.
DIRECTION_TOLERANCE = 1e-3


@dataclasses.dataclass(frozen=True)
class InferenceConfig:
    """Sliding-window settings.

    ``overlap``: fraction of the patch that neighbouring windows share (0.5: nnU-Net).
    ``sigma_scale``: Gaussian sigma as a fraction of the patch (nnU-Net: 1/8).
    ``mirror_axes``: spatial axes (0 = z, 1 = y, 2 = x) to mirror over for test-time
    augmentation; every subset is predicted and the probabilities averaged (2^n passes).
    ``postprocess``: ``"largest"`` keeps each class's largest connected component;
    ``"min_size"`` removes components smaller than ``min_size`` voxels (on the host, after
    the graph: :mod:`vnet_tf.inference.segmentation`).
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


def window_starts(size, patch: int, overlap: float):
    """Start positions (int32 tensor) covering ``[0, size)`` with windows of ``patch``
    (``size >= patch``): spaced at most ``patch * (1 - overlap)`` apart and spread evenly,
    first at 0 and last at ``size - patch``, in integer arithmetic (no duplicates)."""
    span = tf.maximum(tf.convert_to_tensor(size, tf.int32) - patch, 0)
    step = max(1, int(patch * (1.0 - overlap)))
    gaps = tf.maximum((span + step - 1) // step, 1)
    index = tf.range(gaps + 1)
    starts = (index * span + gaps // 2) // gaps
    return tf.cond(span > 0, lambda: starts, lambda: tf.zeros([1], tf.int32))


def _fixed_length(values, n: int, fill: float):
    """``values`` cut or padded with ``fill`` to ``n`` entries."""
    return tf.pad(values, [[0, tf.maximum(n - tf.size(values), 0)]], constant_values=fill)[:n]


def _add(total, start, value):
    """``total`` with ``value`` added at ``start`` (over the first 3 axes; the others whole)."""
    begin = tf.concat([start, tf.zeros([len(total.shape) - 3], tf.int32)], 0)
    return tf.raw_ops.TensorStridedSliceUpdate(input=total, begin=begin, end=begin + tf.shape(value),
                                               strides=tf.ones_like(begin),
                                               value=tf.slice(total, begin, tf.shape(value)) + value)


class Untracked:
    """A plain holder: tf.Module does not look inside it (the model's variables are tracked
    once, as a list, by the module)."""

    def __init__(self, model):
        self.model = model


class Segmenter(tf.Module):
    """The whole-volume inference of one model (or an ensemble: any callable
    ``model(patches, training=False)`` with ``variables``) with a run's settings.

    - :meth:`segment` (a ``tf.function``): ``volume`` float32 ``(D, H, W, C)`` as read,
      ``spacing`` ``[3]`` (mm, z-y-x), ``direction`` ``[9]`` (SimpleITK's) -> ``labels`` int32
      ``(D, H, W)`` and ``probabilities`` float32 ``(D, H, W, K)`` on the input's grid.
    - :meth:`segment_labels`: the same without the probabilities (less memory).
    - :meth:`sliding_window`: a preprocessed ``(D, H, W, C)`` volume -> probabilities.
    - :meth:`preprocess_volume`: the network's input for a volume as :meth:`segment` makes it.
    - :meth:`predict_patch`: ``(N, pz, py, px, C)`` preprocessed patches -> probabilities.
    """

    def __init__(self, model, preprocess: PreprocessConfig, inference: InferenceConfig, channels: int,
                 num_classes: int, max_voxels: int = DEFAULT_MAX_VOXELS):
        super().__init__(name="vnet_segmenter")
        preprocess, inference = preprocess.validate(), inference.validate()
        self._holder = Untracked(model)
        self.model_variables = [getattr(v, "value", v) for v in getattr(model, "variables", [])]
        self.channels, self.num_classes = int(channels), int(num_classes)
        self.preprocess, self.inference = preprocess, inference
        self.max_voxels = int(max_voxels)
        # Labels are uint8 inside the graph (a quarter of int32's memory for a large scan) and
        # int32 in its outputs.
        self.label_dtype = tf.uint8 if self.num_classes <= 256 else tf.int32
        self.patch = tuple(int(p) for p in inference.patch_size_zyx)
        weights = (gaussian_weights(self.patch, inference.sigma_scale) if inference.blend == "gaussian"
                   else np.ones(self.patch, np.float32))
        self.window_weights = tf.constant(weights)
        c, p = self.channels, self.patch
        volume_spec = tf.TensorSpec([None, None, None, c], tf.float32, name="volume")
        geometry = [tf.TensorSpec([None], tf.float32, name="spacing"),
                    tf.TensorSpec([None], tf.float32, name="direction")]
        self.segment = tf.function(lambda v, s, d: self._segment(v, s, d, True),
                                   autograph=False, input_signature=[volume_spec, *geometry])
        self.segment_labels = tf.function(lambda v, s, d: self._segment(v, s, d, False),
                                          autograph=False, input_signature=[volume_spec, *geometry])
        self.sliding_window = tf.function(self._sliding_window, autograph=False, input_signature=[volume_spec])
        self.preprocess_volume = tf.function(lambda v, s, d: self._preprocess(v, s, d)[0],
                                             autograph=False, input_signature=[volume_spec, *geometry])
        self.predict_patch = tf.function(self._predict_patch, autograph=False, input_signature=[
            tf.TensorSpec([None, p[0], p[1], p[2], c], tf.float32, name="patches")])

    # -- windows -------------------------------------------------------------------------
    def _predict_patch(self, patches):
        return {"probabilities": tf.cast(self._holder.model(patches, training=False), tf.float32)}

    def _mirrored(self, patches):
        """The mean of the model's probabilities over every subset of the mirror axes (each
        flipped in, and back out), one subset per loop step: the model is traced once and
        holds one window batch at a time."""
        axes = self.inference.mirror_axes
        subsets = [()] + [s for r in range(1, len(axes) + 1) for s in itertools.combinations(axes, r)]
        if len(subsets) == 1:
            return tf.cast(self._holder.model(patches, training=False), tf.float32)
        masks = tf.constant([[a in subset for a in range(3)] for subset in subsets])

        def body(i, total):
            flip = tf.boolean_mask(tf.constant([1, 2, 3]), masks[i])
            y = tf.cast(self._holder.model(tf.reverse(patches, flip), training=False), tf.float32)
            return i + 1, total + tf.reverse(y, flip)

        shape = tf.concat([tf.shape(patches)[:4], [self.num_classes]], 0)
        _, total = tf.while_loop(lambda i, t: i < len(subsets), body, (0, tf.zeros(shape)))
        return total / float(len(subsets))

    def _sliding_window(self, volume):
        """``(D, H, W, C)`` preprocessed volume -> ``(D, H, W, K)`` probabilities."""
        return self._blend(volume, with_probabilities=True)[1]

    def _row(self, volume, z, y, x_starts):
        """The windows at ``(z, y, x)`` for every ``x`` of ``x_starts``, weighted by the
        importance map and summed: a strip ``(pz, py, W, K)`` and its summed weights
        ``(pz, py, W)``. Each batch's windows are gathered in one op from the row's slice of
        the input ``(pz, py, W, C)``. Along x the same streaming as :meth:`_blend`'s along z: a
        carry one window wide takes each window, gives up the columns no later window reaches,
        and moves on (sums of equal shapes and concatenations: no copy of anything larger)."""
        patch, channels, bs = self.patch, self.channels, self.inference.batch_size
        n = tf.size(x_starts)
        widths = tf.concat([x_starts[1:], [x_starts[-1] + patch[2]]], 0) - x_starts
        rows = tf.slice(volume, tf.stack([z, y, 0, 0]), [patch[0], patch[1], -1, channels])  # (pz, py, W, C)

        def batch(k, carry, carry_norm, pieces, norm_pieces):
            xs = x_starts[k * bs:tf.minimum((k + 1) * bs, n)]  # the last batch may hold fewer
            columns = xs[:, None] + tf.range(patch[2])[None, :]  # (b, px): each window's x indices
            patches = tf.ensure_shape(tf.transpose(tf.gather(rows, columns, axis=2), [2, 0, 1, 3, 4]),
                                      [None, *patch, channels])
            windows = self._mirrored(patches) * self.window_weights[..., None]

            def add(j, carry, carry_norm, pieces, norm_pieces):
                carry, carry_norm, width = carry + windows[j], carry_norm + self.window_weights, widths[k * bs + j]
                pieces = pieces.write(k * bs + j, tf.transpose(carry[:, :, :width], [2, 0, 1, 3]))
                norm_pieces = norm_pieces.write(k * bs + j, tf.transpose(carry_norm[:, :, :width], [2, 0, 1]))
                carry = tf.ensure_shape(tf.concat([carry[:, :, width:], tf.zeros_like(carry[:, :, :width])], 2),
                                        [*patch, self.num_classes])
                carry_norm = tf.ensure_shape(
                    tf.concat([carry_norm[:, :, width:], tf.zeros_like(carry_norm[:, :, :width])], 2), patch)
                return j + 1, carry, carry_norm, pieces, norm_pieces

            return (k + 1, *tf.while_loop(lambda j, *_: j < tf.size(xs), add,
                                          (0, carry, carry_norm, pieces, norm_pieces), parallel_iterations=1)[1:])

        def pieces(shape):
            return tf.TensorArray(tf.float32, size=n, infer_shape=False, element_shape=shape)

        state = (0, tf.zeros([*patch, self.num_classes]), tf.zeros(patch),
                 pieces([None, patch[0], patch[1], self.num_classes]), pieces([None, patch[0], patch[1]]))
        # One batch at a time: a batch predicted ahead would hold the network's activations twice.
        _, _, _, strip, strip_norm = tf.while_loop(lambda k, *_: k * bs < n, batch, state, parallel_iterations=1)
        return tf.transpose(strip.concat(), [1, 2, 0, 3]), tf.transpose(strip_norm.concat(), [1, 2, 0])

    def _blend(self, volume, with_probabilities: bool):
        """``(labels, probabilities)`` of a ``(D, H, W, C)`` preprocessed volume:
        :attr:`label_dtype` ``(D, H, W)`` and float32 ``(D, H, W, K)`` (``None`` unless asked).

        The volume is zero-padded (centred) to at least the patch. Windows go in planes (one
        z start each), a row (one y start) at a time (:meth:`_row`); each row's weighted sums
        are added into a slab one patch deep (``accum``, ``(pz, H, W, K)``), and the weights
        into ``norm``. No later window reaches the slab's rows above the next plane's start,
        so after each plane those rows are final: their labels (``argmax(accum)``, as ``norm >
        0``) and probabilities (``accum / norm``) are written out and the slab moves down.
        Memory: a slab of class sums, not the whole volume's."""
        patch, k_classes, overlap = self.patch, self.num_classes, self.inference.overlap
        size = tf.shape(volume)[:3]
        padded = tf.maximum(size, patch)
        before = (padded - size) // 2
        volume = volume_ops.place_window(volume, -before, padded)
        z_starts, y_starts, x_starts = [window_starts(padded[a], patch[a], overlap) for a in range(3)]
        z_ends = tf.concat([z_starts[1:], padded[:1]], 0)  # rows [z_starts[i], z_ends[i]) final after plane i
        inner = tf.concat([[0], before[1:]], 0), size[1:]  # the slab's rows without the padding

        def plane(i, accum, norm, labels, probabilities):
            def add_row(r, accum, norm):
                strip, strip_norm = self._row(volume, z_starts[i], y_starts[r], x_starts)
                start = tf.stack([0, y_starts[r], 0])
                return r + 1, _add(accum, start, strip), _add(norm, start, strip_norm)

            _, accum, norm = tf.while_loop(lambda r, *_: r < tf.size(y_starts), add_row, (0, accum, norm),
                                           parallel_iterations=1)
            rows = z_ends[i] - z_starts[i]
            weight = tf.slice(norm, inner[0], tf.concat([[rows], inner[1]], 0))
            final = tf.slice(accum, tf.concat([inner[0], [0]], 0), tf.concat([[rows], inner[1], [-1]], 0))
            labels = labels.write(i, tf.cast(tf.argmax(final, axis=-1, output_type=tf.int32), self.label_dtype))
            if with_probabilities:
                probabilities = probabilities.write(i, final / weight[..., None])
            accum = tf.concat([accum[rows:], tf.zeros_like(accum[:rows])], 0)
            norm = tf.concat([norm[rows:], tf.zeros_like(norm[:rows])], 0)
            return i + 1, accum, norm, labels, probabilities

        count = tf.size(z_starts)
        state = (0, tf.zeros(tf.concat([[patch[0]], padded[1:], [k_classes]], 0)),
                 tf.zeros(tf.concat([[patch[0]], padded[1:]], 0)),
                 tf.TensorArray(self.label_dtype, size=count, infer_shape=False, element_shape=[None, None, None]),
                 tf.TensorArray(tf.float32, size=count if with_probabilities else 0, infer_shape=False,
                                element_shape=[None, None, None, k_classes]))
        invariants = (tf.TensorShape([]), tf.TensorShape([None, None, None, k_classes]),
                      tf.TensorShape([None, None, None]), tf.TensorShape(None), tf.TensorShape(None))
        _, _, _, labels, probabilities = tf.while_loop(lambda i, *_: i < count, plane, state,
                                                       shape_invariants=invariants, parallel_iterations=1)
        labels = tf.slice(labels.concat(), tf.stack([before[0], 0, 0]), tf.concat([size[:1], [-1, -1]], 0))
        if not with_probabilities:
            return labels, None
        return labels, tf.slice(probabilities.concat(), tf.stack([before[0], 0, 0, 0]),
                                tf.concat([size[:1], [-1, -1, -1]], 0))

    # -- whole volumes ---------------------------------------------------------------------
    def _checks(self, volume, spacing, direction):
        shape = tf.shape(volume)
        finite = tf.reduce_all(tf.math.is_finite(volume))
        return [
            tf.debugging.Assert(tf.size(spacing) == 3, [
                "input spacing: expected 3 values (mm, in z, y, x order); got", tf.size(spacing), "values"]),
            tf.debugging.Assert(tf.size(direction) == 9, [
                "input direction: expected 9 values (the scan direction cosines, as SimpleITK GetDirection "
                "returns them); got", tf.size(direction), "values"]),
            tf.debugging.Assert(tf.reduce_all(tf.math.is_finite(spacing)) & tf.reduce_all(spacing > 0), [
                "input spacing: expected 3 positive finite values (mm, z, y, x); got", spacing]),
            tf.debugging.Assert(finite, [  # integrity.NONFINITE's words, the count between them
                "input volume: " + NONFINITE.split("{count}")[0].rstrip(),
                tf.cond(finite, lambda: tf.constant(0, tf.int64),  # counted only when some are not finite
                        lambda: tf.reduce_sum(tf.cast(tf.logical_not(tf.math.is_finite(volume)), tf.int64))),
                NONFINITE.split("{count}")[1].lstrip()]),
            tf.debugging.Assert(tf.reduce_all(shape[:3] >= MIN_AXIS), [
                f"input volume: expected at least {MIN_AXIS} voxels along each spatial axis; got shape", shape]),
        ]

    def _orientation(self, direction):
        code = self.preprocess.orientation
        if code is None:
            return tf.range(3), tf.zeros([3], tf.bool)
        matrix = tf.reshape(direction, (3, 3))
        perm, flips, valid = volume_ops.orientation_permutation(direction, code)
        matrix = tf.cast(matrix, tf.float64)
        gram = tf.matmul(matrix, matrix, transpose_a=True)  # the identity for orthonormal columns
        ok = valid & tf.reduce_all(tf.abs(gram - tf.eye(3, dtype=tf.float64)) < DIRECTION_TOLERANCE)
        check = tf.debugging.Assert(ok, [
            "input direction: expected the 9 direction cosines of a scan (orthonormal columns within "
            f"{DIRECTION_TOLERANCE:g}, each along a different anatomical axis); got", direction])
        with tf.control_dependencies([check]):
            return tf.identity(perm), tf.identity(flips)

    def _preprocess(self, volume, spacing, direction):
        """The run's preprocessing in the graph: ``(image, grid, size, perm, flips, spacing_o,
        start)``: the network's input (reoriented, resampled, normalised, centre-cropped),
        the resampled grid, the reoriented size, the reorientation, the reoriented spacing
        and the crop's start (``None`` without a crop)."""
        checks = self._checks(volume, spacing, direction)
        # Fixed lengths, so that no op fails on a bad request before the checks name it.
        spacing, direction = _fixed_length(spacing, 3, 1.0), _fixed_length(direction, 9, 0.0)
        with tf.control_dependencies(checks):
            perm, flips = self._orientation(direction)
            volume = tf.identity(volume)
        oriented = tf.ensure_shape(volume_ops.reorient(volume, perm, flips), [None, None, None, self.channels])
        spacing_o = tf.gather(spacing, perm)
        size = tf.shape(oriented)[:3]
        target = self.preprocess.target_spacing_zyx
        extent = tf.cast(size, tf.float64) if target is None else volume_ops.resampled_extent(size, spacing_o, target)
        grid = volume_ops.grid_of(extent)
        voxels = tf.reduce_prod(extent)  # float64: no overflow, however large the request's spacing
        limits = [
            tf.debugging.Assert(voxels <= self.max_voxels, [
                f"input volume: at the spacing of the run it would hold more than the limit of this model, "
                f"{self.max_voxels} voxels (the export's max_voxels); got a grid of", extent, "from shape",
                tf.shape(volume), "and spacing", spacing]),
            tf.debugging.Assert(tf.reduce_all(grid >= MIN_AXIS), [
                f"input volume: at the spacing of the run it would be under {MIN_AXIS} voxels along an axis; "
                "got a grid of", extent, "from shape", tf.shape(volume), "and spacing", spacing]),
        ]
        with tf.control_dependencies(limits):
            oriented = tf.identity(oriented)
        if target is not None:
            oriented = tf.ensure_shape(volume_ops.resample(oriented, spacing_o, target, grid),
                                       [None, None, None, self.channels])
        image = volume_ops.normalize(oriented, self.preprocess.normalization, self.preprocess.clip_percentiles,
                                     self.preprocess.ct_statistics)
        start = None
        if self.preprocess.crop_size_zyx is not None:
            image, start = volume_ops.centre_crop_or_pad(image, self.preprocess.crop_size_zyx)
        return image, grid, size, perm, flips, spacing_o, start

    def _segment(self, volume, spacing, direction, with_probabilities: bool):
        image, grid, size, perm, flips, spacing_o, start = self._preprocess(volume, spacing, direction)
        labels, probabilities = self._blend(image, with_probabilities)
        if start is not None:  # outside the crop is background
            labels = volume_ops.place_window(labels, -start, grid)
            if with_probabilities:
                background = tf.one_hot(0, self.num_classes)
                probabilities = volume_ops.place_window(probabilities - background, -start, grid) + background
        target = self.preprocess.target_spacing_zyx
        if target is not None:
            labels = volume_ops.resample(labels, target, spacing_o, size, nearest=True)
            if with_probabilities:
                probabilities = volume_ops.resample(probabilities, target, spacing_o, size)
        out = {"labels": tf.cast(volume_ops.unorient(labels, perm, flips), tf.int32)}
        if with_probabilities:
            out["probabilities"] = volume_ops.unorient(probabilities, perm, flips)
        return out
