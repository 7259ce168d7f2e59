"""Dice loss against a numpy reference and the paper's analytic gradient."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from vnet_tf.model.losses import DiceCELoss, DiceLoss, cross_entropy, dice_ce_loss, dice_loss, dice_per_class


def softmax(z):
    e = np.exp(z - z.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def numpy_dice_loss(labels, probs, include_background=True, squared=True, smooth=1e-5, weights=None):
    """Brute-force reference: a Python loop over samples and classes."""
    batch, classes = probs.shape[0], probs.shape[-1]
    losses = []
    for b in range(batch):
        dices, ws = [], []
        for c in range(0 if include_background else 1, classes):
            p = probs[b, ..., c].astype(np.float64).ravel()
            g = (labels[b].ravel() == c).astype(np.float64)
            den = (p @ p + g @ g) if squared else (p.sum() + g.sum())
            dices.append((2 * p @ g + smooth) / (den + smooth))
            ws.append(1.0 if weights is None else weights[len(ws)])
        losses.append(1 - np.dot(dices, ws) / np.sum(ws))
    return np.array(losses)


def np_(x):
    return keras.ops.convert_to_numpy(x)


@pytest.fixture
def case(rng):
    labels = rng.integers(0, 3, size=(3, 6, 5, 4))
    probs = softmax(rng.normal(size=(3, 6, 5, 4, 3))).astype("float32")
    return labels, probs


@pytest.mark.parametrize("include_background", [True, False])
@pytest.mark.parametrize("squared", [True, False])
@pytest.mark.parametrize("smooth", [0.0, 1.0])
def test_dice_matches_numpy_reference(case, include_background, squared, smooth):
    labels, probs = case
    got = np_(dice_loss(labels, probs, include_background=include_background, squared=squared, smooth=smooth))
    want = numpy_dice_loss(labels, probs, include_background, squared, smooth)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_class_weights_match_reference(case):
    labels, probs = case
    got = np_(dice_loss(labels, probs, include_background=False, class_weights=[3.0, 1.0]))
    np.testing.assert_allclose(got, numpy_dice_loss(labels, probs, False, weights=[3.0, 1.0]), rtol=1e-5)


def test_integer_one_hot_and_channel_labels_agree(case):
    labels, probs = case
    as_int = np_(dice_loss(labels, probs))
    np.testing.assert_allclose(np_(dice_loss(np.eye(3)[labels], probs)), as_int, rtol=1e-6)
    np.testing.assert_allclose(np_(dice_loss(labels[..., None], probs)), as_int, rtol=1e-6)


def test_loss_is_per_sample_mean_not_sum(case):
    labels, probs = case
    per_sample = numpy_dice_loss(labels, probs)
    assert np.isclose(float(np_(DiceLoss()(labels, probs))), per_sample.mean(), rtol=1e-5)


def test_gradient_matches_paper_formula(rng):
    """dD/dp_j = 2 [g_j (sum p^2 + sum g^2) - 2 p_j sum(p g)] / (sum p^2 + sum g^2)^2."""
    g = (rng.random((1, 4, 5, 6)) > 0.5).astype("float64")
    p = rng.random((1, 4, 5, 6)).astype("float32")
    p_var = tf.Variable(p)
    with tf.GradientTape() as tape:
        probs = tf.stack([1.0 - p_var, p_var], axis=-1)
        loss = dice_loss(g.astype("int32"), probs, include_background=False, smooth=0.0)
    grad = tape.gradient(loss, p_var).numpy().astype("float64")
    p64 = p.astype("float64")
    den = (p64 ** 2).sum() + (g ** 2).sum()
    analytic = 2 * (g * den - 2 * p64 * (p64 * g).sum()) / den ** 2
    np.testing.assert_allclose(grad, -analytic, rtol=1e-4, atol=1e-7)


def test_perfect_and_disjoint_predictions():
    labels = np.zeros((2, 8, 8, 8), "int32")
    labels[:, 2:6, 2:6, 2:6] = 1
    perfect = np.eye(2, dtype="float32")[labels]
    assert np_(dice_loss(labels, perfect)).max() <= 1e-6
    disjoint = np.eye(2, dtype="float32")[1 - labels]
    np.testing.assert_allclose(np_(dice_loss(labels, disjoint)), 1.0, atol=1e-6)


@pytest.mark.parametrize("smooth", [0.0, 1e-5])
def test_empty_ground_truth_and_prediction_are_finite(smooth):
    labels = np.zeros((1, 4, 4, 4), "int32")
    probs = np.eye(2, dtype="float32")[labels]  # predicts background everywhere
    value = np_(dice_loss(labels, probs, include_background=False, smooth=smooth))
    assert np.isfinite(value).all()
    with tf.GradientTape() as tape:
        var = tf.Variable(probs)
        loss = dice_loss(labels, var, include_background=False, smooth=smooth)
    assert np.isfinite(tape.gradient(loss, var).numpy()).all()


def test_same_values_in_half_precision(case):
    labels, probs = case
    reference = np_(dice_loss(labels, probs))
    for dtype in ("float16", "bfloat16"):
        half = keras.ops.cast(probs, dtype)
        np.testing.assert_allclose(np_(dice_loss(labels, half)), reference, atol=5e-3)
        assert dice_loss(labels, half).dtype == "float32"


def test_half_precision_sums_over_a_large_volume_do_not_overflow():
    labels = np.ones((1, 64, 64, 32), "int32")  # 131072 foreground voxels > float16 max
    probs = keras.ops.cast(np.eye(2, dtype="float32")[labels], "float16")
    assert np_(dice_loss(labels, probs)).max() < 1e-4


def test_loss_under_mixed_float16_model():
    from vnet_tf.model.vnet import build_vnet  # pylint: disable=import-outside-toplevel
    x = np.random.rand(2, 8, 8, 8, 1).astype("float32")
    labels = (x[..., 0] > 0.5).astype("int32")
    keras.utils.set_random_seed(3)
    ref_model = build_vnet(base_width=4, depth=3, kernel_size=3)
    mixed = build_vnet(base_width=4, depth=3, kernel_size=3, dtype_policy="mixed_float16")
    mixed.set_weights(ref_model.get_weights())
    ref, half = np_(DiceLoss()(labels, ref_model(x))), np_(DiceLoss()(labels, mixed(x)))
    assert np.isfinite(half) and abs(ref - half) < 1e-2


def test_dice_ce_matches_parts(case):
    labels, probs = case
    onehot = np.eye(3)[labels]
    ce_ref = -(onehot * np.log(probs)).sum(-1).mean(axis=(1, 2, 3))
    np.testing.assert_allclose(np_(cross_entropy(labels, probs)), ce_ref, rtol=1e-5)
    combined = np_(dice_ce_loss(labels, probs, dice_weight=0.5, ce_weight=2.0))
    np.testing.assert_allclose(combined, 0.5 * numpy_dice_loss(labels, probs) + 2 * ce_ref, rtol=1e-5)


@pytest.mark.parametrize("squared", [True, False])
def test_batch_dice_scores_the_batch_as_one_volume(case, squared):
    labels, probs = case
    as_one = numpy_dice_loss(np.concatenate(list(labels))[None], np.concatenate(list(probs))[None],
                             include_background=False, squared=squared)
    got = np_(dice_loss(labels, probs, include_background=False, squared=squared, batch=True))
    assert got.shape == (3,)
    np.testing.assert_allclose(got, np.repeat(as_one, 3), rtol=1e-5)
    per_sample = np_(dice_loss(labels, probs, include_background=False, squared=squared))
    assert not np.allclose(per_sample, got)
    assert np.isclose(np_(DiceLoss(include_background=False, squared=squared, batch=True)(labels, probs)), as_one[0],
                      rtol=1e-5)


def test_loss_classes_serialise(case):
    labels, probs = case
    for loss in (DiceLoss(include_background=False, squared=False, smooth=0.5, class_weights=[1, 2]),
                 DiceCELoss(ce_weight=0.3, include_background=False, batch=True)):
        clone = keras.losses.deserialize(keras.losses.serialize(loss))
        assert type(clone) is type(loss) and clone.get_config() == loss.get_config()
        np.testing.assert_allclose(np_(clone(labels, probs)), np_(loss(labels, probs)), rtol=1e-6)


@pytest.mark.parametrize("make,message", [
    (lambda: DiceLoss(smooth=-1), "smooth must be a number >= 0, got -1"),
    (lambda: DiceLoss(label_format="sparse"), "label_format must be one of"),
    (lambda: DiceLoss(class_weights=[0, 0]), "class_weights must be >= 0 with a positive sum"),
    (lambda: DiceCELoss(dice_weight=0, ce_weight=0), "not both 0"),
])
def test_invalid_options(make, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace("[", r"\[")):
        make()


def test_invalid_combinations_at_call_time(case):
    labels, probs = case
    with pytest.raises(ValueError, match=r"class_weights needs one entry per scored class \(2: 3 classes, include_background=False\), got 3"):
        dice_loss(labels, probs, include_background=False, class_weights=[1, 1, 1])
    two_class = np.eye(1, dtype="float32")[np.zeros((1, 2, 2, 2), int)]
    with pytest.raises(ValueError, match="include_background=False leaves no class to score"):
        dice_loss(np.zeros((1, 2, 2, 2), int), two_class, include_background=False)
    with pytest.raises(ValueError, match=r"one-hot labels need shape \(batch, ..., 3\)"):
        dice_loss(labels[..., None], probs, label_format="one_hot")
    with pytest.raises(ValueError, match="integer labels need shape"):
        dice_per_class(labels[0], probs)
