"""The analytic FLOP counter against counts made by hand from the layer shapes."""

import vnet_tf  # noqa: F401  (oneDNN setting before TensorFlow)

import keras
import pytest

from conftest import load_bench
from vnet_tf.model.vnet import build_vnet

count_flops = load_bench("flops").count_flops


def test_one_conv_layer_matches_hand_count():
    inputs = keras.Input((None, None, None, 2))
    model = keras.Model(inputs, keras.layers.Conv3D(4, 3, padding="same")(inputs))
    count = count_flops(model, (8, 6, 4), batch=3)
    # 2 FLOPs x 27 taps x 2 in x 4 out, per output voxel, 3 x 8*6*4 output voxels
    forward = 2 * 27 * 2 * 4 * (3 * 8 * 6 * 4)
    assert count.forward == forward
    # the only conv reads the model input: its input gradient is not needed
    assert [layer.reads_model_input for layer in count.layers] == [True]
    assert count.backward == forward
    assert count.train == 2 * forward


def test_strided_conv_counts_output_voxels():
    inputs = keras.Input((None, None, None, 3))
    hidden = keras.layers.Conv3D(5, 1)(inputs)
    model = keras.Model(inputs, keras.layers.Conv3D(6, 2, strides=2)(hidden))
    count = count_flops(model, (8, 8, 8))
    first, second = 2 * 3 * 5 * 512, 2 * 8 * 5 * 6 * 64
    assert [layer.forward for layer in count.layers] == [first, second]
    assert count.train == 3 * (first + second) - first


def test_two_stage_vnet_matches_hand_count():
    model = build_vnet(depth=2, base_width=2, kernel_size=3, convs_left=(1, 1), convs_right=(1,),
                       num_classes=2, normalization="batch")
    d, h, w = 8, 8, 4
    n = d * h * w  # full-resolution voxels (batch 1)
    low = n // 8  # after the stride-2 down convolution
    hand = {
        "left0_conv0": 2 * 27 * 1 * 2 * n,  # 1 -> 2 channels, 3^3
        "left0_down": 2 * 8 * 2 * 4 * low,  # 2^3 stride 2, 2 -> 4, per output voxel
        "left1_conv0": 2 * 27 * 4 * 4 * low,  # bottom stage, 4 -> 4
        "right0_up": 2 * 8 * 4 * 2 * low,  # transposed 2^3, 4 -> 2, per input voxel
        "right0_conv0": 2 * 27 * 4 * 4 * n,  # concat(2 + 2) -> 4
        "head_logits": 2 * 1 * 4 * 2 * n,  # 1^3, 4 -> 2 classes
    }
    count = count_flops(model, (d, h, w), batch=2)
    assert {layer.name: layer.forward for layer in count.layers} == {k: 2 * v for k, v in hand.items()}
    assert count.forward == 2 * sum(hand.values())
    first = 2 * hand["left0_conv0"]
    assert [layer.name for layer in count.layers if layer.reads_model_input] == ["left0_conv0"]
    assert count.train == 3 * count.forward - first


def test_paper_vnet_forward_is_about_one_teraflop():
    # The paper network at 128x128x64 (the order of magnitude quoted in issue 8: ~1.0 TFLOP)
    count = count_flops(build_vnet(), (128, 128, 64))
    assert 0.95e12 < count.forward < 1.05e12


def test_bad_arguments_are_named():
    inputs = keras.Input((None, None, None, 1))
    no_conv = keras.Model(inputs, keras.layers.Activation("relu")(inputs))
    with pytest.raises(ValueError, match="no Conv3D"):
        count_flops(no_conv, (8, 8, 8))
    with pytest.raises(ValueError, match="spatial_shape"):
        count_flops(build_vnet(depth=2, base_width=2, kernel_size=3), (8, 8))
