"""The model, the losses and the augmentation run under Keras's JAX backend without importing
TensorFlow: one fresh process (the backend is chosen when Keras is first imported)."""

import pytest

from conftest import REPO, subprocess_env
from helpers import run_under_backend

CODE = """
import sys
import numpy as np, keras
assert keras.backend.backend() == "jax"
from vnet_tf.augment import chain as A
from vnet_tf.model.losses import dice_loss
from vnet_tf.model.vnet import build_vnet
assert "tensorflow" not in sys.modules
m = build_vnet(base_width=4, depth=3, kernel_size=3)
y = m(np.random.rand(1, 8, 16, 8, 1).astype("float32"))
loss = dice_loss(np.zeros((1, 8, 16, 8), "int32"), y)
print("model", tuple(y.shape), bool(np.isfinite(float(loss[0]))))
cfg = A.AugmentConfig(histogram_probability=1, elastic_probability=1, elastic_sigma=2, affine_probability=1,
                      gamma_probability=1, blur_probability=1, lowres_probability=1, gamma_inverted_probability=1,
                      gamma_retain_stats=True, flip_axes=(0,))
aug = A.build_augmentation(cfg, num_classes=2, seed=0)
x = np.random.rand(2, 16, 16, 16, 1).astype("float32")
out = aug({"image": x, "label": (x[..., 0] > 0.5).astype("int32")})
print("augment", tuple(out["image"].shape), np.unique(np.asarray(out["label"])).tolist())
assert "tensorflow" not in sys.modules
"""


def test_model_loss_and_augmentation_run_under_jax():
    pytest.importorskip("jax", reason="JAX is not installed (optional: pip install jax)")
    out = run_under_backend("jax", CODE, subprocess_env(), REPO)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "model (1, 8, 16, 8, 2) True" in out.stdout and "augment (2, 16, 16, 16, 1) [0, 1]" in out.stdout
