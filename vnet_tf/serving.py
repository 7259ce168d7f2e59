"""A SavedModel that TF Serving loads as it is: the whole inference pipeline in one graph.

Signatures (plain TensorFlow ops: no ``py_function``, no custom ops, no XLA requirement):

- ``serving_default``: inputs ``volume`` (float32; ``[D, H, W]``, ``[D, H, W, C]`` or
  ``[B, D, H, W, C]``, any size) and ``spacing`` (float32 ``[3]`` in mm, z-y-x order, or
  ``[0]`` (empty) for the training spacing). Outputs ``labels`` (int32, the input's grid,
  without the channel axis, batched like the input) and ``probabilities`` (float32, the
  same grid + classes). Inside: the training intensity normalisation, resampling to the
  training spacing and back (when the run resampled), centred zero padding to the patch,
  the Gaussian-blended sliding window with the run's overlap and mirroring, argmax.
  Connected-component post-processing is not in the graph (TensorFlow has no such op);
  apply it client-side if wanted.
- ``predict_patch``: ``patches`` float32 ``[N, pz, py, px, C]`` (preprocessed) ->
  ``probabilities`` ``[N, pz, py, px, K]``.

The array order is SimpleITK's ``(z, y, x)``; the model was trained on scans reoriented to
the run's orientation (``LPS`` by default), so a client sends the array of the reoriented
scan (``vnet_tf.client`` does).
"""

from __future__ import annotations

import itertools
import numpy as np
import tensorflow as tf

from vnet_tf import warp
from vnet_tf.inference import InferenceConfig, gaussian_weights
from vnet_tf.preprocess import PreprocessConfig


def _normalize(volume, mode: str, clip_percentiles):
    """Per-channel normalisation of ``(D, H, W, C)`` like :func:`preprocess.normalize_intensities`."""
    channels = []
    for c in range(volume.shape[-1]):
        x = tf.cast(volume[..., c], tf.float64)
        mask = tf.not_equal(x, 0.0) if mode == "zscore_foreground" else tf.ones_like(x, tf.bool)
        mask = tf.cond(tf.reduce_any(mask), lambda m=mask: m, lambda: tf.ones_like(x, tf.bool))
        values = tf.boolean_mask(x, mask)
        if clip_percentiles is not None:
            ordered = tf.sort(values)
            n = tf.cast(tf.size(ordered), tf.float64)

            def percentile(q, ordered=ordered, n=n):
                pos = q / 100.0 * (n - 1.0)
                lo = tf.cast(tf.floor(pos), tf.int32)
                hi = tf.minimum(lo + 1, tf.size(ordered) - 1)
                frac = pos - tf.floor(pos)
                return tf.gather(ordered, lo) * (1.0 - frac) + tf.gather(ordered, hi) * frac

            x = tf.clip_by_value(x, percentile(float(clip_percentiles[0])), percentile(float(clip_percentiles[1])))
            values = tf.boolean_mask(x, mask)
        if mode in ("zscore", "zscore_foreground"):
            mean = tf.reduce_mean(values)
            std = tf.maximum(tf.math.reduce_std(values), 1e-8)
            out = (x - mean) / std
            if mode == "zscore_foreground":
                out = tf.where(mask, out, tf.zeros_like(out))
        elif mode == "rescale":
            low, high = tf.reduce_min(x), tf.reduce_max(x)
            out = (x - low) / tf.maximum(high - low, 1e-8)
        else:
            out = x
        channels.append(tf.cast(out, tf.float32))
    return tf.stack(channels, axis=-1)


def _resample(volume, scale, size, nearest=False):
    """Samples ``volume (D, H, W, C)`` at ``index * scale`` for an output of ``size``."""
    grid = warp.identity_grid(tf.unstack(size)) * tf.cast(scale, tf.float32)
    sampler = warp.sample_nearest if nearest else warp.sample_linear
    return sampler(volume[None], grid[None], "nearest")[0]


class _Untracked:
    """A plain holder: tf.Module does not look inside it."""

    def __init__(self, model):
        self.model = model


class VNetServing(tf.Module):
    """The exported module: the model's variables (one copy) and the two signatures."""

    def __init__(self, model, preprocess: PreprocessConfig, inference: InferenceConfig, channels: int,
                 num_classes: int):
        super().__init__(name="vnet_serving")
        if preprocess.crop_size_zyx is not None:
            raise ValueError("export does not support runs trained with crop_size_zyx (a fixed centre crop); "
                             "train without it or crop client-side")
        # Track the TensorFlow variables themselves, and hide the Keras model from tracking:
        # with the Keras model tracked, the session-based loader of TF Serving /
        # saved_model_cli failed with "Could not find variable right0_up/kernel" (although
        # tf.saved_model.load worked), and tracking both stored every weight twice.
        self._holder = _Untracked(model)
        self.model_variables = [getattr(v, "value", v) for v in model.variables]
        self.channels, self.num_classes = int(channels), int(num_classes)
        self.patch = tuple(int(p) for p in inference.patch_size_zyx)
        self.overlap, self.window_batch = float(inference.overlap), int(inference.batch_size)
        self.mirror_axes = tuple(int(a) for a in inference.mirror_axes)
        self.normalization, self.clip = preprocess.normalization, preprocess.clip_percentiles
        self.target_spacing = preprocess.target_spacing_zyx
        weights = (gaussian_weights(self.patch, inference.sigma_scale) if inference.blend == "gaussian"
                   else np.ones(self.patch, np.float32))
        self.window_weights = tf.constant(weights)
        c, p = self.channels, self.patch
        self.predict_patch = tf.function(self._predict_patch, input_signature=[
            tf.TensorSpec([None, p[0], p[1], p[2], c], tf.float32, name="patches")])
        self.serve = tf.function(self._serve, input_signature=[
            tf.TensorSpec(None, tf.float32, name="volume"), tf.TensorSpec([None], tf.float32, name="spacing")])

    def _predict_patch(self, patches):
        return {"probabilities": tf.cast(self._holder.model(patches, training=False), tf.float32)}

    def _probabilities(self, patches):
        subsets = [()] + [s for r in range(1, len(self.mirror_axes) + 1)
                          for s in itertools.combinations(self.mirror_axes, r)]
        total = None
        for axes in subsets:
            flip = [a + 1 for a in axes]
            x = tf.reverse(patches, flip) if flip else patches
            y = tf.cast(self._holder.model(x, training=False), tf.float32)
            y = tf.reverse(y, flip) if flip else y
            total = y if total is None else total + y
        return total / float(len(subsets))

    def _window_starts(self, size, patch):
        size_f = tf.cast(size, tf.float64)
        span = tf.maximum(size_f - patch, 0.0)
        step = float(max(1, int(patch * (1.0 - self.overlap))))
        count = tf.cast(tf.math.ceil(span / step), tf.int32) + 1
        positions = tf.linspace(tf.constant(0.0, tf.float64), span, count)
        return tf.cast(tf.round(positions), tf.int32)

    def sliding_window(self, volume):
        """``(D, H, W, C)`` normalised volume -> ``(D, H, W, K)`` probabilities."""
        patch = tf.constant(self.patch, tf.int32)
        size = tf.shape(volume)[:3]
        padded = tf.maximum(size, patch)
        before = (padded - size) // 2
        after = padded - size - before
        volume = tf.pad(volume, tf.concat([tf.stack([before, after], axis=1), [[0, 0]]], axis=0))
        axes = [self._window_starts(padded[i], self.patch[i]) for i in range(3)]
        grid = tf.meshgrid(*axes, indexing="ij")
        starts = tf.reshape(tf.stack(grid, axis=-1), (-1, 3))
        n = tf.shape(starts)[0]
        bs = self.window_batch
        chunks = (n + bs - 1) // bs
        starts = tf.concat([starts, tf.repeat(starts[-1:], chunks * bs - n, axis=0)], axis=0)
        pz, py, px = self.patch

        def body(k, accum, norm):
            accum_k, norm_k = accum, norm
            windows = [starts[k * bs + j] for j in range(bs)]
            patches = tf.stack([tf.slice(volume, tf.concat([s, [0]], 0), [pz, py, px, self.channels])
                                for s in windows])
            probs = self._probabilities(patches)
            for j, s in enumerate(windows):
                valid = tf.cast(k * bs + j < n, tf.float32)
                paddings = tf.stack([s, padded - patch - s], axis=1)
                w = self.window_weights * valid
                accum_k += tf.pad(probs[j] * w[..., None], tf.concat([paddings, [[0, 0]]], 0))
                norm_k += tf.pad(w, paddings)
            return k + 1, accum_k, norm_k

        accum = tf.zeros(tf.concat([padded, [self.num_classes]], 0), tf.float32)
        norm = tf.zeros(padded, tf.float32)
        _, accum, norm = tf.while_loop(lambda k, a, b: k < chunks, body, (0, accum, norm))
        probabilities = accum / norm[..., None]
        return tf.slice(probabilities, tf.concat([before, [0]], 0), tf.concat([size, [self.num_classes]], 0))

    def _one_volume(self, volume, spacing):
        normalised = _normalize(volume, self.normalization, self.clip)
        if self.target_spacing is None:
            probabilities = self.sliding_window(normalised)
            return tf.cast(tf.argmax(probabilities, axis=-1), tf.int32), probabilities
        size = tf.shape(volume)[:3]
        target = tf.constant(self.target_spacing, tf.float32)
        spacing = tf.cond(tf.size(spacing) == 3, lambda: spacing, lambda: target)
        new_size = tf.maximum(tf.cast(tf.round(tf.cast(size, tf.float32) * spacing / target), tf.int32), 1)
        resampled = _resample(normalised, target / spacing, new_size)
        probabilities = self.sliding_window(resampled)
        label = tf.cast(tf.argmax(probabilities, axis=-1), tf.int32)
        back = spacing / target
        label = _resample(label[..., None], back, size, nearest=True)[..., 0]
        return label, _resample(probabilities, back, size)

    def _serve(self, volume, spacing):
        rank = tf.rank(volume)
        checks = [
            tf.debugging.Assert(tf.logical_and(rank >= 3, rank <= 5), [
                "input volume must be [D,H,W], [D,H,W,C] or [B,D,H,W,C]; got shape", tf.shape(volume)]),
            tf.debugging.Assert(tf.logical_or(tf.size(spacing) == 0, tf.size(spacing) == 3), [
                "input spacing must hold 3 values (z, y, x in mm) or none; got", spacing]),
        ]
        with tf.control_dependencies(checks):
            index = tf.clip_by_value(rank - 3, 0, 2)
        batched = tf.switch_case(index, [lambda: volume[None, ..., None], lambda: volume[None], lambda: volume])
        with tf.control_dependencies([tf.debugging.Assert(
                tf.logical_and(tf.rank(batched) == 5, tf.shape(batched)[-1] == self.channels), [
                    f"input volume must have {self.channels} channel(s) (last axis); got shape", tf.shape(volume)])]):
            batched = tf.identity(batched)
        batched = tf.ensure_shape(batched, [None, None, None, None, self.channels])
        labels, probabilities = tf.map_fn(
            lambda v: self._one_volume(v, spacing), batched,
            fn_output_signature=(tf.TensorSpec([None, None, None], tf.int32),
                                 tf.TensorSpec([None, None, None, self.num_classes], tf.float32)))
        labels = tf.cond(rank == 5, lambda: labels, lambda: labels[0])
        probabilities = tf.cond(rank == 5, lambda: probabilities, lambda: probabilities[0])
        return {"labels": labels, "probabilities": probabilities}
