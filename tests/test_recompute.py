"""``recompute``: the normalisations and PReLUs recomputed in the backward pass give the same
outputs and gradients, the backward graph really recomputes them, inference never does, and a
run may be resumed with the setting changed."""

import json

import keras
import numpy as np
import pytest
import tensorflow as tf

from vnet_tf.core.errors import UserError
from vnet_tf.inference.run_folder import run_model_config
from vnet_tf.model.vnet import VNetConfig, build_vnet
from vnet_tf.training import loop
from vnet_tf.training.config import TrainConfig

TINY = dict(base_width=4, depth=2, kernel_size=3, normalization="instance", convs_left=(1, 2), convs_right=(1,))


def _gradients(model, x):
    @tf.function
    def grads(x):
        with tf.GradientTape() as tape:
            y = model(x, training=True)
            loss = tf.reduce_sum(y[..., 1] * x[..., 0])
        return y, tape.gradient(loss, model.trainable_variables)
    return grads, grads(x)


def _op_count(function, x, op_type):
    graph = function.get_concrete_function(x).graph
    count = sum(op.type == op_type for op in graph.get_operations())
    for fn in graph._functions.values():  # the gradient and recompute functions  pylint: disable=protected-access
        count += sum(node.op == op_type for node in fn.definition.node_def)
    return count


def test_same_outputs_and_gradients_and_the_backward_recomputes():
    x = tf.constant(np.random.default_rng(0).standard_normal((2, 8, 8, 8, 1)), tf.float32)
    keras.utils.set_random_seed(1)
    plain = build_vnet(**TINY)
    recomputed = build_vnet(**TINY, recompute=True)
    recomputed.set_weights(plain.get_weights())
    f_plain, (y_plain, g_plain) = _gradients(plain, x)
    f_rec, (y_rec, g_rec) = _gradients(recomputed, x)
    np.testing.assert_array_equal(y_plain.numpy(), y_rec.numpy())
    for a, b, var in zip(g_plain, g_rec, plain.trainable_variables):
        scale = float(np.abs(a.numpy()).max()) or 1.0
        np.testing.assert_allclose(b.numpy(), a.numpy(), rtol=0, atol=1e-6 * scale, err_msg=var.path)
    # PReLU's forward is relu(x) - alpha * relu(-x): recomputing it in the backward pass puts
    # more Relu ops in the graph than the forward pass alone has.
    assert _op_count(f_rec, x, "Relu") > _op_count(f_plain, x, "Relu")


def test_batch_norm_and_plain_activations_are_not_recomputed():
    """Batch norm would update its moving statistics twice; ReLU / ELU keep only their output,
    which the next convolution keeps anyway."""
    keras.utils.set_random_seed(1)
    model = build_vnet(**{**TINY, "normalization": "batch", "activation": "elu"}, recompute=True)
    plain = build_vnet(**{**TINY, "normalization": "batch", "activation": "elu"})
    plain.set_weights(model.get_weights())
    x = tf.constant(np.random.default_rng(0).standard_normal((2, 8, 8, 8, 1)), tf.float32)
    f_rec, _ = _gradients(model, x)
    f_plain, _ = _gradients(plain, x)
    for op in ("Elu", "EluGrad", "Mean"):
        assert _op_count(f_rec, x, op) == _op_count(f_plain, x, op), op
    moving = [(a, b) for a, b in zip(model.non_trainable_variables, plain.non_trainable_variables)
              if "moving_mean" in a.path]
    assert moving and not np.allclose(moving[0][0].numpy(), 0.0)  # updated once by the step above
    for a, b in moving:
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-6, atol=1e-7, err_msg=a.path)


def test_inference_never_recomputes_and_the_option_is_checked():
    run = {"model": {**VNetConfig(**TINY).__dict__, "recompute": True}}
    assert run_model_config(run).recompute is False
    with pytest.raises(ValueError, match="recompute must be True or False"):
        build_vnet(**TINY, recompute="yes")
    with pytest.raises(ValueError, match="float32 only.*keras#21448"):
        build_vnet(**TINY, recompute=True, dtype_policy="mixed_bfloat16")
    config = TrainConfig(data_dir="d", workdir="w", mixed_precision="mixed_float16",
                              model=VNetConfig(**TINY, recompute=True), patch_size_zyx=(16, 16, 16))
    with pytest.raises(ValueError, match="recompute works in float32 only, got dtype_policy 'mixed_float16'"):
        config.validate()


def test_a_run_resumes_with_recompute_changed_but_not_other_model_settings(tmp_path):
    settings = {"train": {"batch_size": 2, "model": {"dropout": 0.0, "recompute": False}}}
    (tmp_path / "config.json").write_text(json.dumps(settings))
    (tmp_path / loop.run_folder.CHECKPOINT).write_bytes(b"")
    loop._check_same_run(tmp_path / "config.json", {"batch_size": 2, "model": {"dropout": 0.0, "recompute": True}})
    old = {"train": {"batch_size": 2, "model": {"dropout": 0.0}}}  # a run written before the setting existed
    (tmp_path / "config.json").write_text(json.dumps(old))
    loop._check_same_run(tmp_path / "config.json", {"batch_size": 2, "model": {"dropout": 0.0, "recompute": False}})
    with pytest.raises(UserError, match=r"model differ"):
        loop._check_same_run(tmp_path / "config.json", {"batch_size": 2, "model": {"dropout": 0.5, "recompute": False}})
