"""Extension points: a loss or a network registered in a few lines (here, in the test) is a
valid ``--loss`` / ``--architecture`` choice, trains, and is recorded in ``config.json``, with
no other file touched; the registry refuses an unknown or repeated name."""

import json

import keras
import numpy as np
import pytest

from conftest import run_command, run_train
from vnet_tf.core.errors import UserError
from vnet_tf.core.registry import Registry
from vnet_tf.model.losses import one_hot_labels
from vnet_tf.model.networks import Network
from vnet_tf.model.registry import LOSSES, NETWORKS


class SquaredErrorLoss(keras.losses.Loss):
    """Mean squared error between the softmax probabilities and the one-hot labels."""

    def __init__(self, include_background=True, squared=True, batch=False, **kwargs):
        super().__init__(**kwargs)

    def call(self, y_true, y_pred):
        target = one_hot_labels(y_true, y_pred.shape[-1], rank=5)
        return keras.ops.mean(keras.ops.square(target - y_pred), axis=(1, 2, 3, 4))


def one_conv_network(config):
    """A 3x3x3 convolution and a 1x1x1 head: the least a registered network needs to be."""
    inputs = keras.Input((None, None, None, config.input_channels), name="image")
    features = keras.layers.Conv3D(config.base_width, 3, padding="same", activation="relu")(inputs)
    logits = keras.layers.Conv3D(config.num_classes, 1)(features)
    return Network(keras.Model(inputs, keras.layers.Softmax(dtype="float32")(logits), name="one_conv"),
                   {0: features})


for registry, name, entry in ((LOSSES, "squared_error", SquaredErrorLoss), (NETWORKS, "one_conv", one_conv_network)):
    if name not in registry.names:
        registry.register(name, entry)


def test_a_registered_loss_and_network_are_flag_choices_that_train_and_rebuild(tmp_path):
    run = tmp_path / "run"
    done = run_train(run, tmp_path / "cache", "--loss=squared_error", "--architecture=one_conv", "--steps=3")
    assert done.returncode == 0, done.stderr[-3000:]
    config = json.loads((run / "config.json").read_text())
    assert config["train"]["loss"] == "squared_error" and config["train"]["model"]["architecture"] == "one_conv"
    summary = json.loads((run / "summary.json").read_text())
    assert summary["steps"] == 3 and 0 < summary["final_loss"] < 1  # a squared error of probabilities
    from vnet_tf.inference.run_folder import restore_model
    model, _ = restore_model(run, "final")  # as evaluation, prediction and export rebuild it
    assert model.name == "one_conv" and len(model.layers) == 4


def test_unknown_and_repeated_names_are_refused():
    assert "squared_error" in LOSSES.names and "one_conv" in NETWORKS.names
    with pytest.raises(UserError, match=r"loss must be one of \('dice', 'dice_ce'.*got 'focal'"):
        LOSSES.check("focal")
    with pytest.raises(ValueError, match="registered already"):
        LOSSES.register("dice", SquaredErrorLoss)
    lazy = Registry("thing", {"zeros": "numpy:zeros"})
    assert lazy.get("zeros") is np.zeros  # imported on first use
    refused = run_command("train", "--flagfile=configs/demo.flags", "--loss=focal")
    assert refused.returncode == 2 and "--loss=focal: expected one of dice|dice_ce" in refused.stderr, \
        refused.stderr[-2000:]
