"""Augmented patches per second, on the host (tf.data map) and inside a compiled function
(XLA, as in the training step), against the training step's consumption, in one run.

    python bench/bench_augment.py                  # 64^3 (batch 2) and 64x128x128 (batch 1)
    python bench/bench_augment.py --quick          # tiny shapes, 1 repeat

Prints a Markdown table: patches/s per transform and for all together, and the ratio of
the faster path to the training step's patches/s (the pipeline must deliver >= 3x).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

import vnet_tf  # noqa: E402,F401  (oneDNN on before TensorFlow loads)
import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from vnet_tf.augment import chain as A  # noqa: E402
from vnet_tf.model.losses import DiceCELoss  # noqa: E402
from vnet_tf.model.vnet import build_vnet  # noqa: E402

TRANSFORMS = {
    "elastic (B-spline)": dict(elastic_probability=1.0, elastic_sigma=4.0),
    "affine": dict(affine_probability=1.0),
    "elastic + affine (one resampling)": dict(elastic_probability=1.0, elastic_sigma=4.0, affine_probability=1.0),
    "flips": dict(flip_axes=(0, 1, 2), flip_probability=1.0),
    "histogram matching": dict(histogram_probability=1.0),
    "gamma": dict(gamma_probability=1.0),
    "inverted gamma": dict(gamma_inverted_probability=1.0),
    "brightness/contrast": dict(brightness_contrast_probability=1.0),
    "noise": dict(noise_probability=1.0),
    "blur": dict(blur_probability=1.0),
    "low resolution": dict(lowres_probability=1.0),
}
TRANSFORMS["all together"] = {k: v for d in TRANSFORMS.values() for k, v in d.items()}


def median_seconds(fn, warmup, repeats):
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def measure(shape, batch, model_kwargs, args):
    rng = np.random.default_rng(0)
    image = tf.constant(rng.normal(size=(batch, *shape, 1)).astype(np.float32))
    label = tf.constant((rng.random((batch, *shape)) > 0.7).astype(np.int32))
    data = {"image": image, "label": label}
    rows = []
    for name, kwargs in TRANSFORMS.items():
        aug = A.build_augmentation(A.AugmentConfig(**kwargs), num_classes=2, seed=0)
        host = tf.data.Dataset.from_tensors(data).repeat().map(aug, num_parallel_calls=tf.data.AUTOTUNE)
        iterator = iter(host.prefetch(2))
        host_s = median_seconds(lambda: next(iterator)["image"].numpy(), args.warmup, args.repeats * 3)
        compiled = tf.function(aug, jit_compile=True)
        dev_s = median_seconds(lambda: compiled(data)["image"].numpy(), args.warmup, args.repeats * 3)
        rows.append((name, batch / host_s, batch / dev_s))

    keras.utils.set_random_seed(0)
    model = build_vnet(**model_kwargs)
    loss_fn = DiceCELoss(include_background=False)
    optimizer = keras.optimizers.Adam(1e-3)

    @tf.function
    def train_step(x, y):
        with tf.GradientTape() as tape:
            loss = loss_fn(y, model(x, training=True))
        grads = tape.gradient(loss, model.trainable_variables)
        optimizer.apply_gradients(zip(grads, model.trainable_variables))
        return loss

    step_s = median_seconds(lambda: train_step(image, label).numpy(), 1, args.repeats)
    return rows, batch / step_s


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=2)
    args = parser.parse_args()
    if args.quick:
        args.repeats, args.warmup = 1, 1
        settings = [((16, 16, 16), 2, dict(base_width=4, depth=3, kernel_size=3), "tiny V-Net")]
    else:
        settings = [
            ((64, 64, 64), 2, dict(base_width=16, depth=4, kernel_size=3, normalization="instance"),
             "V-Net width 16, depth 4, 3^3, instance norm, batch 2"),
            ((64, 128, 128), 1, dict(), "paper V-Net (5^3, width 16, depth 5), batch 1"),
        ]
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores; "
          f"TensorFlow {tf.__version__}, Keras {keras.__version__}")
    for shape, batch, model_kwargs, model_name in settings:
        rows, consume = measure(shape, batch, model_kwargs, args)
        print(f"\n### {shape[0]}x{shape[1]}x{shape[2]} (z, y, x), batch {batch}; training step: {model_name}\n")
        print(f"training step consumes {consume:.3f} patches/s\n")
        print("| transform | host (tf.data map) patches/s | compiled (XLA) patches/s | best / training |")
        print("|---|---|---|---|")
        for name, host, dev in rows:
            print(f"| {name} | {host:.2f} | {dev:.2f} | {max(host, dev) / consume:.1f}x |")


if __name__ == "__main__":
    main()
