"""V-Net builder: shapes, parameter counts, options, errors, serialisation, learning."""

import ast

import keras
import numpy as np
import pytest

from conftest import REPO
from vnet_tf.model.losses import DiceLoss, dice_per_class
from vnet_tf.model.vnet import (SpatialShapeCheck, TileChannels, VNetConfig, build_vnet,
                           check_spatial_shape)
from vnet_tf.data.synthetic import sphere_batch

TINY = dict(base_width=4, depth=3, kernel_size=3)


def _conv(k, cin, cout):
    return k ** 3 * cin * cout + cout


def hand_count(in_ch, classes, widths, left, right, k, caffe=False):
    """Parameters of a PReLU V-Net counted from its layer shapes alone."""
    total, channels = 0, in_ch
    for level, width in enumerate(widths):
        for _ in range(left[level]):
            total += _conv(k, channels, width) + width  # conv + per-channel PReLU
            channels = width
        # caffe: the last conv's PReLU moves after the residual sum (same count)
        if level < len(widths) - 1:
            total += _conv(2, width, 2 * width) + 2 * width  # down conv + PReLU
            channels = 2 * width
    for i, level in enumerate(reversed(range(len(widths) - 1))):
        skip = widths[level]
        total += _conv(2, channels, skip) + skip  # transposed conv + PReLU
        channels = 2 * skip
        total += right[i] * (_conv(k, channels, channels) + channels)
    if caffe:
        total += _conv(k, channels, classes) + classes
        channels = classes
    return total + _conv(1, channels, classes)


def test_paper_parameter_count_matches_hand_count():
    model = build_vnet()
    expected = hand_count(1, 2, [16, 32, 64, 128, 256], (1, 2, 3, 3, 3), (3, 3, 2, 1), 5)
    assert model.count_params() == expected == 65_175_314


def test_caffe_parameter_count_matches_hand_count():
    model = build_vnet(VNetConfig.caffe())
    expected = hand_count(1, 2, [16, 32, 64, 128, 256], (1, 1, 2, 3, 3), (3, 2, 1, 1), 5, caffe=True)
    assert model.count_params() == expected
    assert 61e6 < expected < 63e6  # "about 62 M parameters" (official code)


def test_caffe_variant_layers():
    model = build_vnet(VNetConfig.caffe(**TINY))
    names = [layer.name for layer in model.layers]
    assert "head_conv" in names and "head_conv_prelu" in names
    assert "left1_add_prelu" in names  # activation after the residual sum
    assert "left1_conv0_prelu" not in names  # the stage's last conv has none (1 conv here)
    paper = [layer.name for layer in build_vnet(**TINY).layers]
    assert "left1_conv1_prelu" in paper and "left1_add_prelu" not in paper


@pytest.mark.parametrize("width,depth,shape,batch", [
    (4, 3, (8, 16, 24), 1),
    (8, 4, (32, 32, 32), 2),
    (6, 2, (2, 4, 6), 3),
])
def test_shapes_and_dtypes(width, depth, shape, batch):
    model = build_vnet(base_width=width, depth=depth, kernel_size=3, num_classes=3)
    out = model(np.random.rand(batch, *shape, 1).astype("float32"))
    assert tuple(out.shape) == (batch, *shape, 3)
    assert out.dtype == "float32"
    np.testing.assert_allclose(keras.ops.convert_to_numpy(keras.ops.sum(out, -1)), 1.0, rtol=1e-5)


def test_one_model_runs_on_patches_and_whole_volumes():
    model = build_vnet(**TINY)
    for shape in [(8, 8, 8), (16, 32, 24)]:
        assert tuple(model(np.zeros((1, *shape, 1), "float32")).shape) == (1, *shape, 2)


def test_stage1_residual_tiles_along_channels():
    x = np.arange(2 * 3 * 2, dtype="float32").reshape(1, 2, 3, 1, 2)  # 2 channels
    tiled = keras.ops.convert_to_numpy(TileChannels(3)(x))
    assert tiled.shape == (1, 2, 3, 1, 6)
    np.testing.assert_array_equal(tiled, np.concatenate([x, x, x], axis=-1))


def test_input_channels_tile_or_project():
    tiled = build_vnet(input_channels=2, **TINY)
    assert tiled.get_layer("left0_tile").repeats == 2
    projected = build_vnet(input_channels=3, **TINY)  # 3 does not divide 4
    assert projected.get_layer("left0_projection").kernel.shape == (1, 1, 1, 3, 4)
    assert tuple(projected(np.zeros((1, 8, 8, 8, 3), "float32")).shape) == (1, 8, 8, 8, 2)


def test_prelu_per_channel_with_initial_slope():
    model = build_vnet(**TINY)
    prelu = model.get_layer("left1_conv0_prelu")
    alpha = keras.ops.convert_to_numpy(prelu.alpha)
    assert alpha.shape == (1, 1, 1, 8)
    np.testing.assert_allclose(alpha, 0.25)


@pytest.mark.parametrize("norm,layer_type", [
    ("batch", keras.layers.BatchNormalization),
    ("instance", keras.layers.GroupNormalization),
    ("group", keras.layers.GroupNormalization),
])
def test_normalization_options(norm, layer_type):
    model = build_vnet(normalization=norm, norm_groups=2, **TINY)
    norms = [l for l in model.layers if isinstance(l, layer_type)]
    assert norms
    if norm == "instance":
        assert all(l.groups == l.input.shape[-1] for l in norms)
    if norm == "group":
        assert all(l.groups == 2 for l in norms)


@pytest.mark.parametrize("activation", ["relu", "elu"])
def test_activation_options(activation):
    model = build_vnet(activation=activation, **TINY)
    assert not any(isinstance(l, keras.layers.PReLU) for l in model.layers)
    assert model.get_layer(f"left0_conv0_{activation}") is not None


def test_dropout_option_active_only_in_training():
    model = build_vnet(dropout=0.5, **TINY)
    assert any(isinstance(l, keras.layers.SpatialDropout3D) for l in model.layers)
    x = np.random.rand(1, 8, 8, 8, 1).astype("float32")
    a, b = model(x, training=False), model(x, training=False)
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(a), keras.ops.convert_to_numpy(b))
    c = model(x, training=True)
    assert not np.allclose(keras.ops.convert_to_numpy(a), keras.ops.convert_to_numpy(c))


def test_custom_conv_counts():
    model = build_vnet(convs_left=(2, 1, 1), convs_right=(1, 2), **TINY)
    names = {layer.name for layer in model.layers}
    assert {"left0_conv1", "right0_conv1"} <= names
    assert "left1_conv1" not in names and "right1_conv1" not in names


@pytest.mark.parametrize("policy", ["mixed_float16", "mixed_bfloat16"])
def test_mixed_precision_output_stays_float32(policy):
    model = build_vnet(dtype_policy=policy, **TINY)
    assert model.get_layer("left0_conv0").compute_dtype == policy.split("_")[1]
    out = model(np.random.rand(1, 8, 8, 8, 1).astype("float32"))
    assert out.dtype == "float32"
    assert np.isfinite(keras.ops.convert_to_numpy(out)).all()


@pytest.mark.parametrize("kwargs,message", [
    (dict(base_width=-4), "base_width must be an integer >= 1, got -4"),
    (dict(depth=0), "depth must be an integer >= 1, got 0"),
    (dict(activation="swish"), "activation must be one of ('prelu', 'relu', 'elu'), got 'swish'"),
    (dict(kernel_size=4), "kernel_size must be odd"),
    (dict(num_classes=1), "num_classes must be an integer >= 2, got 1"),
    (dict(normalization="layer"), "normalization must be one of"),
    (dict(dropout=1.0), "dropout must be in [0, 1), got 1.0"),
    (dict(convs_left=(1, 2)), "convs_left needs 5 entries"),
    (dict(convs_right=(1, 1, 0, 1)), "each entry of convs_right must be an integer >= 1, got 0"),
    (dict(variant="unet"), "variant must be one of ('paper', 'caffe'), got 'unet'"),
    (dict(dtype_policy="float8"), "dtype_policy must name a Keras dtype policy"),
])
def test_bad_arguments(kwargs, message):
    with pytest.raises(ValueError) as err:
        build_vnet(**kwargs)
    assert message in str(err.value)


def test_size_not_divisible():
    with pytest.raises(ValueError, match=r"spatial size 30 along the height axis is not divisible by 16"):
        check_spatial_shape((32, 30, 32), depth=5)
    check_spatial_shape((16, None, 48), depth=5)  # unknown sizes pass
    model = build_vnet(**TINY)
    with pytest.raises(ValueError, match="spatial size 10 along the width axis is not divisible by 4"):
        model(np.zeros((1, 8, 8, 10, 1), "float32"))


def test_keras_save_load_round_trip(tmp_path):
    model = build_vnet(VNetConfig.caffe(**TINY, normalization="group", norm_groups=2))
    path = tmp_path / "vnet.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)
    x = np.random.rand(2, 8, 8, 8, 1).astype("float32")
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(model(x)),
                                  keras.ops.convert_to_numpy(loaded(x)))


@pytest.mark.parametrize("layer", [TileChannels(4, name="t"), SpatialShapeCheck(3, name="s")])
def test_custom_layer_config_round_trip(layer):
    clone = layer.__class__.from_config(layer.get_config())
    assert clone.get_config() == layer.get_config()
    restored = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(layer))
    assert type(restored) is type(layer) and restored.get_config() == layer.get_config()


def test_model_module_imports_no_tensorflow():
    for module in ("model/vnet.py", "model/losses.py"):
        tree = ast.parse((REPO / "vnet_tf" / module).read_text())
        imported = {alias.name.split(".")[0] for node in ast.walk(tree)
                    if isinstance(node, (ast.Import, ast.ImportFrom))
                    for alias in getattr(node, "names", [])}
        imported |= {node.module.split(".")[0] for node in ast.walk(tree)
                     if isinstance(node, ast.ImportFrom) and node.module}
        assert "tensorflow" not in imported, module


def test_tiny_vnet_learns_a_sphere():
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    model = build_vnet(base_width=8, depth=3, kernel_size=3)
    model.compile(optimizer=keras.optimizers.Adam(3e-3), loss=DiceLoss(include_background=False))
    images, labels = sphere_batch(64, (32, 32, 32), rng)
    model.fit(images, labels, batch_size=2, epochs=2, verbose=0)  # 64 steps
    test_images, test_labels = sphere_batch(8, (32, 32, 32), rng)
    probabilities = model.predict(test_images, verbose=0)
    hard = keras.ops.one_hot(np.argmax(probabilities, -1), 2)
    dice = keras.ops.convert_to_numpy(dice_per_class(test_labels, hard, smooth=0))[:, 1]
    print('sphere dice', dice.mean())
    assert dice.mean() > 0.9, dice
