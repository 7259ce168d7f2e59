"""A SavedModel that TF Serving loads as it is: :class:`vnet_tf.inference.segmenter.Segmenter`'s graph
behind three signatures (plain TensorFlow ops: no ``py_function``, no custom ops, no XLA).

- ``serving_default``: inputs ``volume`` (float32; ``[D, H, W]``, ``[D, H, W, C]`` or
  ``[B, D, H, W, C]``, the scan's array as read, in SimpleITK's ``(z, y, x)`` order),
  ``spacing`` (float32 ``[3]``, mm, z-y-x) and ``direction`` (float32 ``[9]``, SimpleITK's
  ``GetDirection()``). Outputs ``labels`` (int32, the input's grid without the channel axis,
  batched like the input) and ``postprocess`` (string: the run's connected-component
  post-processing, ``none``, ``largest`` or ``min_size:N``, which the client applies: there is
  no TensorFlow op for it).
- ``predict_probabilities``: the same inputs; outputs ``labels``, ``probabilities`` (float32,
  the same grid + classes) and ``postprocess``.
- ``predict_patch``: ``patches`` float32 ``[N, pz, py, px, C]`` (preprocessed) ->
  ``probabilities`` ``[N, pz, py, px, K]``.

Bad requests fail with ``INVALID_ARGUMENT`` and a message naming the input (docs/reference/serving.md:
the list).
"""

from __future__ import annotations

import tensorflow as tf

from vnet_tf.inference.segmenter import Segmenter, Untracked

SIGNATURES = ("serving_default", "predict_probabilities", "predict_patch")
RUN_FILE = "vnet_tf_run.json"  # in assets.extra/: the run's settings, recorded at export


def postprocess_text(mode: str, min_size: int) -> str:
    return f"min_size:{min_size}" if mode == "min_size" else mode


class VNetServing(tf.Module):
    """The exported module: the segmenter (its model's variables, one copy) and the signatures."""

    def __init__(self, segmenter: Segmenter):
        super().__init__(name="vnet_serving")
        # The segmenter's own functions are not exported (saving would trace each of them):
        # only its variables, and the three signatures below.
        self._holder = Untracked(segmenter)
        self.model_variables = list(segmenter.model_variables)
        self.postprocess = postprocess_text(segmenter.inference.postprocess, segmenter.inference.min_size)
        specs = [tf.TensorSpec(None, tf.float32, name="volume"), tf.TensorSpec([None], tf.float32, name="spacing"),
                 tf.TensorSpec([None], tf.float32, name="direction")]
        patch = [None, *segmenter.patch, segmenter.channels]
        # Held untracked: saving traces the signatures once; as attributes of the module it
        # would trace each function again.
        self._functions = Untracked({
            "serving_default": tf.function(lambda v, s, d: self._serve(v, s, d, False), autograph=False,
                                           input_signature=specs),
            "predict_probabilities": tf.function(lambda v, s, d: self._serve(v, s, d, True), autograph=False,
                                                 input_signature=specs),
            "predict_patch": tf.function(segmenter.window.predict_patch, autograph=False,
                                         input_signature=[tf.TensorSpec(patch, tf.float32, name="patches")])})

    @property
    def segmenter(self) -> Segmenter:
        return self._holder.model

    def signatures(self) -> dict:
        """The signatures to save, by name (:data:`SIGNATURES`)."""
        return {name: function.get_concrete_function() for name, function in self._functions.model.items()}

    @staticmethod
    def _each_scan(one, batched, signature):
        """``one`` on each scan of ``batched``, the outputs stacked. One scan (the usual request)
        is passed and returned without a copy: its slice is the whole input, and its outputs
        gain their batch axis by a reshape."""
        n = tf.shape(batched)[0]

        def body(b, arrays):
            scan = tf.reshape(tf.slice(batched, tf.stack([b, 0, 0, 0, 0]), [1, -1, -1, -1, -1]), tf.shape(batched)[1:])
            return b + 1, tuple(a.write(b, out) for a, out in zip(arrays, one(scan)))

        arrays = tuple(tf.TensorArray(spec.dtype, size=n, element_shape=spec.shape) for spec in signature)
        _, arrays = tf.while_loop(lambda b, _: b < n, body, (0, arrays), parallel_iterations=1)
        return tuple(tf.cond(n == 1, lambda a=a: tf.expand_dims(a.read(0), 0), a.stack) for a in arrays)

    def _serve(self, volume, spacing, direction, with_probabilities: bool):
        channels, classes = self.segmenter.channels, self.segmenter.num_classes
        rank = tf.rank(volume)
        shape_ok = tf.logical_and(rank >= 3, rank <= 5)
        checks = [tf.debugging.Assert(shape_ok, [
            f"input volume: expected [D,H,W], [D,H,W,C] or [B,D,H,W,C] with C = {channels}; got shape",
            tf.shape(volume)])]
        with tf.control_dependencies(checks):
            index = tf.clip_by_value(rank - 3, 0, 2)
        # Reshapes, not copies, of a large scan.
        batched = tf.switch_case(index, [lambda: tf.reshape(volume, tf.concat([[1], tf.shape(volume), [1]], 0)),
                                         lambda: tf.expand_dims(volume, 0), lambda: volume])
        channel_ok = tf.logical_and(tf.rank(batched) == 5, tf.shape(batched)[-1] == channels)
        with tf.control_dependencies([tf.debugging.Assert(channel_ok, [
                f"input volume: expected {channels} channel(s) on the last axis; got shape", tf.shape(volume)]),
                tf.debugging.Assert(tf.shape(batched)[0] > 0, [
                    "input volume: expected at least one scan in the batch; got shape", tf.shape(volume)])]):
            batched = tf.ensure_shape(tf.identity(batched), [None, None, None, None, channels])
        signature = [tf.TensorSpec([None, None, None], tf.int32)]
        if with_probabilities:
            signature.append(tf.TensorSpec([None, None, None, classes], tf.float32))

        def one(v):
            out = self.segmenter.segment_ops(v, spacing, direction, with_probabilities)
            return tuple(out[k] for k in ("labels", "probabilities")[:len(signature)])

        outputs = self._each_scan(one, batched, signature)
        unbatch = lambda x: tf.cond(rank == 5, lambda: x, lambda: tf.reshape(x, tf.shape(x)[1:]))  # noqa: E731
        result = {"labels": unbatch(outputs[0]), "postprocess": tf.constant(self.postprocess)}
        if with_probabilities:
            result["probabilities"] = unbatch(outputs[1])
        return result
