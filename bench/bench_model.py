"""Forward and training-step time of the paper V-Net with oneDNN on and off.

Each measurement runs in its own process (TF_ENABLE_ONEDNN_OPTS is read once, at
TensorFlow's import), alternating on / off / on / off, after warm-up steps.

    python bench/bench_model.py                 # 64x64x32, batch 1, widths 8 and 16
    python bench/bench_model.py --rounds 1 --repeats 2 --shape 32 32 32   # quick

Prints a Markdown table of medians (min-max) and the off/on ratio, plus the machine.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
from vnet_tf.core.runtime import cpu_name  # noqa: E402  (workers set TF_ENABLE_ONEDNN_OPTS themselves)


def worker(args) -> None:
    sys.path.insert(0, REPO)
    import vnet_tf  # noqa: F401  pylint: disable=import-outside-toplevel,unused-import
    import numpy as np  # pylint: disable=import-outside-toplevel
    import keras  # pylint: disable=import-outside-toplevel
    import tensorflow as tf  # pylint: disable=import-outside-toplevel

    from vnet_tf.model.losses import DiceLoss  # pylint: disable=import-outside-toplevel
    from vnet_tf.model.vnet import build_vnet  # pylint: disable=import-outside-toplevel
    from vnet_tf.core.runtime import onednn_enabled  # pylint: disable=import-outside-toplevel

    keras.utils.set_random_seed(0)
    model = build_vnet(base_width=args.width)
    loss_fn = DiceLoss()
    optimizer = keras.optimizers.SGD(1e-4, momentum=0.99)
    x = tf.constant(np.random.rand(args.batch, *args.shape, 1).astype("float32"))
    y = tf.constant((np.random.rand(args.batch, *args.shape) > 0.5).astype("int32"))

    @tf.function
    def forward(inputs):
        return model(inputs, training=False)

    @tf.function
    def train_step(inputs, labels):
        with tf.GradientTape() as tape:
            loss = loss_fn(labels, model(inputs, training=True))
        grads = tape.gradient(loss, model.trainable_variables)
        optimizer.apply_gradients(zip(grads, model.trainable_variables))
        return loss

    def timed(fn, *fn_args):
        times = []
        for i in range(args.warmup + args.repeats):
            start = time.perf_counter()
            np.asarray(fn(*fn_args))
            if i >= args.warmup:
                times.append(time.perf_counter() - start)
        return times

    result = {
        "onednn": onednn_enabled(),
        "forward": timed(forward, x),
        "train": timed(train_step, x, y),
        "params": model.count_params(),
    }
    print("RESULT " + json.dumps(result))


def run_worker(width, onednn, args):
    env = dict(os.environ, TF_ENABLE_ONEDNN_OPTS=onednn, TF_CPP_MIN_LOG_LEVEL="2")
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", "--width", str(width),
           "--batch", str(args.batch), "--repeats", str(args.repeats),
           "--warmup", str(args.warmup), "--shape", *map(str, args.shape)]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise RuntimeError(f"worker failed (width {width}, oneDNN {onednn}):\n{out.stderr[-3000:]}")
    line = [l for l in out.stdout.splitlines() if l.startswith("RESULT ")][-1]
    return json.loads(line[len("RESULT "):])


def fmt(times):
    return f"{statistics.median(times):.3f} ({min(times):.3f}–{max(times):.3f})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--width", type=int, default=8)
    parser.add_argument("--widths", type=int, nargs="+", default=[8, 16])
    parser.add_argument("--shape", type=int, nargs=3, default=[64, 64, 32], help="D H W")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=5, help="timed steps per process")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=2, help="on/off alternations")
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return

    import tensorflow as tf  # pylint: disable=import-outside-toplevel
    print(f"machine: {cpu_name()}, {os.cpu_count()} cores; "
          f"python {platform.python_version()}, tensorflow {tf.__version__}")
    print(f"command: python bench/bench_model.py {' '.join(sys.argv[1:])}".rstrip())
    print(f"shape {tuple(args.shape)}, batch {args.batch}, {args.rounds} rounds x "
          f"{args.repeats} timed steps after {args.warmup} warm-up, seconds\n")
    print("| width | params | oneDNN | forward median (min–max) | train step median (min–max) |")
    print("|---|---|---|---|---|")
    summary = []
    for width in args.widths:
        runs = {"1": {"forward": [], "train": []}, "0": {"forward": [], "train": []}}
        for _ in range(args.rounds):
            for onednn in ("1", "0"):
                res = run_worker(width, onednn, args)
                assert res["onednn"] == (onednn == "1"), res
                runs[onednn]["forward"] += res["forward"]
                runs[onednn]["train"] += res["train"]
                params = res["params"]
        for onednn in ("1", "0"):
            print(f"| {width} | {params:,} | {'on' if onednn == '1' else 'off'} | "
                  f"{fmt(runs[onednn]['forward'])} | {fmt(runs[onednn]['train'])} |")
        summary.append((width, *(statistics.median(runs["0"][k]) / statistics.median(runs["1"][k])
                                 for k in ("forward", "train"))))
    print("\n| width | forward off/on | train off/on |\n|---|---|---|")
    for width, fwd, train in summary:
        print(f"| {width} | {fwd:.2f}x | {train:.2f}x |")


if __name__ == "__main__":
    main()
