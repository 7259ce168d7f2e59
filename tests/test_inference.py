"""The inference graph (vnet_tf.inference.segmenter.Segmenter) against brute-force numpy / SimpleITK
references: sliding window, blending, mirroring, reorientation, resampling, normalisation."""

import itertools

import numpy as np
import pytest
import SimpleITK as sitk
import tensorflow as tf

from vnet_tf.inference import volume_ops
from vnet_tf.inference.config import InferenceConfig
from vnet_tf.inference.segmenter import Segmenter
from vnet_tf.inference.sliding_window import gaussian_weights, window_starts
from vnet_tf.core.io import Geometry
from vnet_tf.data.preprocess import PreprocessConfig, normalize_intensities
from vnet_tf.inference.segmentation import postprocess_label, predict_case


class Fn:
    """A model stand-in: any function of the patches, with no variables."""
    variables = []

    def __init__(self, fn, calls=None):
        self.fn, self.calls = fn, calls

    def __call__(self, x, training=False):
        if self.calls is not None:  # the window batch, checked when the graph runs
            self.calls.append(tf.debugging.assert_less_equal(tf.shape(x)[0], self.calls[0]))
        return self.fn(x)


def _segmenter(fn, channels, classes, preprocess=PreprocessConfig(), **inference):
    return Segmenter(Fn(fn) if not isinstance(fn, Fn) else fn, preprocess,
                     InferenceConfig(**inference), channels, classes)


def numpy_sliding_window(image, predict, patch, overlap=0.5, mirror_axes=(), blend="gaussian"):
    """Brute-force reference: every window predicted alone and blended in numpy."""
    patch = np.array(patch)
    size = np.array(image.shape[:3])
    padded = np.maximum(size, patch)
    before = (padded - size) // 2
    volume = np.pad(image, [(int(b), int(p - s - b)) for b, p, s in zip(before, padded, size)] + [(0, 0)])
    weights = gaussian_weights(patch) if blend == "gaussian" else np.ones(tuple(patch), np.float32)

    def starts(n, p):
        if n <= p:
            return [0]
        step = max(1, int(p * (1 - overlap)))
        count = int(np.ceil((n - p) / step)) + 1
        return sorted({int(np.floor(v + 0.5)) for v in np.linspace(0, n - p, count)})

    subsets = [()] + [c for r in range(1, len(mirror_axes) + 1) for c in itertools.combinations(mirror_axes, r)]
    accum, norm = None, np.zeros(tuple(padded), np.float64)
    for z, y, x in itertools.product(*[starts(int(n), int(p)) for n, p in zip(padded, patch)]):
        window = volume[z:z + patch[0], y:y + patch[1], x:x + patch[2]][None]
        prob = np.mean([np.flip(predict(np.flip(window, [a + 1 for a in s])), [a + 1 for a in s])
                        for s in subsets], axis=0)[0]
        if accum is None:
            accum = np.zeros(tuple(padded) + (prob.shape[-1],), np.float64)
        accum[z:z + patch[0], y:y + patch[1], x:x + patch[2]] += prob * weights[..., None]
        norm[z:z + patch[0], y:y + patch[1], x:x + patch[2]] += weights
    out = accum / norm[..., None]
    return out[tuple(slice(int(b), int(b + s)) for b, s in zip(before, size))]


def _softmax_of_linear(weights):
    def predict(batch):
        logits = np.asarray(batch) @ weights
        e = np.exp(logits - logits.max(-1, keepdims=True))
        return (e / e.sum(-1, keepdims=True)).astype(np.float32)
    return predict


def _tf_softmax_of_linear(weights):
    w = tf.constant(weights, tf.float32)
    return lambda x: tf.nn.softmax(tf.einsum("bzyxc,ck->bzyxk", x, w))


@pytest.mark.parametrize("shape", [(10, 12, 9), (16, 16, 16), (37, 21, 50)])
@pytest.mark.parametrize("blend", ["gaussian", "constant"])
def test_identity_model_returns_the_input(rng, shape, blend):
    image = rng.normal(size=shape + (2,)).astype(np.float32)
    calls = [3]  # memory bounded by the window batch: the model never sees more than 3 windows
    seg = _segmenter(Fn(lambda x: x, calls), 2, 2, patch_size_zyx=(16, 16, 16), batch_size=3, blend=blend)
    out = seg.sliding_window(tf.constant(image)).numpy()
    assert out.shape == image.shape and len(calls) > 1
    np.testing.assert_allclose(out, image, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("shape, patch, overlap, mirror", [((37, 21, 50), (16, 12, 20), 0.5, (0, 2)),
                                                          ((9, 30, 11), (12, 8, 16), 0.25, (1,)),
                                                          ((20, 20, 20), (8, 8, 8), 0.75, ())])
def test_sliding_window_matches_a_brute_force_numpy_reference(rng, shape, patch, overlap, mirror):
    image = rng.normal(size=shape + (2,)).astype(np.float32)
    weights = rng.normal(size=(2, 3))
    seg = _segmenter(_tf_softmax_of_linear(weights), 2, 3, patch_size_zyx=patch, overlap=overlap,
                     mirror_axes=mirror, batch_size=2)
    got = seg.sliding_window(tf.constant(image)).numpy()
    expected = numpy_sliding_window(image, _softmax_of_linear(weights), patch, overlap, mirror)
    np.testing.assert_allclose(got, expected, atol=2e-6)


def test_mirroring_averages_flipped_predictions():
    ramp = tf.reshape(tf.range(8, dtype=tf.float32), (1, 8, 1, 1, 1))
    seg = _segmenter(lambda x: tf.broadcast_to(ramp, tf.shape(x)), 1, 1, patch_size_zyx=(8, 8, 8), mirror_axes=(0,))
    out = seg.sliding_window(tf.zeros((8, 8, 8, 1))).numpy()
    np.testing.assert_allclose(out, 3.5)  # mean of the ramp and its mirror


def test_gaussian_weights_and_constant_blending():
    w = gaussian_weights((16, 8, 12))
    assert w.shape == (16, 8, 12) and w.max() == pytest.approx(1.0) and w.min() > 0
    np.testing.assert_allclose(w, w[::-1, ::-1, ::-1])
    x = np.arange(16) - 7.5
    np.testing.assert_allclose(w[:, 3, 5] / w[:, 3, 5].max(), np.exp(-0.5 * (x / 2.0) ** 2) / np.exp(-0.5 * (0.5 / 2.0) ** 2),
                               rtol=1e-5)
    seg = _segmenter(lambda x: tf.fill(tf.concat([tf.shape(x)[:4], [2]], 0), 0.25), 1, 2, patch_size_zyx=(16, 16, 16))
    np.testing.assert_allclose(seg.sliding_window(tf.zeros((30, 20, 25, 1))).numpy(), 0.25, rtol=1e-6)


def test_window_starts_cover_the_axis_without_duplicates():
    for size, patch, overlap in [(16, 16, 0.5), (17, 16, 0.5), (50, 16, 0.5), (100, 32, 0.5), (33, 8, 0.9),
                                 (1000, 7, 0.3), (10, 16, 0.5)]:
        starts = window_starts(size, patch, overlap).numpy().tolist()
        assert starts[0] == 0 and starts[-1] == max(size - patch, 0)
        assert starts == sorted(set(starts))
        assert all(b - a <= max(1, int(patch * (1 - overlap))) for a, b in zip(starts, starts[1:]))


def test_reorientation_matches_simpleitk_for_every_axis_aligned_direction(rng):
    array = rng.normal(size=(5, 6, 7)).astype(np.float32)
    for perm in itertools.permutations(range(3)):
        for signs in itertools.product((1, -1), repeat=3):
            matrix = np.zeros((3, 3))
            for column, row in enumerate(perm):
                matrix[row, column] = signs[column]
            image = sitk.GetImageFromArray(array)
            image.SetDirection(matrix.ravel().tolist())
            image.SetSpacing((0.5, 0.7, 1.9))
            for code in ("LPS", "RAS", "PIL"):
                expected = sitk.DICOMOrient(image, code)
                p, f, valid = volume_ops.orientation_permutation(tf.constant(matrix.ravel(), tf.float32), code)
                got = volume_ops.reorient(tf.constant(array), p, f).numpy()
                assert bool(valid)
                np.testing.assert_array_equal(got, sitk.GetArrayFromImage(expected))
                np.testing.assert_allclose(np.array([1.9, 0.7, 0.5])[p.numpy()], expected.GetSpacing()[::-1])
                np.testing.assert_array_equal(volume_ops.unorient(tf.constant(got), p, f).numpy(), array)


def test_resampling_matches_simpleitk_linear(rng):
    array = rng.normal(size=(20, 30, 25)).astype(np.float32)
    image = sitk.GetImageFromArray(array)
    image.SetSpacing((1.0, 0.8, 2.5))
    spacing_zyx = np.array([2.5, 0.8, 1.0])
    for target in [(1.5, 1.2, 1.1), (3.0, 0.5, 0.7), (1.0, 0.8, 2.5)]:
        size = [max(1, int(round(n * s / t))) for n, s, t in zip(image.GetSize(), image.GetSpacing(), target[::-1])]
        extent = volume_ops.resampled_extent(tf.constant(array.shape), tf.constant(spacing_zyx), target)
        grid = volume_ops.grid_of(extent)
        assert grid.numpy().tolist() == size[::-1]
        expected = sitk.GetArrayFromImage(sitk.Resample(image, size, sitk.Transform(), sitk.sitkLinear, image.GetOrigin(),
                                                        target[::-1], image.GetDirection(), 0.0, sitk.sitkFloat32))
        got = volume_ops.resample(tf.constant(array), spacing_zyx, target, grid).numpy()
        # SimpleITK decides a position exactly on the scan's outer border its own way: compare the rest.
        position = [np.arange(n) * t / s for n, t, s in zip(got.shape, target, spacing_zyx)]
        clear = [np.abs(p - (n - 0.5)) > 1e-6 for p, n in zip(position, array.shape)]
        mesh = np.meshgrid(*clear, indexing="ij")
        keep = mesh[0] & mesh[1] & mesh[2]
        assert keep.mean() > 0.3
        np.testing.assert_allclose(got[keep], expected[keep], atol=1e-5)


@pytest.mark.parametrize("mode, clip", [("zscore", None), ("zscore_foreground", None), ("rescale", (1.0, 99.0)),
                                        ("zscore", (5.0, 95.0)), ("none", None), ("ct", None)])
def test_normalisation_matches_the_cache_numpy_version(rng, mode, clip):
    array = (rng.normal(size=(9, 10, 11)) * 50 + 100).astype(np.float32)
    array[:3] = 0.0
    ct = (40.0, 160.0, 95.0, 30.0) if mode == "ct" else None
    got = volume_ops.normalize(tf.constant(array[..., None]), mode, clip, ct).numpy()[..., 0]
    expected = normalize_intensities(array, mode, clip, ct)
    np.testing.assert_allclose(got, expected, atol=2e-5)
    if mode == "ct":  # clipped to [40, 160], then the dataset's mean and std
        np.testing.assert_allclose(expected, (np.clip(array, 40, 160) - 95) / 30, rtol=1e-6)
        assert expected.min() == pytest.approx((40 - 95) / 30)


def test_ct_statistics_go_with_the_ct_normalisation_only():
    with pytest.raises(ValueError, match="ct_statistics"):
        PreprocessConfig(normalization="ct").validate()
    with pytest.raises(ValueError, match="ct_statistics"):
        PreprocessConfig(normalization="zscore", ct_statistics=(0, 1, 0, 1)).validate()
    with pytest.raises(ValueError, match="low < high"):
        PreprocessConfig(normalization="ct", ct_statistics=(5, 1, 0, 1)).validate()
    PreprocessConfig(normalization="ct", ct_statistics=(-100, 300, 50, 80)).validate()


def test_postprocess_keeps_largest_component():
    label = np.zeros((10, 10, 10), np.uint8)
    label[1:5, 1:5, 1:5] = 1
    label[8, 8, 8] = 1
    label[6:9, 1:3, 1:3] = 2
    out = postprocess_label(label, "largest")
    assert out[8, 8, 8] == 0 and (out == 1).sum() == 64 and (out == 2).sum() == 12
    small = postprocess_label(label, "min_size", min_size=10)
    assert small[8, 8, 8] == 0 and (small == 2).sum() == 12


def _threshold(x):  # foreground where the normalised intensity is high
    fg = tf.cast(x[..., 0] > 0.5, tf.float32)
    return tf.stack([1 - fg, fg], axis=-1)


def test_prediction_has_the_original_geometry():
    """A reoriented (RAS-like direction), anisotropic case, resampled and cropped as at
    preprocessing: the label comes back on exactly the input's grid."""
    array = np.zeros((20, 30, 26), np.float32)
    array[5:15, 8:22, 6:20] = 100.0
    image = sitk.GetImageFromArray(array)
    image.SetSpacing((0.8, 0.9, 2.5))
    image.SetOrigin((10.0, -20.0, 5.0))
    image.SetDirection((-1, 0, 0, 0, -1, 0, 0, 0, 1))
    preprocess = PreprocessConfig(target_spacing_zyx=(1.5, 1.2, 1.0), crop_size_zyx=(32, 16, 16))
    seg = _segmenter(_threshold, 1, 2, preprocess, patch_size_zyx=(16, 16, 16))
    from vnet_tf.inference.loading import segmenter_segment
    pred = predict_case([image], segmenter_segment(seg), keep_probabilities=True)
    assert pred.label.shape == array.shape and pred.probabilities.shape == array.shape + (2,)
    assert pred.geometry == Geometry.of(image)
    written = pred.geometry.apply_to(sitk.GetImageFromArray(pred.label))
    assert written.GetSize() == image.GetSize() and written.GetSpacing() == image.GetSpacing()
    assert written.GetOrigin() == image.GetOrigin() and written.GetDirection() == image.GetDirection()
    # The centre of the bright block (inside the 16-voxel crop) is found again; the corner is background.
    assert pred.label[10, 15, 13] == 1 and pred.label[0, 0, 0] == 0


def test_labels_on_a_resampled_run_are_the_argmax_of_the_probabilities_mapped_back_linearly():
    """Where the run resampled, the scan's labels come from the network grid's probabilities
    resampled linearly (SimpleITK as the reference) and then the argmax; the network grid's
    labels taken back by nearest neighbour are blockier and differ along the boundary."""
    from helpers import restore_label, restore_probabilities
    from vnet_tf.data.preprocess import preprocess_case
    from vnet_tf.inference.loading import segmenter_segment
    z, y, x = np.meshgrid(*[np.linspace(-1, 1, n) for n in (18, 30, 26)], indexing="ij")
    image = sitk.GetImageFromArray((100.0 * (1.0 - (z / 0.7) ** 2 - (y / 0.6) ** 2 - ((x - 0.1) / 0.8) ** 2)).astype(np.float32))
    image.SetSpacing((0.7, 0.9, 2.2))
    image.SetDirection((-1, 0, 0, 0, -1, 0, 0, 0, 1))
    preprocess = PreprocessConfig(target_spacing_zyx=(1.7, 1.3, 1.1))

    def smooth(x):  # probabilities that vary smoothly with the intensity
        return tf.nn.softmax(tf.stack([tf.zeros_like(x[..., 0]), 3.0 * x[..., 0]], axis=-1), axis=-1)

    seg = _segmenter(smooth, 1, 2, preprocess, patch_size_zyx=(16, 16, 16))
    coarse, _, record = preprocess_case([image], None, preprocess)
    coarse_probabilities = seg.sliding_window(tf.constant(coarse)).numpy()
    expected = restore_probabilities(coarse_probabilities, record)
    pred = predict_case([image], segmenter_segment(seg), keep_probabilities=True)
    np.testing.assert_allclose(pred.probabilities, expected, atol=1e-5)
    np.testing.assert_array_equal(pred.label, np.argmax(pred.probabilities, axis=-1))
    nearest = restore_label(np.argmax(coarse_probabilities, axis=-1).astype(np.uint8), record)[0]
    assert 0 < np.count_nonzero(nearest != pred.label) < 0.1 * nearest.size


@pytest.mark.parametrize("kwargs, word", [(dict(overlap=1.0), "overlap"), (dict(blend="max"), "blend"),
                                          (dict(mirror_axes=(3,)), "mirror_axes"), (dict(postprocess="x"), "postprocess")])
def test_bad_inference_settings(kwargs, word):
    with pytest.raises(ValueError, match=word):
        InferenceConfig(**kwargs).validate()


def test_predict_patch_matches_the_eager_model(rng):
    from vnet_tf.model.vnet import build_vnet
    model = build_vnet(base_width=4, depth=2, kernel_size=3, normalization="batch", num_classes=3)
    seg = Segmenter(model, PreprocessConfig(), InferenceConfig(patch_size_zyx=(8, 12, 8)), 1, 3)
    batch = rng.standard_normal((2, 8, 12, 8, 1)).astype(np.float32)
    got = seg.predict_patch(tf.constant(batch))["probabilities"].numpy()
    np.testing.assert_allclose(got, np.asarray(model(batch, training=False)), atol=1e-5)


def test_a_refused_volume_raises_the_graphs_message_alone():
    from vnet_tf.inference.loading import segmenter_segment
    seg = _segmenter(_threshold, 1, 2, patch_size_zyx=(8, 8, 8))
    volume = np.zeros((9, 9, 9, 1), np.float32)
    volume[1, 2, 3] = np.nan
    with pytest.raises(ValueError) as err:
        segmenter_segment(seg)(volume, np.ones(3, np.float32), np.eye(3, dtype=np.float32).ravel())
    assert str(err.value) == "input volume: expected finite values; found 1 NaN or infinite voxel(s)"


def test_channels_on_different_grids_are_refused_naming_the_file():
    from vnet_tf.inference.segmentation import scan_arrays
    first = sitk.GetImageFromArray(np.zeros((6, 7, 8), np.float32))
    second = sitk.GetImageFromArray(np.zeros((6, 7, 9), np.float32))
    with pytest.raises(ValueError) as err:
        scan_arrays([first, second], names=("t1.nii.gz", "t2.nii.gz"))
    assert str(err.value).startswith("t2.nii.gz: expected the grid of the first channel (size (8, 7, 6)), got size")
    assert scan_arrays([first, first]).volume.shape == (6, 7, 8, 2)
