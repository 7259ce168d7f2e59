"""Preprocessing steps, their undoing (checked with the SimpleITK reference in helpers.py), and the cache."""


import numpy as np
import pytest
import SimpleITK as sitk

from helpers import restore_label, restore_probabilities, write_msd
from vnet_tf.data.cache import load_cached_case, preprocess_dataset, read_case
from vnet_tf.data.cases import find_cases
from vnet_tf.core.io import Geometry, array_to_image, write_volume
from vnet_tf.data.preprocess import PreprocessConfig, normalize_intensities, preprocess_case

# axes permuted and flipped, anisotropic integer spacing
PERMUTED = Geometry((2.0, 1.0, 3.0), (5.0, 6.0, -7.0), (0, 0, -1, -1, 0, 0, 0, 1, 0))


@pytest.fixture
def case(rng):
    label = np.zeros((10, 12, 14), np.uint8)
    label[3:7, 4:9, 2:10] = 1
    label[5:7, 4:9, 2:10] = 2
    image = label.astype(np.float32) * 50 + 100 + rng.normal(0, 5, label.shape).astype(np.float32)
    return array_to_image(image, PERMUTED), array_to_image(label, PERMUTED), label


def test_reorientation_gives_canonical_direction_and_is_undone(case):
    image, label_image, label = case
    out, out_label, record = preprocess_case([image], label_image, PreprocessConfig(orientation="LPS"))
    assert record.oriented_geometry.direction == (1, 0, 0, 0, 1, 0, 0, 0, 1)
    assert out.shape[:3] == out_label.shape != label.shape  # axes were permuted
    back, geometry = restore_label(out_label, record)
    np.testing.assert_array_equal(back, label)
    assert geometry == PERMUTED


def test_resample_to_1mm_and_back_is_exact(case):
    image, label_image, label = case
    config = PreprocessConfig(target_spacing_zyx=(1.0, 1.0, 1.0))
    out, out_label, record = preprocess_case([image], label_image, config)
    assert record.resampled_geometry.spacing == (1.0, 1.0, 1.0)
    assert out_label.size == label.size * 2 * 3  # spacings 2 and 3 become 1
    assert set(np.unique(out_label)) == {0, 1, 2}
    back, geometry = restore_label(out_label, record)
    np.testing.assert_array_equal(back, label)
    assert geometry == PERMUTED
    restored = sitk.GetImageFromArray(back)
    geometry.apply_to(restored)
    assert restored.GetSpacing() == PERMUTED.spacing and restored.GetDirection() == PERMUTED.direction


def test_linear_argmax_label_resampling(case):
    image, label_image, label = case
    config = PreprocessConfig(target_spacing_zyx=(1.0, 1.0, 1.0), label_interpolation="linear_argmax")
    _, out_label, record = preprocess_case([image], label_image, config)
    assert set(np.unique(out_label)) == {0, 1, 2}
    np.testing.assert_array_equal(restore_label(out_label, record)[0], label)


def test_crop_and_pad_are_undone(case):
    image, label_image, label = case
    config = PreprocessConfig(target_spacing_zyx=(1.0, 1.0, 1.0), crop_size_zyx=(16, 64, 24))
    out, out_label, record = preprocess_case([image], label_image, config)
    assert out.shape == (16, 64, 24, 1) and out_label.shape == (16, 64, 24)
    np.testing.assert_array_equal(restore_label(out_label, record)[0], label)
    probabilities = np.eye(3, dtype=np.float32)[out_label]
    restored = restore_probabilities(probabilities, record)
    assert restored.shape == label.shape + (3,)
    np.testing.assert_array_equal(restored.argmax(-1), label)


def test_multichannel_from_channel_files(case):
    image, label_image, _ = case
    out, _, _ = preprocess_case([image, image * 2], label_image, PreprocessConfig())
    assert out.shape[-1] == 2


def test_normalisations(rng):
    x = rng.normal(5, 3, size=(6, 6, 6)).astype(np.float32)
    z = normalize_intensities(x, "zscore")
    assert abs(z.mean()) < 1e-5 and abs(z.std() - 1) < 1e-4
    r = normalize_intensities(x, "rescale")
    assert r.min() == 0 and abs(r.max() - 1) < 1e-6
    masked = x.copy()
    masked[:3] = 0
    f = normalize_intensities(masked, "zscore_foreground")
    assert np.all(f[:3] == 0) and abs(f[3:].mean()) < 1e-5 and abs(f[3:].std() - 1) < 1e-4
    clipped = normalize_intensities(x, "none", clip_percentiles=(10, 90))
    assert clipped.max() <= np.percentile(x, 90) + 1e-5 and clipped.min() >= np.percentile(x, 10) - 1e-5


def test_n4_runs_and_keeps_the_grid(case):
    image, label_image, _ = case
    out, _, record = preprocess_case([image], label_image, PreprocessConfig(n4=True, normalization="none"))
    assert np.isfinite(out).all() and out.shape[:3] == record.final_size_zyx


@pytest.mark.parametrize("kwargs,message", [
    (dict(orientation="LLS"), "orientation must be a 3-letter code"),
    (dict(target_spacing_zyx=(1, 0, 1)), "target_spacing_zyx must be 3 positive spacings"),
    (dict(image_interpolation="cubic"), "image_interpolation must be one of"),
    (dict(normalization="minmax"), "normalization must be one of"),
    (dict(clip_percentiles=(99, 1)), "clip_percentiles must be"),
    (dict(crop_size_zyx=(0, 4, 4)), "crop_size_zyx must be 3 positive sizes"),
])
def test_bad_config(kwargs, message):
    with pytest.raises(ValueError, match=message):
        PreprocessConfig(**kwargs).validate()


def _write_msd(root, n, rng):
    cases = {}
    for i in range(n):
        label = np.zeros((8, 10, 12), np.uint8)
        label[2:6, 3:7, 4:8] = 1 + i % 2
        cases[f"c_{i}"] = ((label * 10.0 + rng.normal(size=label.shape)).astype(np.float32), label, PERMUTED)
    write_msd(root, cases)


def test_cache_is_parallel_reused_and_refreshed(tmp_path, rng):
    _write_msd(tmp_path / "data", 4, rng)
    cases = find_cases(tmp_path / "data").cases
    config = PreprocessConfig(target_spacing_zyx=(1.5, 1.0, 1.0))
    seen = []
    paths = preprocess_dataset(cases, config, tmp_path / "cache", workers=2,
                               on_case=lambda cid, reused: seen.append(reused))
    assert seen == [False] * 4 and [p.stem for p in paths] == [c.case_id for c in cases]
    cached = load_cached_case(paths[0])
    assert cached.image.dtype == np.float32 and cached.label.dtype == np.uint8
    direct, _, record = preprocess_case(*read_case(cases[0]), config)
    np.testing.assert_array_equal(cached.image, direct)
    assert record.resampled_geometry.spacing == (1.0, 1.0, 1.5)
    seen.clear()
    preprocess_dataset(cases, config, tmp_path / "cache", on_case=lambda cid, reused: seen.append(reused))
    assert seen == [True] * 4
    stamp = paths[0].stat().st_mtime_ns
    write_volume(cases[0].label, np.zeros((8, 10, 12), np.uint8), PERMUTED)  # source changed
    seen.clear()
    preprocess_dataset(cases, config, tmp_path / "cache", on_case=lambda cid, reused: seen.append((cid, reused)))
    assert (cases[0].case_id, False) in seen and paths[0].stat().st_mtime_ns != stamp
    assert not [p for p in paths[0].parent.iterdir() if p.name.startswith(".")]
    other = preprocess_dataset(cases[:1], PreprocessConfig(), tmp_path / "cache")
    assert other[0].parent != paths[0].parent  # another config, another folder


def test_bspline_image_resampling_matches_linear_grid(case):
    image, label_image, label = case
    linear = preprocess_case([image], label_image, PreprocessConfig(target_spacing_zyx=(1, 1, 1)))
    bspline = preprocess_case([image], label_image, PreprocessConfig(
        target_spacing_zyx=(1, 1, 1), image_interpolation="bspline"))
    assert bspline[0].shape == linear[0].shape and np.isfinite(bspline[0]).all()
    assert not np.array_equal(bspline[0], linear[0])  # a different interpolator really ran
    assert np.corrcoef(bspline[0].ravel(), linear[0].ravel())[0, 1] > 0.95
    np.testing.assert_array_equal(bspline[1], linear[1])  # labels unaffected
