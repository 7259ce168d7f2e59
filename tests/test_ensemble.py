"""Ensembles: the averaged predictor against numpy, and the checks on the members."""

import numpy as np
import pytest

from vnet_tf.ensemble import Member, check_members, ensemble_predictor
from vnet_tf.inference import InferenceConfig, sliding_window
from vnet_tf.preprocess import PreprocessConfig


def _softmax_predictor(weights):
    """A per-voxel softmax over a fixed linear map of the channels: each weight matrix is a
    different 'model'."""
    def predict(batch):
        logits = batch @ weights
        e = np.exp(logits - logits.max(-1, keepdims=True))
        return (e / e.sum(-1, keepdims=True)).astype(np.float32)
    return predict


def test_ensemble_is_the_mean_of_the_members_probabilities():
    rng = np.random.default_rng(0)
    batch = rng.normal(size=(2, 4, 5, 6, 2)).astype(np.float32)
    weights = [rng.normal(size=(2, 3)) for _ in range(3)]
    members = [_softmax_predictor(w) for w in weights]
    expected = np.mean([m(batch) for m in members], axis=0)
    got = ensemble_predictor(members)(batch)
    np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(got.sum(-1), 1.0, atol=1e-5)
    # it is not just one member's output
    assert all(np.abs(got - m(batch)).max() > 1e-3 for m in members)


def test_ensemble_through_the_sliding_window_equals_averaging_whole_volumes():
    # Tiling is linear in the probabilities, so the ensemble's windows blended must equal the
    # mean of each member's blended volume.
    rng = np.random.default_rng(1)
    image = rng.normal(size=(20, 18, 22, 2)).astype(np.float32)
    config = InferenceConfig(patch_size_zyx=(12, 10, 16), overlap=0.5, mirror_axes=(2,)).validate()
    members = [_softmax_predictor(rng.normal(size=(2, 3))) for _ in range(2)]
    together = sliding_window(image, ensemble_predictor(members), config)
    apart = np.mean([sliding_window(image, m, config) for m in members], axis=0)
    np.testing.assert_allclose(together, apart, rtol=1e-5, atol=1e-6)


def test_one_member_is_passed_through_and_none_is_refused():
    member = _softmax_predictor(np.eye(2))
    assert ensemble_predictor([member]) is member
    with pytest.raises(ValueError, match="at least one"):
        ensemble_predictor([])
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
