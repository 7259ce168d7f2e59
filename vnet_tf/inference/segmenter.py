"""Whole-volume inference, written once as a TensorFlow graph.

:class:`Segmenter` takes a scan's array as it was read (any orientation, any spacing) and
returns its label map on the same grid. Inside, in this order: reorientation to the run's
orientation, resampling to the run's spacing, the intensity normalisation of training, the
centre crop where the run used one, the Gaussian-blended sliding window with test-time
mirroring (the mean over an ensemble's models when the model is one), the way back to the
scan's grid (the probabilities, linearly, where the run resampled) and the argmax. The same
functions serve ``evaluate.py`` (called from a workdir, or loaded from an export), training-time validation (:meth:`Segmenter.sliding_window`
on cached, preprocessed cases) and the exported SavedModel (:mod:`vnet_tf.inference.signatures`), so what
is served is what was evaluated.

Invalid inputs fail with ``tf.errors.InvalidArgumentError`` and a message naming the input,
what was expected and what was found (docs/reference/serving.md: the list).
"""

from __future__ import annotations

import tensorflow as tf

from vnet_tf.data.preprocess import PreprocessConfig
from vnet_tf.inference import volume_ops
from vnet_tf.inference.config import DEFAULT_MAX_VOXELS, InferenceConfig
from vnet_tf.inference.graph_preprocessing import GraphPreprocessing
from vnet_tf.inference.sliding_window import SlidingWindow


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
    - :meth:`predict_patch`: ``(N, pz, py, px, C)`` preprocessed patches -> probabilities.

    Its parts: :class:`~vnet_tf.inference.graph_preprocessing.GraphPreprocessing` (the request's
    checks and the run's preprocessing) and :class:`~vnet_tf.inference.sliding_window.SlidingWindow`
    (the network over the volume); :meth:`segment_ops` joins them and maps the labels back.
    """

    def __init__(self, model, preprocess: PreprocessConfig, inference: InferenceConfig, channels: int,
                 num_classes: int, max_voxels: int = DEFAULT_MAX_VOXELS):
        super().__init__(name="vnet_segmenter")
        inference = inference.validate()
        self._parts = Untracked((GraphPreprocessing(preprocess, channels, max_voxels),
                                 SlidingWindow(model, inference, channels, num_classes)))
        self.model_variables = [getattr(v, "value", v) for v in getattr(model, "variables", [])]
        self.channels, self.num_classes = int(channels), int(num_classes)
        self.preprocess, self.inference = self.graph_preprocessing.config, inference
        self.max_voxels = int(max_voxels)
        self.patch = self.window.patch
        c, p = self.channels, self.patch
        volume_spec = tf.TensorSpec([None, None, None, c], tf.float32, name="volume")
        geometry = [tf.TensorSpec([None], tf.float32, name="spacing"),
                    tf.TensorSpec([None], tf.float32, name="direction")]
        self.segment = tf.function(lambda v, s, d: self.segment_ops(v, s, d, True),
                                   autograph=False, input_signature=[volume_spec, *geometry])
        self.segment_labels = tf.function(lambda v, s, d: self.segment_ops(v, s, d, False),
                                          autograph=False, input_signature=[volume_spec, *geometry])
        self.sliding_window = tf.function(self.window.probabilities, autograph=False, input_signature=[volume_spec])
        self.predict_patch = tf.function(self.window.predict_patch, autograph=False, input_signature=[
            tf.TensorSpec([None, p[0], p[1], p[2], c], tf.float32, name="patches")])

    @property
    def graph_preprocessing(self) -> GraphPreprocessing:
        return self._parts.model[0]

    @property
    def window(self) -> SlidingWindow:
        return self._parts.model[1]

    def segment_ops(self, volume, spacing, direction, with_probabilities: bool):
        """The graph of :meth:`segment` (``with_probabilities``) or :meth:`segment_labels`, built
        in the caller's graph: what the serving signatures trace, per scan of a batch."""
        image, grid, size, perm, flips, spacing_o, start = self.graph_preprocessing.preprocess_volume(
            volume, spacing, direction)
        target = self.preprocess.target_spacing_zyx
        # On another grid than the scan's, the labels are the argmax of the probabilities
        # resampled (linearly) onto the scan's grid, not the network grid's labels resampled:
        # the boundary falls between the network's voxels, where the classes' probabilities cross.
        labels, probabilities = self.window.blend(image, with_probabilities or target is not None)
        if start is not None:  # outside the crop is background
            labels = volume_ops.place_window(labels, -start, grid)
            if probabilities is not None:
                background = tf.one_hot(0, self.num_classes)
                probabilities = volume_ops.place_window(probabilities - background, -start, grid) + background
        if target is not None:
            probabilities = volume_ops.resample(probabilities, target, spacing_o, size)
            labels = tf.argmax(probabilities, axis=-1, output_type=tf.int32)
        out = {"labels": tf.cast(volume_ops.unorient(labels, perm, flips), tf.int32)}
        if with_probabilities:
            out["probabilities"] = volume_ops.unorient(probabilities, perm, flips)
        return out
