"""Ensembles: the averaged model against numpy, through the inference graph, and the checks on
the members."""

import numpy as np
import pytest
import tensorflow as tf

from vnet_tf.inference.ensemble import MeanOfModels, Member, check_members
from vnet_tf.inference.config import InferenceConfig
from vnet_tf.inference.segmenter import Segmenter
from vnet_tf.data.preprocess import PreprocessConfig


class _SoftmaxOfLinear:
    """A per-voxel softmax over a fixed linear map of the channels: each weight matrix is a
    different 'model'."""
    variables = []

    def __init__(self, weights):
        self.weights = weights

    def __call__(self, batch, training=False):
        return tf.nn.softmax(tf.einsum("bzyxc,ck->bzyxk", tf.cast(batch, tf.float32), tf.constant(self.weights, tf.float32)))


def test_ensemble_is_the_mean_of_the_members_probabilities():
    rng = np.random.default_rng(0)
    batch = rng.normal(size=(2, 4, 5, 6, 2)).astype(np.float32)
    members = [_SoftmaxOfLinear(rng.normal(size=(2, 3))) for _ in range(3)]
    expected = np.mean([np.asarray(m(batch)) for m in members], axis=0)
    got = np.asarray(MeanOfModels(members)(batch))
    np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(got.sum(-1), 1.0, atol=1e-5)
    assert all(np.abs(got - np.asarray(m(batch))).max() > 1e-3 for m in members)  # not just one member


def test_ensemble_through_the_sliding_window_equals_averaging_whole_volumes():
    # Tiling is linear in the probabilities, so the ensemble's windows blended must equal the
    # mean of each member's blended volume.
    rng = np.random.default_rng(1)
    image = tf.constant(rng.normal(size=(20, 18, 22, 2)).astype(np.float32))
    config = InferenceConfig(patch_size_zyx=(12, 10, 16), overlap=0.5, mirror_axes=(2,))
    members = [_SoftmaxOfLinear(rng.normal(size=(2, 3))) for _ in range(2)]
    window = lambda model: Segmenter(model, PreprocessConfig(), config, 2, 3).sliding_window(image).numpy()  # noqa: E731
    together = window(MeanOfModels(members))
    apart = np.mean([window(m) for m in members], axis=0)
    np.testing.assert_allclose(together, apart, rtol=1e-5, atol=1e-6)


def test_no_member_is_refused():
    with pytest.raises(ValueError, match="at least one"):
        MeanOfModels([])
    with pytest.raises(ValueError, match="at least one"):
        check_members([])


def _member(name, classes=3, patch=(32, 32, 32), **kwargs):
    preprocess = PreprocessConfig(**{k: v for k, v in kwargs.items() if k in ("normalization", "crop_size_zyx")})
    inference = InferenceConfig(patch_size_zyx=patch, **{k: v for k, v in kwargs.items()
                                                         if k in ("overlap", "mirror_axes", "postprocess")})
    return Member(name, preprocess, inference, classes)


def test_members_must_share_input_and_classes():
    base = _member("runs/a")
    assert check_members([base, _member("runs/b")]) == []
    for other, what in [(_member("runs/b", classes=2), "number of classes"),
                        (_member("runs/b", patch=(40, 56, 40)), "patch size"),
                        (_member("runs/b", normalization="none"), "preprocessing")]:
        with pytest.raises(ValueError) as err:
            check_members([base, _member("runs/c"), other])
        message = str(err.value)
        assert message.startswith("runs/b cannot be ensembled with runs/a") and what in message
        assert "expected" in message and "got" in message


def test_differing_inference_settings_are_reported_not_refused():
    base = _member("runs/a", mirror_axes=(0, 1, 2), postprocess="largest")
    other = _member("runs/b", mirror_axes=(2,), postprocess="largest", overlap=0.25)
    assert check_members([base, other]) == ["mirror_axes", "overlap"]
