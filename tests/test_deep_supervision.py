"""Deep supervision: heads share the V-Net's layers, targets are block class fractions,
the weighted loss matches its parts, and a training run keeps the heads out of the
deployed model while its checkpoint resumes them."""

import json

import keras
import numpy as np
import pytest
import tensorflow as tf

from conftest import run_train
from vnet_tf.model import deep_supervision as ds
from vnet_tf.model.losses import DiceCELoss
from vnet_tf.model.vnet import VNetConfig, vnet_network


@pytest.fixture(scope="module")
def tiny_network():
    """A V-Net as its registered builder returns it: the model and its decoder by level."""
    keras.utils.set_random_seed(0)
    return vnet_network(VNetConfig(base_width=4, depth=4, kernel_size=3, num_classes=3, normalization="instance"))


def test_heads_share_the_vnet_and_work_at_coarser_resolutions(tiny_network):
    train_model = ds.supervised_model(tiny_network, 2)
    x = np.random.default_rng(0).normal(size=(2, 32, 24, 16, 1)).astype("float32")
    outputs = train_model(x)
    assert [tuple(o.shape) for o in outputs] == [(2, 32, 24, 16, 3), (2, 16, 12, 8, 3), (2, 8, 6, 4, 3)]
    np.testing.assert_allclose(keras.ops.convert_to_numpy(outputs[0]),
                               keras.ops.convert_to_numpy(tiny_network.model(x)), rtol=1e-6, atol=1e-6)
    for head in outputs[1:]:
        np.testing.assert_allclose(keras.ops.convert_to_numpy(head).sum(-1), 1.0, rtol=1e-5)
    added = ds.head_variables(train_model, tiny_network.model)
    assert len(added) == 4 and len(train_model.variables) == len(tiny_network.model.variables) + 4
    assert len(tiny_network.model.outputs) == 1  # the V-Net itself is untouched


@pytest.mark.parametrize("levels", [0, 3, True, 1.0])
def test_levels_out_of_range_are_refused(tiny_network, levels):
    with pytest.raises(ValueError, match=r"deep supervision levels must be an integer in \[1, 2\] for the network 'vnet_paper' \(its decoder levels: \[0, 1, 2\]\)"):
        ds.supervised_model(tiny_network, levels)


def test_weights_halve_and_sum_to_one():
    assert ds.output_weights(0) == [1.0]
    w = ds.output_weights(2)
    assert np.isclose(sum(w), 1.0) and np.isclose(w[1] / w[0], 0.5) and np.isclose(w[2] / w[1], 0.5)
    assert ds.max_levels(4) == 2 and ds.max_levels(2) == 0


def test_targets_are_block_class_fractions():
    labels = np.random.default_rng(1).integers(0, 3, size=(2, 8, 4, 8))
    half, quarter = (keras.ops.convert_to_numpy(t) for t in ds.downsampled_targets(labels, 3, 2, rank=5))
    assert half.shape == (2, 4, 2, 4, 3) and quarter.shape == (2, 2, 1, 2, 3)
    # brute force: one block of the quarter-resolution target
    block = labels[1, 4:8, 0:4, 4:8]
    np.testing.assert_allclose(quarter[1, 1, 0, 1], [(block == c).mean() for c in range(3)], rtol=1e-6)
    np.testing.assert_allclose(half.sum(-1), 1.0, rtol=1e-6)


def test_multi_scale_loss_is_the_weighted_sum_and_trains_the_heads(tiny_network):
    train_model = ds.supervised_model(tiny_network, 2)
    rng = np.random.default_rng(2)
    x = rng.normal(size=(2, 16, 16, 16, 1)).astype("float32")
    labels = rng.integers(0, 3, size=(2, 16, 16, 16))
    loss_fn = DiceCELoss(include_background=False, reduction="none")
    weights = ds.output_weights(2)
    with tf.GradientTape() as tape:
        outputs = train_model(x, training=True)
        total = ds.multi_scale_loss(loss_fn, labels, outputs, weights)
    targets = [labels] + ds.downsampled_targets(labels, 3, 2)
    expected = sum(w * keras.ops.convert_to_numpy(loss_fn(t, o)) for w, t, o in zip(weights, targets, outputs))
    np.testing.assert_allclose(keras.ops.convert_to_numpy(total), expected, rtol=1e-6)
    assert total.shape == (2,)
    grads = tape.gradient(total, ds.head_variables(train_model, tiny_network.model))
    assert all(g is not None and float(tf.reduce_max(tf.abs(g))) > 0 for g in grads)
    with pytest.raises(ValueError, match="3 outputs but 2 weights"):
        ds.multi_scale_loss(loss_fn, labels, outputs, weights[:2])


def test_training_run_checkpoints_the_heads_and_deploys_without_them(tmp_path):
    args = ["--deep_supervision=1", "--batch_dice", "--dice_squared=false", "--validation_every=100",
            "--checkpoint_every=4"]
    first = run_train(tmp_path / "run", tmp_path / "cache", "--steps=4", *args)
    assert first.returncode == 0, first.stderr[-3000:]
    with np.load(tmp_path / "run" / "checkpoint.npz") as data:
        heads = sorted(k for k in data.files if k.startswith("deep_supervision/"))
    assert len(heads) == 2  # one head (kernel, bias) at depth 3; their exact resume: test_train.py's kill test
    config = json.loads((tmp_path / "run" / "config.json").read_text())["train"]
    assert config["deep_supervision"] == 1 and config["batch_dice"] and not config["dice_squared"]
    from vnet_tf.inference.run_folder import restore_model
    model, _ = restore_model(tmp_path / "run", "final")  # what evaluation and export use
    assert len(model.outputs) == 1 and not any(l.name.startswith("deep_supervision") for l in model.layers)
