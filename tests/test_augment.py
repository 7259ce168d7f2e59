
import numpy as np
import pytest
import SimpleITK as sitk
import tensorflow as tf
import keras
from keras import ops

from vnet_tf.augment import chain as A
from vnet_tf.augment import warp
from vnet_tf.data.synthetic import sphere_case


def np_(x):
    return ops.convert_to_numpy(x)


# ---------------------------------------------------------------- warp primitives

def test_bspline_field_equals_simpleitk_bspline_transform(rng):
    shape, mesh = (9, 11, 13), (2, 3, 2)
    coef = rng.normal(size=(1, mesh[0] + 3, mesh[1] + 3, mesh[2] + 3, 3)).astype(np.float32) * 3
    field = np_(warp.bspline_field(coef, shape))[0]
    tx = sitk.BSplineTransform(3, 3)
    tx.SetTransformDomainOrigin((0.0, 0.0, 0.0))
    tx.SetTransformDomainPhysicalDimensions((shape[2] - 1, shape[1] - 1, shape[0] - 1))
    tx.SetTransformDomainMeshSize((mesh[2], mesh[1], mesh[0]))
    tx.SetTransformDomainDirection((1, 0, 0, 0, 1, 0, 0, 0, 1))
    # ITK: all x coefficients, then y, then z; each block x-fastest = numpy (z, y, x) C order.
    tx.SetParameters(np.concatenate([coef[0, ..., 2].ravel(), coef[0, ..., 1].ravel(),
                                     coef[0, ..., 0].ravel()]).tolist())
    points = [(z, y, x) for z in range(shape[0]) for y in range(shape[1]) for x in range(shape[2])]
    for z, y, x in points[::7] + [points[-1]]:
        moved = np.array(tx.TransformPoint((float(x), float(y), float(z))))
        np.testing.assert_allclose(field[z, y, x], (moved - (x, y, z))[::-1], atol=1e-4)


def _trilinear_reference(volume, point):
    """Brute force: weighted sum over the 8 neighbours, coordinates clamped to the volume."""
    point = np.clip(point, 0, np.array(volume.shape[:3]) - 1)
    low = np.floor(point).astype(int)
    out = 0.0
    for corner in np.ndindex(2, 2, 2):
        idx = np.minimum(low + corner, np.array(volume.shape[:3]) - 1)
        w = np.prod([f if c else 1 - f for c, f in zip(corner, point - low)])
        out = out + w * volume[tuple(idx)]
    return out


def test_sample_linear_and_nearest_match_brute_force(rng):
    volume = rng.normal(size=(2, 5, 6, 7, 2)).astype(np.float32)
    coords = rng.uniform(-1.5, 7.5, size=(2, 3, 4, 5, 3)).astype(np.float32)
    linear = np_(warp.sample_linear(volume, coords))
    nearest = np_(warp.sample_nearest(volume, coords))
    for b, z, y, x in np.ndindex(2, 3, 4, 5):
        p = coords[b, z, y, x]
        np.testing.assert_allclose(linear[b, z, y, x], _trilinear_reference(volume[b], p), atol=1e-5)
        idx = np.clip(np.floor(p + 0.5).astype(int), 0, np.array(volume.shape[1:4]) - 1)
        np.testing.assert_array_equal(nearest[b, z, y, x], volume[b][tuple(idx)])
    constant = np_(warp.sample_linear(volume, np.full((2, 1, 1, 1, 3), -5.0, np.float32), "constant", 7.0))
    np.testing.assert_array_equal(constant, 7.0)


def test_integer_coordinates_sample_exactly(rng):
    volume = rng.normal(size=(1, 6, 7, 8, 3)).astype(np.float32)
    grid = np_(warp.identity_grid((6, 7, 8)))[None]
    np.testing.assert_array_equal(np_(warp.sample_linear(volume, grid)), volume)


# ---------------------------------------------------------------- spatial transforms

def _sphere_batch(rng, n=2, shape=(32, 32, 32), num_classes=3):
    images, labels = zip(*[sphere_case(shape, rng, radius_range=(0.25, 0.35), noise=0.0,
                                       num_classes=num_classes) for _ in range(n)])
    return np.stack(images)[..., None].astype(np.float32), np.stack(labels).astype(np.int32)


def test_zero_magnitude_is_identity(rng):
    image, label = _sphere_batch(rng)
    image = image + rng.normal(size=image.shape).astype(np.float32)
    layer = A.RandomSpatialTransform(elastic_probability=1.0, sigma=0.0, affine_probability=1.0,
                                     rotation_degrees=(0, 0, 0), scale_range=(1, 1), seed=1)
    out = layer({"image": image, "label": label})
    np.testing.assert_allclose(np_(out["image"]), image, atol=1e-5)
    np.testing.assert_array_equal(np_(out["label"]), label)
    flip = A.RandomFlip(axes=(0, 1, 2), probability=0.0, seed=1)({"image": image, "label": label})
    np.testing.assert_array_equal(np_(flip["image"]), image)


def test_flip_is_exact_reversal(rng):
    image, label = _sphere_batch(rng)
    out = A.RandomFlip(axes=(2,), probability=1.0, seed=1)({"image": image, "label": label})
    np.testing.assert_array_equal(np_(out["image"]), image[:, :, :, ::-1])
    np.testing.assert_array_equal(np_(out["label"]), label[:, :, :, ::-1])


def test_rotation_by_90_degrees_about_z_matches_rot90(rng):
    image = rng.normal(size=(1, 5, 9, 9, 1)).astype(np.float32)
    layer = A.RandomAffine(probability=1.0, rotation_degrees=(90, 0, 0), scale_range=(1, 1), seed=0)
    layer.uniform = lambda shape, low, high: ops.ones(shape) * high  # force the +90 degree draw
    out = np_(layer({"image": image})["image"])[0, ..., 0]
    candidates = [np.rot90(image[0, ..., 0], k, axes=(1, 2)) for k in (1, 3)]
    assert min(np.abs(out - c).max() for c in candidates) < 1e-4


@pytest.mark.parametrize("label_interpolation", ["nearest", "linear_argmax"])
def test_deformation_keeps_image_and_label_aligned(rng, label_interpolation):
    image, label = _sphere_batch(rng, num_classes=3)
    image = (label > 0).astype(np.float32)[..., None]  # intensity encodes the label
    layer = A.RandomSpatialTransform(elastic_probability=1.0, mesh_size=(2, 2, 2), sigma=3.0,
                                     affine_probability=1.0, rotation_degrees=(20, 20, 20),
                                     scale_range=(0.9, 1.1), label_interpolation=label_interpolation,
                                     num_classes=3, seed=3)
    out = layer({"image": image, "label": label})
    warped_fg = np_(out["image"])[..., 0] > 0.5
    new_label = np_(out["label"])
    assert not np.array_equal(new_label, label)  # it did move
    for b in range(2):
        fg = new_label[b] > 0
        dice = 2 * np.sum(fg & warped_fg[b]) / (fg.sum() + warped_fg[b].sum())
        assert dice > 0.98, dice
        assert set(np.unique(new_label[b])) <= set(np.unique(label[b]))
        ratio = fg.sum() / (label[b] > 0).sum()
        assert 0.6 < ratio < 1.6, ratio


def test_small_sigma_changes_volume_little(rng):
    image, label = _sphere_batch(rng, num_classes=2)
    out = A.RandomElasticDeformation(probability=1.0, sigma=1.0, seed=5)({"image": image, "label": label})
    new = np_(out["label"])
    assert not np.array_equal(new, label)
    for b in range(2):
        assert abs(new[b].sum() / label[b].sum() - 1) < 0.1
    assert new.dtype == label.dtype


def test_elastic_axes_switch_off_a_component(rng):
    layer = A.RandomElasticDeformation(probability=1.0, sigma=4.0, axes=(False, True, True), seed=2)
    coords = np_(layer.coordinates(2, (8, 12, 10)))
    grid = np_(warp.identity_grid((8, 12, 10)))
    np.testing.assert_allclose(coords[..., 0], np.broadcast_to(grid[..., 0], coords.shape[:-1]), atol=1e-5)
    assert np.abs(coords[..., 1:] - grid[..., 1:]).max() > 0.5


def test_probability_selects_samples(rng):
    image = rng.normal(size=(64, 4, 4, 4, 1)).astype(np.float32)
    out = np_(A.RandomGaussianNoise(probability=0.5, max_std=1.0, seed=0)({"image": image})["image"])
    changed = np.any(out != image, axis=(1, 2, 3, 4))
    assert 16 <= changed.sum() <= 48


# ---------------------------------------------------------------- intensity transforms

def test_histogram_matching_maps_quantiles_and_is_monotone(rng):
    source = rng.gamma(2.0, 1.0, size=(1, 16, 16, 16, 1)).astype(np.float32)
    target = rng.normal(3.0, 0.5, size=(16, 16, 16, 1)).astype(np.float32)
    table = A.quantile_table([target], num_landmarks=11)
    np.testing.assert_allclose(table[0], np.quantile(target, np.linspace(0.01, 0.99, 11)), rtol=1e-5)
    layer = A.HistogramMatching(reference_quantiles=table, probability=1.0, seed=0)
    out = np_(layer({"image": source})["image"])
    # A monotone map carries quantiles along: at the landmark levels the output's quantiles
    # are the target's; between landmarks the map is linear, so only close.
    landmarks = np.linspace(0.01, 0.99, 11)
    np.testing.assert_allclose(np.quantile(out, landmarks), np.quantile(target, landmarks), atol=2e-3)
    between = np.linspace(0.05, 0.95, 7)
    np.testing.assert_allclose(np.quantile(out, between), np.quantile(target, between), atol=0.1)
    order = np.argsort(source.ravel())
    assert np.all(np.diff(out.ravel()[order]) >= -1e-6)


def test_histogram_matching_within_batch(rng):
    a = rng.normal(0, 1, size=(16, 16, 16, 1))
    b = rng.normal(10, 3, size=(16, 16, 16, 1))
    batch = np.stack([a, b]).astype(np.float32)
    out = np_(A.HistogramMatching(probability=1.0, seed=0)({"image": batch})["image"])
    assert abs(out[0].mean() - 10) < 0.3 and abs(out[1].mean()) < 0.3


def test_intensity_layers_keep_labels_and_change_images(rng):
    image, label = _sphere_batch(rng)
    for layer in (A.RandomGamma(1.0, seed=1), A.RandomGamma(1.0, invert=True, seed=1),
                  A.RandomBrightnessContrast(1.0, seed=1), A.RandomGaussianNoise(1.0, seed=1),
                  A.RandomGaussianBlur(1.0, seed=1), A.RandomLowResolution(1.0, (0.5, 0.6), seed=1)):
        out = layer({"image": image, "label": label})
        np.testing.assert_array_equal(np_(out["label"]), label)
        assert np.abs(np_(out["image"]) - image).max() > 1e-3, type(layer).__name__
        assert np.isfinite(np_(out["image"])).all()


def test_blur_preserves_a_constant_and_the_mean(rng):
    constant = np.full((1, 6, 6, 6, 1), 2.5, np.float32)
    out = np_(A.RandomGaussianBlur(1.0, sigma_range=(1.0, 1.0), seed=0)({"image": constant})["image"])
    np.testing.assert_allclose(out, 2.5, rtol=1e-5)


@pytest.mark.parametrize("invert", [False, True])
def test_gamma_matches_its_formula(rng, invert):
    image = rng.normal(size=(2, 5, 6, 7, 1)).astype(np.float32)
    out = np_(A.RandomGamma(1.0, gamma_range=(2.0, 2.0), invert=invert, seed=0)({"image": image})["image"])
    low = image.min(axis=(1, 2, 3, 4), keepdims=True)
    span = image.max(axis=(1, 2, 3, 4), keepdims=True) - low
    unit = (image - low) / span
    expected = (1 - (1 - unit) ** 2 if invert else unit ** 2) * span + low
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)
    assert (out.mean() > image.mean()) == invert  # gamma 2 darkens; inverted, it brightens


@pytest.mark.parametrize("invert", [False, True])
def test_gamma_retain_stats_restores_each_samples_mean_and_std(rng, invert):
    image = (rng.gamma(2.0, size=(2, 5, 6, 7, 1)) * np.array([1.0, 4.0]).reshape(2, 1, 1, 1, 1)
             + np.array([-3.0, 5.0]).reshape(2, 1, 1, 1, 1)).astype(np.float32)
    plain = np_(A.RandomGamma(1.0, gamma_range=(2.0, 2.0), invert=invert, seed=0)({"image": image})["image"])
    kept = np_(A.RandomGamma(1.0, gamma_range=(2.0, 2.0), invert=invert, retain_stats=True,
                             seed=0)({"image": image})["image"])
    axes = (1, 2, 3, 4)
    # the gamma-transformed sample, shifted and scaled by numpy to the input's moments
    expected = ((plain - plain.mean(axes, keepdims=True)) / plain.std(axes, keepdims=True)
                * image.std(axes, keepdims=True) + image.mean(axes, keepdims=True))
    np.testing.assert_allclose(kept, expected, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(kept.mean(axes), image.mean(axes), atol=1e-4)
    np.testing.assert_allclose(kept.std(axes), image.std(axes), rtol=1e-4)
    assert np.abs(plain.mean(axes) - image.mean(axes)).min() > 0.1  # without it the mean moves
    assert np.abs(kept - image).max() > 0.1  # and the shape of the histogram still changes


def _lowres_brute_force(volume, zoom):
    """Nearest-neighbour down to round(zoom * n) cells per axis, an explicit coarse array,
    then trilinear back up voxel by voxel with the coarse edges held constant."""
    n = volume.shape
    m = [max(int(np.round(np.float32(zoom) * k)), 1) for k in n]
    coarse = np.empty(m, volume.dtype)
    for j in np.ndindex(*m):
        coarse[j] = volume[tuple(min(int(np.floor((j[a] + 0.5) * n[a] / m[a])), n[a] - 1) for a in range(3))]
    out = np.empty_like(volume)
    for x in np.ndindex(*n):
        c = [min(max((x[a] + 0.5) * m[a] / n[a] - 0.5, 0.0), m[a] - 1.0) for a in range(3)]
        lo = [int(np.floor(v)) for v in c]
        value = 0.0
        for corner in np.ndindex(2, 2, 2):
            index, weight = [], 1.0
            for a in range(3):
                t = c[a] - lo[a]
                index.append(min(lo[a] + corner[a], m[a] - 1))
                weight *= t if corner[a] else 1.0 - t
            value += weight * coarse[tuple(index)]
        out[x] = value
    return out


def test_low_resolution_matches_brute_force(rng):
    from vnet_tf.augment.intensity import simulate_low_resolution
    image = rng.normal(size=(3, 9, 12, 10, 1)).astype(np.float32)
    zooms = np.array([0.5, 0.7, 0.34], np.float32)
    out = np_(simulate_low_resolution(ops.convert_to_tensor(image), ops.convert_to_tensor(zooms)))
    for b, zoom in enumerate(zooms):
        np.testing.assert_allclose(out[b, ..., 0], _lowres_brute_force(image[b, ..., 0], zoom), atol=1e-5)
    same = np_(simulate_low_resolution(ops.convert_to_tensor(image), ops.convert_to_tensor(np.ones(3, np.float32))))
    np.testing.assert_array_equal(same, image)  # zoom 1: the same grid, nothing changes
    assert np.abs(out[0] - image[0]).max() > 0.5


def test_low_resolution_keeps_constants_and_range(rng):
    constant = np.full((1, 8, 8, 8, 1), -1.5, np.float32)
    layer = A.RandomLowResolution(1.0, (0.5, 0.5), seed=0)
    np.testing.assert_allclose(np_(layer({"image": constant})["image"]), -1.5, rtol=1e-6)
    image = rng.uniform(2.0, 3.0, size=(2, 8, 8, 8, 1)).astype(np.float32)
    out = np_(layer({"image": image})["image"])
    assert out.min() >= 2.0 - 1e-6 and out.max() <= 3.0 + 1e-6  # interpolation never overshoots
    with pytest.raises(ValueError, match="zoom_range"):
        A.RandomLowResolution(zoom_range=(0.5, 1.5))


# ---------------------------------------------------------------- composition, graph, config

def _full_config():
    return A.AugmentConfig(histogram_probability=0.5, elastic_probability=0.5, elastic_sigma=2.0,
                           affine_probability=0.5, noise_probability=0.5, blur_probability=0.5,
                           brightness_contrast_probability=0.5, gamma_probability=0.5,
                           gamma_inverted_probability=0.5, gamma_retain_stats=True, lowres_probability=0.5,
                           flip_axes=(0, 1, 2))


def test_all_layers_run_in_tf_function_and_tf_data(rng):
    image, label = _sphere_batch(rng)
    aug = A.build_augmentation(_full_config(), num_classes=3, seed=0)
    out = tf.function(aug)({"image": image, "label": label})
    assert out["image"].shape == image.shape and out["label"].dtype == tf.int32
    batched = tf.data.Dataset.from_tensor_slices({"image": image, "label": label}).batch(2).map(aug)
    unbatched = tf.data.Dataset.from_tensor_slices({"image": image, "label": label}).map(aug)
    assert next(iter(batched))["image"].shape == image.shape
    assert next(iter(unbatched))["label"].shape == label.shape[1:]


def test_same_seed_same_draws(rng):
    image, label = _sphere_batch(rng)
    a = A.build_augmentation(_full_config(), num_classes=3, seed=7)({"image": image, "label": label})
    b = A.build_augmentation(_full_config(), num_classes=3, seed=7)({"image": image, "label": label})
    np.testing.assert_array_equal(np_(a["image"]), np_(b["image"]))


def test_configs_round_trip():
    aug = A.build_augmentation(_full_config(), num_classes=3, reference_quantiles=np.zeros((2, 11)) + np.arange(11), seed=3)
    for layer in aug.transforms + [aug]:
        clone = type(layer).from_config(layer.get_config())
        assert clone.get_config() == layer.get_config()
    restored = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(aug))
    assert [type(t) for t in restored.transforms] == [type(t) for t in aug.transforms]
    assert A.build_augmentation(A.AugmentConfig()) is None
    paper = A.AugmentConfig.paper()
    assert paper.elastic_probability == 1 and paper.histogram_probability == 1 and paper.elastic_sigma == 15


@pytest.mark.parametrize("kwargs, words", [
    (dict(elastic_probability=1.5), "elastic_probability"),
    (dict(mesh_size=(2, 2)), "mesh_size"),
    (dict(scale_range=(1.2, 0.8)), "scale_range"),
    (dict(label_interpolation="cubic"), "label_interpolation"),
    (dict(label_interpolation="linear_argmax"), "num_classes"),
    (dict(fill_mode="wrap"), "fill_mode"),
])
def test_bad_settings_are_named(kwargs, words):
    with pytest.raises(ValueError, match=words):
        A.RandomSpatialTransform(**kwargs)


def test_bad_inputs_are_named():
    with pytest.raises(ValueError, match="image"):
        A.RandomFlip()(np.zeros((4, 4, 4), np.float32))
    with pytest.raises(ValueError, match="reference_quantiles"):
        A.HistogramMatching(reference_quantiles=np.zeros((3, 4)))


def test_the_registry_builds_each_enabled_transform_once_in_order_with_name_seeds():
    """Each entry of TRANSFORMS is switched on by its own settings alone, gets the seed its
    name gives, and the chain keeps the registry's order."""
    cases = {"histogram_matching": dict(histogram_probability=0.5), "spatial": dict(affine_probability=0.5),
             "noise": dict(noise_probability=0.5), "blur": dict(blur_probability=0.5),
             "brightness_contrast": dict(brightness_contrast_probability=0.5),
             "low_resolution": dict(lowres_probability=0.5), "inverted_gamma": dict(gamma_inverted_probability=0.5),
             "gamma": dict(gamma_probability=0.5), "flip": dict(flip_axes=(2,))}
    assert [entry.name for entry in A.TRANSFORMS] == list(cases)
    assert A.build_augmentation(A.AugmentConfig(), seed=3) is None
    for entry in A.TRANSFORMS:
        chain = A.build_augmentation(A.AugmentConfig(**cases[entry.name]), seed=3)
        assert len(chain.transforms) == 1, entry.name
        assert chain.transforms[0].seed == A.transform_seed(3, entry.name)
    everything = {k: v for settings in cases.values() for k, v in settings.items()}
    chain = A.build_augmentation(A.AugmentConfig(**everything), seed=3)
    assert [layer.seed for layer in chain.transforms] == [A.transform_seed(3, e.name) for e in A.TRANSFORMS]
    seeds = {A.transform_seed(3, e.name) for e in A.TRANSFORMS} | {A.transform_seed(4, e.name) for e in A.TRANSFORMS}
    assert len(seeds) == 2 * len(A.TRANSFORMS)  # distinct across transforms and run seeds
    assert [layer.compile_with_xla for layer in chain.transforms] == [e.name == "spatial" for e in A.TRANSFORMS]
