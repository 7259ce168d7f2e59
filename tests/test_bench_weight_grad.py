"""The weight-gradient formulations that bench/bench_weight_grad.py times against oneDNN's
kernel must compute the same gradient: each against TensorFlow's own gradient of the
convolution (tf.GradientTape through tf.nn.conv3d), on small shapes with odd sizes."""

import numpy as np
import pytest

from conftest import load_bench


@pytest.mark.parametrize("shape, kernel", [((2, 6, 10, 4, 3, 5), 3), ((1, 8, 6, 7, 2, 3), 5)])
def test_the_benchmarked_weight_gradients_are_the_convolutions(shape, kernel):
    import tensorflow as tf
    bench = load_bench("bench_weight_grad")
    n, d, h, w, ci, co = shape
    rng = np.random.default_rng(0)
    x = tf.constant(rng.normal(size=(n, d, h, w, ci)), tf.float32)
    dy = tf.constant(rng.normal(size=(n, d, h, w, co)), tf.float32)
    weights = tf.Variable(rng.normal(size=(kernel, kernel, kernel, ci, co)).astype(np.float32))
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(tf.nn.conv3d(x, weights, [1] * 5, "SAME") * dy)
    expected = tape.gradient(loss, weights).numpy()
    scale = np.abs(expected).max()
    for got in (bench.matmul_weight_gradient(x, dy, kernel), bench.tiled_weight_gradient(x, dy, kernel, tile_max=3)):
        assert got.shape == expected.shape
        np.testing.assert_allclose(got.numpy() / scale, expected / scale, atol=1e-5)
