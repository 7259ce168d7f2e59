"""The moving average of the weights: against a numpy recurrence, and through a training
run (validation, saved models, export)."""

import json

import numpy as np
import pytest

import vnet_tf  # noqa: F401  (oneDNN before TensorFlow)
import keras

from vnet_tf.model import averaging
from vnet_tf.model.checkpoint import restore_checkpoint
from conftest import run_train  # pylint: disable=wrong-import-order


def _numpy_average(values, momentum):
    average = values[0].copy()  # the initial weights
    for n, value in enumerate(values[1:]):
        m = min(momentum, (1 + n) / (10 + n))
        average = m * average + (1 - m) * value
    return average


def test_update_matches_a_numpy_recurrence_and_copies_non_trainable(rng):
    trained = keras.Variable(rng.normal(size=(3, 4)).astype("float32"))
    fixed = keras.Variable(np.zeros(5, "float32"), trainable=False)
    average = averaging.WeightAverage([trained, fixed], momentum=0.95)
    seen = [trained.numpy().copy()]
    for i in range(40):
        trained.assign(rng.normal(size=(3, 4)).astype("float32") + i)
        fixed.assign(np.full(5, float(i), "float32"))
        average.update()
        seen.append(trained.numpy().copy())
    np.testing.assert_allclose(average.averages[0].numpy(), _numpy_average(seen, 0.95), rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(average.averages[1].numpy(), np.full(5, 39.0))
    assert float(average.updates.numpy()) == 40.0
    # The warm-up is over after 170 updates: from then on the momentum is the one asked for.
    assert float(averaging.warmed_momentum(0.95, 200)) == pytest.approx(0.95)
    assert float(averaging.warmed_momentum(0.95, 0)) == pytest.approx(0.1)


def test_applied_swaps_the_average_in_and_back(rng):
    weights = keras.Variable(np.ones((2, 2), "float32"))
    average = averaging.WeightAverage([weights], momentum=0.5)
    weights.assign(np.full((2, 2), 3.0, "float32"))
    average.update()  # first update: momentum min(0.5, 1/10) = 0.1 -> 0.1 * 1 + 0.9 * 3
    with average.applied():
        np.testing.assert_allclose(weights.numpy(), np.full((2, 2), 2.8), rtol=1e-6)
    np.testing.assert_array_equal(weights.numpy(), np.full((2, 2), 3.0))
    with pytest.raises(RuntimeError):
        with average.applied():
            raise RuntimeError("validation failed")
    np.testing.assert_array_equal(weights.numpy(), np.full((2, 2), 3.0))  # put back after an error too


@pytest.mark.parametrize("momentum", [1.0, -0.1, 1.5])
def test_momentum_out_of_range_is_refused(momentum):
    with pytest.raises(ValueError, match=r"weight_average must be in \[0, 1\)"):
        averaging.check_momentum(momentum)


def _checkpoint_arrays(path, group):
    with np.load(path) as data:
        keys = sorted(k for k in data.files if k.split("/")[0] == group)
        return [data[k] for k in keys]


def test_a_run_saves_the_average_and_validates_with_it(tmp_path):
    from vnet_tf.inference.run_folder import restore_model
    args = ["--steps=6", "--weight_average=0.9", "--validation_every=6", "--checkpoint_every=3",
            "--deterministic"]
    cache = tmp_path / "cache"
    out = run_train(tmp_path / "run", cache, *args)
    assert out.returncode == 0, out.stderr[-3000:]
    run = tmp_path / "run"
    summary = json.loads((run / "summary.json").read_text())
    assert summary["weight_average"] == 0.9 and summary["steps"] == 6
    stored_average = _checkpoint_arrays(run / "checkpoint.npz", averaging.GROUP)
    stored_weights = _checkpoint_arrays(run / "checkpoint.npz", "model")
    assert len(stored_average) == len(stored_weights)
    assert any(not np.allclose(a, w) for a, w in zip(stored_average, stored_weights))

    raw, _ = restore_model(run, "final_raw")  # the training weights
    for variable, weight in zip(raw.variables, stored_weights):
        np.testing.assert_allclose(variable.numpy(), weight, rtol=1e-6, atol=1e-7)
    exported, _ = restore_model(run, "final")  # what evaluate.py scores and export.py serves: the average
    for variable, average in zip(exported.variables, stored_average):
        np.testing.assert_allclose(variable.numpy(), average, rtol=1e-6, atol=1e-7)
    best = _checkpoint_arrays(run / "best.npz", "model")  # validated (step 6) with the average in the model
    assert all(np.allclose(b, a, rtol=1e-6, atol=1e-7) for b, a in zip(best, stored_average))
    # The one validation (step 6) ran, and best.npz was written, with the average in the model.
    assert json.loads(str(np.load(run / "best.npz")["__meta__"]))["step"] == 6
    for best, average in zip(_checkpoint_arrays(run / "best.npz", "model"), stored_average):
        np.testing.assert_allclose(best, average, rtol=1e-6, atol=1e-7)

    # Exact resume of the average (a killed run resumed): tests/test_train.py's kill-and-resume test.
    assert float(_checkpoint_arrays(run / "checkpoint.npz", averaging.UPDATES_GROUP)[0][()]) == 6.0


def test_final_raw_needs_a_run_with_an_average(tiny_run):
    from vnet_tf.inference.run_folder import restore_model
    with pytest.raises(ValueError, match="final_raw.*weight_average"):
        restore_model(tiny_run[0], "final_raw")


def test_restore_of_the_average_group_into_a_fresh_model(tmp_path):
    """The ``weight_average`` group lines up with ``model.variables`` of a rebuilt model."""
    from vnet_tf.model.vnet import VNetConfig, build_vnet
    from vnet_tf.model.checkpoint import save_checkpoint
    model = build_vnet(VNetConfig(base_width=4, depth=2, kernel_size=3, normalization="instance"))
    average = averaging.WeightAverage(model.variables, 0.5)
    for v in model.trainable_variables:
        v.assign(v.numpy() + 1.0)
    average.update()
    save_checkpoint(tmp_path / "c.npz", {"model": model.variables, averaging.GROUP: average.averages}, {"step": 1})
    fresh = build_vnet(VNetConfig(base_width=4, depth=2, kernel_size=3, normalization="instance"))
    _, count = restore_checkpoint(tmp_path / "c.npz", {averaging.GROUP: fresh.variables}, only_groups=True)
    assert count == len(fresh.variables)
    for v, a in zip(fresh.variables, average.averages):
        np.testing.assert_array_equal(v.numpy(), a.numpy())
