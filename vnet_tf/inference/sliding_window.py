"""The Gaussian-blended sliding window over a preprocessed volume, streamed a slab at a time,
with test-time mirroring: :class:`SlidingWindow`, the part of :class:`~vnet_tf.inference.segmenter.Segmenter`
that runs the network."""

from __future__ import annotations

import itertools
from typing import Sequence

import numpy as np
import tensorflow as tf

from vnet_tf.inference import volume_ops
from vnet_tf.inference.config import InferenceConfig


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


def _add(total, start, value):
    """``total`` with ``value`` added at ``start`` (over the first 3 axes; the others whole)."""
    begin = tf.concat([start, tf.zeros([len(total.shape) - 3], tf.int32)], 0)
    return tf.raw_ops.TensorStridedSliceUpdate(input=total, begin=begin, end=begin + tf.shape(value),
                                               strides=tf.ones_like(begin),
                                               value=tf.slice(total, begin, tf.shape(value)) + value)


class SlidingWindow:
    """The windows of one model (or an ensemble: any callable ``model(patches, training=False)``)
    with the sliding-window settings ``inference``: :meth:`probabilities` and :meth:`blend` on a
    preprocessed ``(D, H, W, C)`` volume, :meth:`predict_patch` on patches. Plain Python (no
    tf.Module): the segmenter that holds it tracks the model's variables once."""

    def __init__(self, model, inference: InferenceConfig, channels: int, num_classes: int):
        self.model, self.inference = model, inference
        self.channels, self.num_classes = int(channels), int(num_classes)
        # Labels are uint8 inside the graph (a quarter of int32's memory for a large scan) and
        # int32 in the segmenter's outputs.
        self.label_dtype = tf.uint8 if self.num_classes <= 256 else tf.int32
        self.patch = tuple(int(p) for p in inference.patch_size_zyx)
        weights = (gaussian_weights(self.patch, inference.sigma_scale) if inference.blend == "gaussian"
                   else np.ones(self.patch, np.float32))
        self.window_weights = tf.constant(weights)

    def predict_patch(self, patches):
        """``{"probabilities"}`` of preprocessed patches ``(N, pz, py, px, C)``: the model alone."""
        return {"probabilities": tf.cast(self.model(patches, training=False), tf.float32)}

    def mirrored(self, patches):
        """The mean of the model's probabilities over every subset of the mirror axes (each
        flipped in, and back out), one subset per loop step: the model is traced once and
        holds one window batch at a time."""
        axes = self.inference.mirror_axes
        subsets = [()] + [s for r in range(1, len(axes) + 1) for s in itertools.combinations(axes, r)]
        if len(subsets) == 1:
            return tf.cast(self.model(patches, training=False), tf.float32)
        masks = tf.constant([[a in subset for a in range(3)] for subset in subsets])

        def body(i, total):
            flip = tf.boolean_mask(tf.constant([1, 2, 3]), masks[i])
            y = tf.cast(self.model(tf.reverse(patches, flip), training=False), tf.float32)
            return i + 1, total + tf.reverse(y, flip)

        shape = tf.concat([tf.shape(patches)[:4], [self.num_classes]], 0)
        _, total = tf.while_loop(lambda i, t: i < len(subsets), body, (0, tf.zeros(shape)))
        return total / float(len(subsets))

    def probabilities(self, volume):
        """``(D, H, W, C)`` preprocessed volume -> ``(D, H, W, K)`` probabilities."""
        return self.blend(volume, with_probabilities=True)[1]

    def row(self, volume, z, y, x_starts):
        """The windows at ``(z, y, x)`` for every ``x`` of ``x_starts``, weighted by the
        importance map and summed: a strip ``(pz, py, W, K)`` and its summed weights
        ``(pz, py, W)``. Each batch's windows are gathered in one op from the row's slice of
        the input ``(pz, py, W, C)``. Along x the same streaming as :meth:`blend`'s along z: a
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
            windows = self.mirrored(patches) * self.window_weights[..., None]

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

    def blend(self, volume, with_probabilities: bool):
        """``(labels, probabilities)`` of a ``(D, H, W, C)`` preprocessed volume:
        :attr:`label_dtype` ``(D, H, W)`` and float32 ``(D, H, W, K)`` (``None`` unless asked).

        The volume is zero-padded (centred) to at least the patch. Windows go in planes (one
        z start each), a row (one y start) at a time (:meth:`row`); each row's weighted sums
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
                strip, strip_norm = self.row(volume, z_starts[i], y_starts[r], x_starts)
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
