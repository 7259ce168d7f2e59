"""The 3D convolution's weight gradient: oneDNN's kernel against matmul formulations, on the
layer shapes of the recipe and of the paper V-Net, with oneDNN free to use every instruction
set of the CPU and capped at AVX2 (``ONEDNN_MAX_CPU_ISA=AVX2``, which reproduces an AVX2-only
CPU's kernel choice on a newer one).

    python bench/bench_weight_grad.py [--rounds 2] [--repeats 5]

Each (instruction set, round) runs in its own process (oneDNN reads the cap once), the
settings alternating. Per shape: the forward convolution, oneDNN's weight gradient
(``Conv3DBackpropFilterV2``, what the training step's gradient runs), and the same gradient
as shifted copies of the input multiplied by the output gradient (:func:`matmul_weight_gradient`),
compiled by TensorFlow's graph and by XLA, and as one forward convolution over tiles
(:func:`tiled_weight_gradient`). Prints a Markdown table of medians and each
formulation's largest difference from oneDNN's, relative to its largest value.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import platform
import statistics
import subprocess
import sys
import time

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

# (name, batch, D, H, W, in channels, out channels, kernel)
SHAPES = (
    ("recipe encoder, full resolution", 2, 40, 56, 40, 16, 16, 3),
    ("recipe decoder right0_conv0", 2, 40, 56, 40, 32, 16, 3),
    ("recipe stage 2", 2, 20, 28, 20, 32, 32, 3),
    ("recipe stage 3", 2, 10, 14, 10, 64, 64, 3),
    ("paper full resolution (64x64x32)", 1, 32, 64, 64, 16, 16, 5),
    ("paper head (32 -> 2)", 1, 32, 64, 64, 32, 2, 5),
)
METHODS = ("forward", "onednn", "matmul", "matmul_xla", "tiled")
TILE_MAX = 8  # the tiles of tiled_weight_gradient: per axis, the largest divisor of the size up to this


def matmul_weight_gradient(x, dy, kernel: int):
    """``dL/dW`` of a stride-1 'SAME' 3D convolution ``(k, k, k, Ci, Co)`` from its input ``x``
    ``(N, D, H, W, Ci)`` and output gradient ``dy`` ``(N, D, H, W, Co)``: for each (z, y) offset,
    the input's k x-shifted copies side by side ``(N*D*H*W, k*Ci)``, transposed and multiplied
    by ``dy`` ``(N*D*H*W, Co)``."""
    import tensorflow as tf
    shape = tf.shape(x)
    d, h, w = shape[1], shape[2], shape[3]
    ci, co, pad = x.shape[-1], dy.shape[-1], kernel // 2
    padded = tf.pad(x, [[0, 0], [pad, pad], [pad, pad], [pad, pad], [0, 0]])
    grad = tf.reshape(dy, [-1, co])
    rows = []
    for a in range(kernel):
        for b in range(kernel):
            shifted = tf.concat([padded[:, a:a + d, b:b + h, c:c + w, :] for c in range(kernel)], -1)
            rows.append(tf.matmul(tf.reshape(shifted, [-1, kernel * ci]), grad, transpose_a=True))
    return tf.reshape(tf.stack(rows), [kernel, kernel, kernel, ci, co])


def tiled_weight_gradient(x, dy, kernel: int, tile_max: int = TILE_MAX):
    """The same gradient as one forward convolution: the volume cut into T tiles (per axis the
    largest divisor of its size up to ``tile_max``), the tiles becoming channels. The input's
    tiles with their halo, ``(Ci, tz+k-1, ty+k-1, tx+k-1, T)`` (its channels as the batch),
    convolved ('VALID') with ``dy``'s tiles as the kernel ``(tz, ty, tx, T, Co)``, give
    ``(Ci, k, k, k, Co)``: oneDNN's forward kernel where its weight-gradient kernel is slow."""
    import tensorflow as tf
    n, d, h, w, ci = x.shape
    co, pad = dy.shape[-1], kernel // 2
    tz, ty, tx = (max(t for t in range(1, tile_max + 1) if size % t == 0) for size in (d, h, w))
    nz, ny, nx = d // tz, h // ty, w // tx
    tiles = n * nz * ny * nx
    padded = tf.pad(x, [[0, 0], [pad, pad], [pad, pad], [pad, pad], [0, 0]])
    halo = [tz + 2 * pad, ty + 2 * pad, tx + 2 * pad]
    pieces = tf.extract_volume_patches(padded, [1, *halo, 1], [1, tz, ty, tx, 1], "VALID")
    inputs = tf.transpose(tf.reshape(pieces, [tiles, *halo, ci]), [4, 1, 2, 3, 0])
    grads = tf.reshape(tf.transpose(tf.reshape(dy, [n, nz, tz, ny, ty, nx, tx, co]), [2, 4, 6, 0, 1, 3, 5, 7]),
                       [tz, ty, tx, tiles, co])
    return tf.transpose(tf.nn.conv3d(inputs, grads, [1] * 5, "VALID"), [1, 2, 3, 0, 4])


def _worker(repeats: int) -> None:
    import vnet_tf  # noqa: F401  pylint: disable=unused-import  (turns oneDNN on)
    import tensorflow as tf
    tf.config.threading.set_inter_op_parallelism_threads(1)

    def timed(fn, *args):
        fn(*args).numpy()
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            fn(*args).numpy()
            times.append(time.perf_counter() - start)
        return statistics.median(times)

    for name, n, d, h, w, ci, co, k in SHAPES:
        x, dy = tf.random.normal([n, d, h, w, ci], seed=1), tf.random.normal([n, d, h, w, co], seed=2)
        weights = tf.random.normal([k, k, k, ci, co], seed=3)
        sizes = tf.constant([k, k, k, ci, co])
        fns = {
            "forward": tf.function(lambda x, w: tf.nn.conv3d(x, w, [1] * 5, "SAME")),
            "onednn": tf.function(lambda x, g: tf.raw_ops.Conv3DBackpropFilterV2(
                input=x, filter_sizes=sizes, out_backprop=g, strides=[1] * 5, padding="SAME")),
            "matmul": tf.function(lambda x, g: matmul_weight_gradient(x, g, k)),
            "matmul_xla": tf.function(lambda x, g: matmul_weight_gradient(x, g, k), jit_compile=True),
            "tiled": tf.function(lambda x, g: tiled_weight_gradient(x, g, k)),
        }
        reference = fns["onednn"](x, dy)
        scale = float(tf.reduce_max(tf.abs(reference)))
        row = {"shape": name, "gflop": 2 * n * d * h * w * ci * co * k ** 3 / 1e9}
        for method, fn in fns.items():
            row[method] = timed(fn, x, weights if method == "forward" else dy)
            if method not in ("forward", "onednn"):
                row[method + "_error"] = float(tf.reduce_max(tf.abs(fn(x, dy) - reference))) / scale
        print("ROW " + json.dumps(row), flush=True)


def _cpu_flags() -> str:
    try:
        flags = next(line for line in open("/proc/cpuinfo") if line.startswith("flags")).split()
    except (OSError, StopIteration):
        return platform.processor()
    return ", ".join(f for f in ("avx2", "avx512f", "avx512_bf16", "amx_tile") if f in flags)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        _worker(args.repeats)
        return
    results = {}
    for _ in range(args.rounds):
        for isa in ("all", "AVX2"):
            env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
            env.pop("ONEDNN_MAX_CPU_ISA", None)
            if isa != "all":
                env["ONEDNN_MAX_CPU_ISA"] = isa
            out = subprocess.run([sys.executable, __file__, "--worker", "--repeats", str(args.repeats)], env=env,
                                 capture_output=True, text=True, check=True)
            for line in out.stdout.splitlines():
                if line.startswith("ROW "):
                    row = json.loads(line[4:])
                    results.setdefault((isa, row["shape"]), []).append(row)
    print(f"CPU flags: {_cpu_flags()}; {args.rounds} rounds x {args.repeats} timings, medians in ms\n")
    print("| oneDNN ISA | layer | GFLOP | forward | oneDNN weight grad (x forward) "
          "| matmul (x oneDNN) | matmul, XLA (x oneDNN) | tiled forward (x oneDNN) | max rel. diff |")
    print("|---|---|---|---|---|---|---|---|---|")
    for (isa, shape), rows in results.items():
        med = {m: statistics.median(r[m] for r in rows) * 1e3 for m in METHODS}
        error = max(r[m + "_error"] for r in rows for m in METHODS[2:])
        print(f"| {isa} | {shape} | {rows[0]['gflop']:.1f} | {med['forward']:.1f} "
              f"| {med['onednn']:.1f} ({med['onednn'] / med['forward']:.2f}×) "
              f"| {med['matmul']:.1f} ({med['matmul'] / med['onednn']:.2f}×) "
              f"| {med['matmul_xla']:.1f} ({med['matmul_xla'] / med['onednn']:.2f}×) "
              f"| {med['tiled']:.1f} ({med['tiled'] / med['onednn']:.2f}×) | {error:.1e} |")


if __name__ == "__main__":
    main()
