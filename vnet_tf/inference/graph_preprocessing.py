"""The run's preprocessing as graph ops, for a scan as read (any orientation, any spacing): the
request's checks, reorientation, resampling, normalisation and centre crop
(:class:`GraphPreprocessing`), as :mod:`vnet_tf.data.preprocess` does on the host for training."""

from __future__ import annotations

import tensorflow as tf

from vnet_tf.core.integrity import NONFINITE
from vnet_tf.data.preprocess import PreprocessConfig
from vnet_tf.inference import volume_ops
from vnet_tf.inference.config import DEFAULT_MAX_VOXELS

# The smallest axis a request may have.
MIN_AXIS = 4
# How far a request's direction may be from orthonormal (each entry of DᵀD - I): float32
# cosines written by scanners and converters are within 1e-6; a sheared grid is refused.
DIRECTION_TOLERANCE = 1e-3


def _fixed_length(values, n: int, fill: float):
    """``values`` cut or padded with ``fill`` to ``n`` entries."""
    return tf.pad(values, [[0, tf.maximum(n - tf.size(values), 0)]], constant_values=fill)[:n]


class GraphPreprocessing:
    """The preprocessing ``config`` of a run whose network takes ``channels`` channels, refusing
    a request over ``max_voxels`` at the run's spacing; :meth:`preprocess_volume` is the whole."""

    def __init__(self, config: PreprocessConfig, channels: int, max_voxels: int = DEFAULT_MAX_VOXELS):
        self.config, self.channels, self.max_voxels = config.validate(), int(channels), int(max_voxels)

    def checks(self, volume, spacing, direction):
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

    def orientation(self, direction):
        code = self.config.orientation
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

    def preprocess_volume(self, volume, spacing, direction):
        """The run's preprocessing in the graph: ``(image, grid, size, perm, flips, spacing_o,
        start)``: the network's input (reoriented, resampled, normalised, centre-cropped),
        the resampled grid, the reoriented size, the reorientation, the reoriented spacing
        and the crop's start (``None`` without a crop)."""
        checks = self.checks(volume, spacing, direction)
        # Fixed lengths, so that no op fails on a bad request before the checks name it.
        spacing, direction = _fixed_length(spacing, 3, 1.0), _fixed_length(direction, 9, 0.0)
        with tf.control_dependencies(checks):
            perm, flips = self.orientation(direction)
            volume = tf.identity(volume)
        oriented = tf.ensure_shape(volume_ops.reorient(volume, perm, flips), [None, None, None, self.channels])
        spacing_o = tf.gather(spacing, perm)
        size = tf.shape(oriented)[:3]
        target = self.config.target_spacing_zyx
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
        image = volume_ops.normalize(oriented, self.config.normalization, self.config.clip_percentiles,
                                     self.config.ct_statistics)
        start = None
        if self.config.crop_size_zyx is not None:
            image, start = volume_ops.centre_crop_or_pad(image, self.config.crop_size_zyx)
        return image, grid, size, perm, flips, spacing_o, start
