"""TensorFlow graph ops on whole volumes: reorientation, resampling and intensity
normalisation, as :class:`vnet_tf.inference.segmenter.Segmenter` applies them before and after the
sliding window (in ``evaluate.py``, in training-time validation and in the exported
SavedModel alike).

Arrays are in SimpleITK's ``(z, y, x[, c])`` order; ``spacing`` is in mm in the same order;
``direction`` is SimpleITK's ``GetDirection()`` (9 values, row-major, indexed ``x, y, z``).
The training cache preprocesses with SimpleITK (:mod:`vnet_tf.data.preprocess`); these ops
follow the same rules (docs/explanation/inference.md: where they differ and by how much).
"""

from __future__ import annotations

from typing import Optional, Sequence

import tensorflow as tf

from vnet_tf.data.preprocess import AXIS_OF_LETTER


def orientation_permutation(direction, code: str):
    """``(perm, flips, valid)`` that bring an array with ``direction`` to the orientation
    ``code`` (e.g. ``"LPS"``) by a transpose then a reverse, as ``SimpleITK.DICOMOrient``
    does: ``perm`` int32 ``[3]`` over the array axes ``(z, y, x)``, ``flips`` bool ``[3]`` over
    the transposed axes, ``valid`` false when two index axes point along the same anatomical
    axis (then no permutation exists)."""
    matrix = tf.reshape(tf.cast(direction, tf.float64), (3, 3))  # [physical r, index axis c]
    physical = tf.argmax(tf.abs(matrix), axis=0, output_type=tf.int32)  # per index axis
    positive = tf.gather_nd(matrix, tf.stack([physical, tf.range(3)], axis=1)) > 0.0
    wanted = tf.constant([AXIS_OF_LETTER[c] for c in code.upper()], tf.int32)
    wanted_positive = tf.constant([c in "LPS" for c in code.upper()])
    match = tf.equal(wanted[:, None], physical[None, :])  # [target index axis k, source c]
    valid = tf.reduce_all(tf.reduce_sum(tf.cast(match, tf.int32), axis=1) == 1)
    source = tf.argmax(tf.cast(match, tf.int32), axis=1, output_type=tf.int32)
    flip_index = tf.not_equal(tf.gather(positive, source), wanted_positive)
    # Array axis b is index axis 2 - b.
    perm = 2 - tf.reverse(source, [0])
    flips = tf.reverse(flip_index, [0])
    return perm, flips, valid


def _axes(flags):
    return tf.boolean_mask(tf.range(tf.size(flags)), flags)


def reorient(volume, perm, flips):
    """``(D, H, W, ...)`` volume transposed by ``perm`` then reversed along ``flips``."""
    rank = tf.rank(volume)
    full = tf.concat([perm, tf.range(3, rank)], axis=0)
    return tf.reverse(tf.transpose(volume, full), _axes(flips))


def unorient(volume, perm, flips):
    """The inverse of :func:`reorient`."""
    rank = tf.rank(volume)
    inverse = tf.math.invert_permutation(perm)
    return tf.transpose(tf.reverse(volume, _axes(flips)), tf.concat([inverse, tf.range(3, rank)], axis=0))


def resampled_extent(size, spacing, target: Sequence[float]):
    """``max(1, round(size * spacing / target))`` per axis, float64 (round half to even, as
    Python's ``round`` in :func:`vnet_tf.data.preprocess.preprocess_case`): the resampled grid
    before any integer cast, so that a huge spacing cannot overflow it."""
    ratio = tf.cast(size, tf.float64) * tf.cast(spacing, tf.float64) / tf.constant(target, tf.float64)
    return tf.maximum(tf.round(ratio), 1.0)


def grid_of(extent):
    """``extent`` (float64 voxel counts) as int32, clipped to int32's range: the caller refuses
    an extent over its voxel limit before any op allocates it."""
    return tf.cast(tf.minimum(extent, float(2 ** 31 - 1)), tf.int32)


def resample(volume, from_spacing, to_spacing, new_size):
    """Resamples ``volume (D, H, W, ...)`` from ``from_spacing`` to ``to_spacing`` (``[3]``
    each, mm) onto ``new_size`` with the origin kept, as ``SimpleITK.Resample`` does: output
    voxel ``i`` samples input index ``i * to / from`` per axis, trilinearly (separably, one axis
    at a time); positions past the last voxel's outer half are outside the
    scan and get 0 (past ``size - 0.5``; at exactly ``size - 0.5`` SimpleITK's rounding decides, here
    inside), and those within half a voxel of the last voxel take its value. An axis whose
    spacing and size do not change is passed through (the same values, no pass over them)."""
    for axis in range(3):
        same = tf.equal(tf.cast(to_spacing[axis], tf.float64), tf.cast(from_spacing[axis], tf.float64)) & tf.equal(
            tf.shape(volume)[axis], new_size[axis])
        volume = tf.cond(same, lambda v=volume: v,
                         lambda v=volume, a=axis: _resample_axis(v, a, from_spacing[a], to_spacing[a], new_size[a]))
    return volume


def _resample_axis(volume, axis: int, from_spacing, to_spacing, new_size):
    length = tf.shape(volume)[axis]
    position = (tf.cast(tf.range(new_size), tf.float64) * tf.cast(to_spacing, tf.float64)
                / tf.cast(from_spacing, tf.float64))
    inside = tf.cast(position <= tf.cast(length, tf.float64) - 0.5, tf.float64)
    position = tf.minimum(position, tf.cast(length - 1, tf.float64))
    shape = tf.tensor_scatter_nd_update(tf.ones([tf.rank(volume)], tf.int32), [[axis]], [-1])

    def along_axis(weights):
        return tf.reshape(tf.cast(weights, volume.dtype), shape)

    low = tf.cast(tf.floor(position), tf.int32)
    high = tf.minimum(low + 1, length - 1)
    frac = position - tf.floor(position)
    # (low * (1 - frac) + high * frac) * inside, with inside (0 or 1) folded into the weights.
    return (tf.gather(volume, low, axis=axis) * along_axis((1.0 - frac) * inside)
            + tf.gather(volume, high, axis=axis) * along_axis(frac * inside))


def _percentile(ordered, q: float):
    n = tf.cast(tf.size(ordered), tf.float64)
    position = q / 100.0 * (n - 1.0)
    low = tf.cast(tf.floor(position), tf.int32)
    high = tf.minimum(low + 1, tf.size(ordered) - 1)
    frac = position - tf.floor(position)
    low_value, high_value = tf.cast(tf.gather(ordered, low), tf.float64), tf.cast(tf.gather(ordered, high), tf.float64)
    return low_value * (1.0 - frac) + high_value * frac


def _blockwise_sum(fn, *tensors, block: int = 8):
    """``sum(fn(*tensors))``, each tensor cast to float64 ``block`` z-slices at a time: the
    float64 sum over a whole scan without a float64 copy of it."""
    def body(z, total):
        return z + block, total + tf.reduce_sum(fn(*[tf.cast(t[z:z + block], tf.float64) for t in tensors]))
    return tf.while_loop(lambda z, t: z < tf.shape(tensors[0])[0], body, (0, tf.constant(0.0, tf.float64)))[1]


def normalize(volume, mode: str, clip_percentiles: Optional[Sequence[float]] = None,
              ct_statistics: Optional[Sequence[float]] = None):
    """Per-channel intensity normalisation of ``(D, H, W, C)`` as
    :func:`vnet_tf.data.preprocess.normalize_intensities`: optional percentile clipping, then
    ``zscore``, ``zscore_foreground`` (voxels != 0; the others stay 0), ``rescale`` to [0, 1]
    or ``none``; ``ct``: clip to ``[low, high]`` then ``(x - mean) / std`` with the dataset's
    ``ct_statistics``. Statistics are summed in float64 a block of slices at a time; the volume
    stays float32 (no float64 copy of a large scan is made)."""
    channels = []
    for c in range(volume.shape[-1]):
        # One channel: a reshape, not a copy of the scan.
        x = tf.cast(tf.reshape(volume, tf.shape(volume)[:3]) if volume.shape[-1] == 1 else volume[..., c], tf.float32)
        mask = None
        if mode == "zscore_foreground":
            mask = tf.not_equal(x, 0.0)
            mask = tf.cond(tf.reduce_any(mask), lambda m=mask: m, lambda x=x: tf.ones_like(x, tf.bool))
        if clip_percentiles is not None:
            ordered = tf.sort(tf.reshape(x if mask is None else tf.boolean_mask(x, mask), [-1]))
            low = tf.cast(_percentile(ordered, float(clip_percentiles[0])), tf.float32)
            high = tf.cast(_percentile(ordered, float(clip_percentiles[1])), tf.float32)
            x = tf.clip_by_value(x, low, high)
        if mode in ("zscore", "zscore_foreground"):
            if mask is None:
                count = tf.cast(tf.size(x), tf.float64)
                mean = _blockwise_sum(lambda v: v, x) / count
                var = _blockwise_sum(lambda v: tf.square(v - mean), x) / count
            else:
                count = _blockwise_sum(lambda m: m, mask)
                mean = _blockwise_sum(lambda v, m: v * m, x, mask) / count
                var = _blockwise_sum(lambda v, m: tf.square(v - mean) * m, x, mask) / count
            out = (x - tf.cast(mean, tf.float32)) / tf.cast(tf.maximum(tf.sqrt(var), 1e-8), tf.float32)
            if mask is not None:
                out = tf.where(mask, out, tf.zeros_like(out))
        elif mode == "ct":
            low, high, mean, std = (float(v) for v in ct_statistics)
            out = (tf.clip_by_value(x, low, high) - mean) / std
        elif mode == "rescale":
            low, high = tf.reduce_min(x), tf.reduce_max(x)
            out = (x - low) / tf.maximum(high - low, 1e-8)
        else:
            out = x
        channels.append(out)
    return channels[0][..., None] if len(channels) == 1 else tf.stack(channels, axis=-1)


def centre_crop_or_pad(volume, size: Sequence[int]):
    """The centred window of ``size`` of ``(D, H, W, C)``, zero outside: ``(window, start)``
    with ``start = (shape - size) // 2`` per axis (negative: padding), as
    :func:`vnet_tf.data.preprocess.preprocess_case`."""
    shape = tf.shape(volume)[:3]
    size_t = tf.constant(size, tf.int32)
    start = tf.math.floordiv(shape - size_t, 2)
    return place_window(volume, start, size_t), start


def place_window(volume, start, size):
    """``volume[start:start + size]`` over the first 3 axes, zero where it reaches outside."""
    shape = tf.shape(volume)[:3]
    low = tf.maximum(start, 0)
    high = tf.minimum(start + size, shape)
    inner = tf.slice(volume, tf.concat([low, tf.zeros([tf.rank(volume) - 3], tf.int32)], 0),
                     tf.concat([tf.maximum(high - low, 0), tf.shape(volume)[3:]], 0))
    before = low - start
    after = size - before - tf.maximum(high - low, 0)
    pads = tf.concat([tf.stack([before, after], axis=1), tf.zeros([tf.rank(volume) - 3, 2], tf.int32)], 0)
    return tf.pad(inner, pads)
