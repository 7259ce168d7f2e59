import numpy as np
import pytest
import SimpleITK as sitk

from vnet_tf.inference import (InferenceConfig, gaussian_weights, postprocess_label, predict_case,
                               sliding_window, window_starts)
from vnet_tf.io import Geometry
from vnet_tf.preprocess import PreprocessConfig


def identity(batch):
    return batch


@pytest.mark.parametrize("shape", [(10, 12, 9), (16, 16, 16), (37, 21, 50)])
@pytest.mark.parametrize("blend", ["gaussian", "constant"])
def test_identity_predictor_returns_the_input(rng, shape, blend):
    image = rng.normal(size=shape + (2,)).astype(np.float32)
    calls = []

    def predictor(batch):
        calls.append(batch.shape[0])
        return identity(batch)

    out = sliding_window(image, predictor, InferenceConfig(patch_size_zyx=(16, 16, 16), overlap=0.5,
                                                           batch_size=3, blend=blend))
    assert out.shape == image.shape
    np.testing.assert_allclose(out, image, rtol=1e-5, atol=1e-6)
    assert max(calls) <= 3  # memory bounded by the window batch


def test_mirroring_with_an_equivariant_predictor_is_exact(rng):
    image = rng.normal(size=(20, 18, 17, 1)).astype(np.float32)
    cfg = InferenceConfig(patch_size_zyx=(16, 16, 16), mirror_axes=(0, 1, 2))
    np.testing.assert_allclose(sliding_window(image, identity, cfg), image, rtol=1e-5, atol=1e-6)


def test_mirroring_averages_flipped_predictions():
    image = np.zeros((8, 8, 8, 1), np.float32)

    def position(batch):  # depends on position within the window, not equivariant
        ramp = np.arange(8, dtype=np.float32)[None, :, None, None, None]
        return np.broadcast_to(ramp, batch.shape).copy()

    out = sliding_window(image, position, InferenceConfig(patch_size_zyx=(8, 8, 8), mirror_axes=(0,)))
    np.testing.assert_allclose(out, 3.5)  # mean of the ramp and its mirror


def test_gaussian_weights():
    w = gaussian_weights((16, 8, 12))
    assert w.shape == (16, 8, 12) and w.max() == pytest.approx(1.0) and w.min() > 0
    np.testing.assert_allclose(w, w[::-1, ::-1, ::-1])
    x = np.arange(16) - 7.5
    np.testing.assert_allclose(w[:, 3, 5] / w[:, 3, 5].max(), np.exp(-0.5 * (x / 2.0) ** 2) / np.exp(-0.5 * (0.5 / 2.0) ** 2),
                               rtol=1e-5)
    # Blending a constant prediction gives that constant: the weights are normalised per voxel.
    out = sliding_window(np.zeros((30, 20, 25, 1), np.float32), lambda b: np.full(b.shape[:4] + (2,), 0.25, np.float32),
                         InferenceConfig(patch_size_zyx=(16, 16, 16)))
    np.testing.assert_allclose(out, 0.25, rtol=1e-6)


def test_window_starts_cover_the_axis():
    for size, patch in [(16, 16), (17, 16), (50, 16), (100, 32)]:
        starts = window_starts(size, patch, 0.5)
        assert starts[0] == 0 and starts[-1] == size - patch
        assert all(b - a <= patch // 2 for a, b in zip(starts, starts[1:]))


def test_postprocess_keeps_largest_component():
    label = np.zeros((10, 10, 10), np.uint8)
    label[1:5, 1:5, 1:5] = 1
    label[8, 8, 8] = 1
    label[6:9, 1:3, 1:3] = 2
    out = postprocess_label(label, "largest")
    assert out[8, 8, 8] == 0 and (out == 1).sum() == 64 and (out == 2).sum() == 12
    small = postprocess_label(label, "min_size", min_size=10)
    assert small[8, 8, 8] == 0 and (small == 2).sum() == 12


def test_prediction_has_the_original_geometry():
    """A reoriented (RAS-like direction), anisotropic case, resampled and cropped at
    preprocessing: the label comes back on exactly the input's grid."""
    array = np.zeros((20, 30, 26), np.float32)
    array[5:15, 8:22, 6:20] = 100.0
    image = sitk.GetImageFromArray(array)
    image.SetSpacing((0.8, 0.9, 2.5))
    image.SetOrigin((10.0, -20.0, 5.0))
    image.SetDirection((-1, 0, 0, 0, -1, 0, 0, 0, 1))
    preprocess = PreprocessConfig(target_spacing_zyx=(1.5, 1.2, 1.0), crop_size_zyx=(32, 16, 16))

    def threshold(batch):  # foreground where the normalised intensity is high
        fg = (batch[..., 0] > 0.5).astype(np.float32)
        return np.stack([1 - fg, fg], axis=-1)

    pred = predict_case([image], threshold, preprocess, InferenceConfig(patch_size_zyx=(16, 16, 16)))
    assert pred.label.shape == array.shape
    assert pred.geometry == Geometry.of(image)
    written = pred.geometry.apply_to(sitk.GetImageFromArray(pred.label))
    assert written.GetSize() == image.GetSize() and written.GetSpacing() == image.GetSpacing()
    assert written.GetOrigin() == image.GetOrigin() and written.GetDirection() == image.GetDirection()
    # The centre of the bright block (inside the 16-voxel crop) is found again.
    assert pred.label[10, 15, 13] == 1 and pred.label[0, 0, 0] == 0


@pytest.mark.parametrize("kwargs, word", [(dict(overlap=1.0), "overlap"), (dict(blend="max"), "blend"),
                                          (dict(mirror_axes=(3,)), "mirror_axes"), (dict(postprocess="x"), "postprocess")])
def test_bad_inference_settings(kwargs, word):
    with pytest.raises(ValueError, match=word):
        InferenceConfig(**kwargs).validate()


def test_parse_mirror_axes():
    from vnet_tf.inference import parse_mirror_axes
    assert parse_mirror_axes(["0", "2"]) == (0, 2) and parse_mirror_axes(["none"]) == () and parse_mirror_axes([]) == ()
    for bad in (["3"], ["x"]):
        with pytest.raises(ValueError, match="mirror_axes"):
            parse_mirror_axes(bad)


def test_keras_predictor_matches_the_eager_model(rng):
    from vnet_tf.inference import keras_predictor
    from vnet_tf.model import build_vnet
    model = build_vnet(base_width=4, depth=2, kernel_size=3, normalization="batch", num_classes=3)
    predict = keras_predictor(model)
    for n, shape in ((2, (8, 12, 8)), (1, (8, 12, 8)), (2, (10, 6, 4))):
        batch = rng.standard_normal((n, *shape, 1)).astype(np.float32)
        expected = np.asarray(model(batch, training=False))
        got = predict(batch)
        assert got.dtype == np.float32 and got.shape == (n, *shape, 3)
        np.testing.assert_allclose(got, expected, atol=1e-5)
