"""Training memory and time with and without ``--recompute`` (the normalisations and PReLUs
recomputed in the backward pass), each setting in its own process, alternating.

    python bench/bench_recompute.py [--rounds 2] [--steps 3] [--small_only]

Networks: the hippocampus recipe's (40x56x40, batch 2) and the paper V-Net (64x64x32 and
128x128x64, batch 1; the shapes of bench_monai.py). Each process builds the model, times
``--steps`` compiled training steps after one warm-up step (the library's step, Dice loss,
SGD) and reports its peak resident memory and its working memory (peak minus the resident
memory after the model, the optimiser and the batch exist), and a checksum of the weights
after the steps (the sum of their absolute values), which must agree with and without
recomputation to float32 round-off.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RECIPE = dict(kernel_size=3, depth=4, base_width=16, normalization="instance", convs_right=(1, 1, 1))
CASES = [("recipe", RECIPE, (40, 56, 40), 2), ("paper", {}, (64, 64, 32), 1), ("paper", {}, (128, 128, 64), 1)]


def worker(args) -> dict:
    sys.path.insert(0, REPO)
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import numpy as np  # pylint: disable=import-outside-toplevel
    import vnet_tf  # noqa: F401  pylint: disable=import-outside-toplevel,unused-import
    import tensorflow as tf  # pylint: disable=import-outside-toplevel
    tf.config.threading.set_intra_op_parallelism_threads(2)
    import keras  # pylint: disable=import-outside-toplevel
    from bench_monai import current_rss_mb, ours_batch, ours_train_step, rss_mb  # pylint: disable=import-outside-toplevel
    from vnet_tf.model.vnet import build_vnet  # pylint: disable=import-outside-toplevel

    _, kwargs, shape, batch = CASES[args.case]
    keras.utils.set_random_seed(0)
    model = build_vnet(**kwargs, recompute=args.recompute)
    step = ours_train_step(model, batch)
    data = ours_batch(shape, batch)
    base = current_rss_mb()
    float(step(data))
    times = []
    for _ in range(args.steps):
        start = time.perf_counter()
        float(step(data))
        times.append(time.perf_counter() - start)
    checksum = float(sum(np.abs(w).astype("float64").sum() for w in model.get_weights()))
    return {"times": times, "peak": rss_mb(), "working": rss_mb() - base, "checksum": checksum}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--small_only", action="store_true", help="leave out the 128x128x64 paper V-Net")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--case", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--recompute", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print("RESULT " + json.dumps(worker(args)))
        return

    cases = range(len(CASES) - 1 if args.small_only else len(CASES))
    results = {}
    for case in cases:
        for _ in range(args.rounds):
            for recompute in (False, True):
                cmd = [sys.executable, __file__, "--worker", f"--case={case}", f"--steps={args.steps}"]
                out = subprocess.run(cmd + (["--recompute"] if recompute else []), capture_output=True, text=True,
                                     check=False)
                line = next((l for l in out.stdout.splitlines() if l.startswith("RESULT ")), None)
                if line is None:
                    raise SystemExit(f"case {case}, recompute {recompute} failed:\n{out.stderr[-2000:]}")
                results.setdefault((case, recompute), []).append(json.loads(line[7:]))

    print("| network | shape | batch | recompute | seconds per step, median (min–max) | peak RSS MB | "
          "working MB | weights checksum |\n|---|---|---|---|---|---|---|---|")
    for (case, recompute), runs in results.items():
        name, _, shape, batch = CASES[case]
        times = [t for run in runs for t in run["times"]]
        print(f"| {name} | {'×'.join(map(str, shape))} | {batch} | {'on' if recompute else 'off'} | "
              f"{statistics.median(times):.3f} ({min(times):.3f}–{max(times):.3f}) | "
              f"{max(r['peak'] for r in runs):.0f} | {max(r['working'] for r in runs):.0f} | "
              f"{runs[0]['checksum']:.6g} |")
    print("\n| network | shape | time on ÷ off | peak RSS on ÷ off | working on ÷ off | weights checksum, largest relative difference |\n"
          "|---|---|---|---|---|---|")
    for case in cases:
        off, on = results[(case, False)], results[(case, True)]
        name, _, shape, _ = CASES[case]
        t_off = statistics.median(t for r in off for t in r["times"])
        t_on = statistics.median(t for r in on for t in r["times"])
        peak = max(r["peak"] for r in on) / max(r["peak"] for r in off)
        working = max(r["working"] for r in on) / max(r["working"] for r in off)
        spread = max(abs(r["checksum"] - off[0]["checksum"]) for r in off + on) / abs(off[0]["checksum"])
        print(f"| {name} | {'×'.join(map(str, shape))} | {t_on / t_off:.2f}× | {peak:.2f}× | {working:.2f}× | "
              f"{spread:.1e} |")


if __name__ == "__main__":
    main()
