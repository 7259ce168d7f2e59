import math

import keras
import numpy as np
import pytest

from vnet_tf.data.cases import Case, fold_of, split_cases
from vnet_tf.model.checkpoint import read_meta, restore_checkpoint, save_checkpoint
from vnet_tf.training.optim import OptimizerConfig, WarmupSchedule, make_optimizer


def _lr(schedule, step):
    return float(keras.ops.convert_to_numpy(schedule(step)))


def test_schedules_match_their_formulas():
    step = WarmupSchedule("step", 1e-4, 100_000, decay_steps=25_000, decay_factor=0.1)
    assert _lr(step, 0) == pytest.approx(1e-4) and _lr(step, 24_999) == pytest.approx(1e-4)
    assert _lr(step, 25_000) == pytest.approx(1e-5) and _lr(step, 50_001) == pytest.approx(1e-6)
    poly = WarmupSchedule("poly", 0.01, 1000, poly_power=0.9)
    assert _lr(poly, 500) == pytest.approx(0.01 * 0.5 ** 0.9, rel=1e-5)
    cosine = WarmupSchedule("cosine", 0.01, 1000, warmup_steps=10)
    assert _lr(cosine, 0) == pytest.approx(0.01 * 0.1 * 0.5 * (1 + math.cos(0)), rel=1e-5)
    assert _lr(cosine, 500) == pytest.approx(0.005, rel=1e-4)
    assert _lr(cosine, 1000) == pytest.approx(0.0, abs=1e-9)


def test_optimizers_and_bad_values():
    assert isinstance(make_optimizer(OptimizerConfig("sgd", 1e-4, momentum=0.99), 10), keras.optimizers.SGD)
    assert isinstance(make_optimizer(OptimizerConfig("adamw"), 10), keras.optimizers.AdamW)
    assert isinstance(make_optimizer(OptimizerConfig(), 10, mixed_float16=True), keras.optimizers.LossScaleOptimizer)
    with pytest.raises(ValueError, match="optimizer"):
        OptimizerConfig("rmsprop").validate()
    with pytest.raises(ValueError, match="lr_schedule"):
        OptimizerConfig(schedule="exp").validate()


def test_checkpoint_round_trip_and_mismatch(tmp_path):
    a = [keras.Variable(np.arange(6, dtype="float32").reshape(2, 3)), keras.Variable(np.ones(4, "float32"))]
    path = save_checkpoint(tmp_path / "c.npz", {"model": a}, {"step": 7})
    assert read_meta(path) == {"step": 7} and read_meta(tmp_path / "none.npz") is None
    b = [keras.Variable(np.zeros((2, 3), "float32")), keras.Variable(np.zeros(4, "float32"))]
    meta, count = restore_checkpoint(path, {"model": b})
    assert count == 2 and meta["step"] == 7
    np.testing.assert_array_equal(b[0].numpy(), a[0].numpy())
    with pytest.raises(ValueError, match="missing"):
        restore_checkpoint(path, {"model": b + [keras.Variable(np.zeros(1, "float32"))]})
    assert [p.name for p in tmp_path.iterdir()] == ["c.npz"]  # no temporary file left


def test_failed_save_keeps_the_previous_checkpoint(tmp_path):
    good = [keras.Variable(np.ones(3, "float32"))]
    path = save_checkpoint(tmp_path / "c.npz", {"model": good}, {"step": 1})

    class Broken:
        path = "broken"
        shape = (3,)

        def numpy(self):
            raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        save_checkpoint(path, {"model": [Broken()]}, {"step": 2})
    assert read_meta(path)["step"] == 1 and [p.name for p in tmp_path.iterdir()] == ["c.npz"]


def test_folds_are_stable_and_disjoint():
    cases = [Case(f"case_{i:03d}", (), None) for i in range(100)]
    train, val = split_cases(cases, 5, 0)
    assert len(train) + len(val) == 100 and not {c.case_id for c in train} & {c.case_id for c in val}
    assert 10 <= len(val) <= 30
    assert [c.case_id for c in split_cases(cases[:50], 5, 0)[1]] == [c.case_id for c in val if c in cases[:50]]
    assert all(fold_of(c.case_id, 5) == 0 for c in val)


def test_fold_minus_one_trains_on_every_case_and_other_folds_are_refused():
    cases = [Case(f"case_{i:03d}", (), None) for i in range(20)]
    train, val = split_cases(cases, 5, -1)
    assert [c.case_id for c in train] == [c.case_id for c in cases] and val == []
    for fold in (-2, 5):
        with pytest.raises(ValueError, match=f"fold must be -1 .*got fold={fold}, num_folds=5"):
            split_cases(cases, 5, fold)
