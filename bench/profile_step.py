"""Where a V-Net training step spends its time: the TensorFlow profiler's op trace, summed by
op type.

    python bench/profile_step.py                         # paper V-Net, 64x64x32, batch 1
    python bench/profile_step.py --layout monai --shape 128 128 64
    python bench/profile_step.py --layout recipe --shape 40 56 40 --batch 2   # hippocampus recipe's net

Runs warm-up steps, then profiles --steps training steps (the library's compiled step,
``vnet_tf.training.step.make_step``), reads the trace (``*.xplane.pb``) with the protobuf
definitions that ship with TensorFlow, and prints the top op types by total time (the sum
over threads, so it can exceed the wall time on 2 cores) with their share of the op time.
The raw trace stays in --logdir for TensorBoard's profile plugin.
"""

from __future__ import annotations

import argparse
import collections
import glob
import os
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

import vnet_tf  # noqa: E402,F401  pylint: disable=wrong-import-position,unused-import


def op_type(name: str) -> str:
    """``model/left0_conv0/convolution:_MklNativeConv3D`` -> ``_MklNativeConv3D``."""
    return name.rsplit(":", 1)[-1] if ":" in name else name


def summarize(logdir: str, top: int, wall: float, steps: int = 1):
    """Sums kernel time by op type. Scope events (the step, the executor, Python calls) span
    most of a step and are left out: anything over half of one step's wall time
    (``wall / steps / 2``; no single kernel comes near that), and the executor's per-op
    "Process" wrapper."""
    longest = wall / max(steps, 1) / 2
    from tensorflow.tsl.profiler.protobuf import xplane_pb2  # pylint: disable=import-outside-toplevel
    paths = sorted(glob.glob(os.path.join(logdir, "**", "*.xplane.pb"), recursive=True))
    if not paths:
        raise SystemExit(f"no *.xplane.pb under {logdir}")
    space = xplane_pb2.XSpace()
    with open(paths[-1], "rb") as trace:
        space.ParseFromString(trace.read())
    totals, counts, single = collections.Counter(), collections.Counter(), collections.Counter()
    for plane in space.planes:
        if not plane.name.startswith("/host:CPU"):
            continue
        for line in plane.lines:
            for event in line.events:
                name = plane.event_metadata[event.metadata_id].name
                if event.duration_ps / 1e12 > longest or name.strip() in ("ExecutorState::Process", "Run"):
                    continue
                totals[op_type(name)] += event.duration_ps / 1e12
                counts[op_type(name)] += 1
                single[name] += event.duration_ps / 1e12
    total = sum(totals.values())
    print(f"\nkernel time {total:.2f} s in {wall:.2f} s of profiled wall time\n")
    print("| op type | seconds | share of kernel time | calls |\n|---|---|---|---|")
    for name, seconds in totals.most_common(top):
        print(f"| {name.strip()} | {seconds:.3f} | {100 * seconds / total:.1f} % | {counts[name]} |")
    print("\n| op | seconds | share of kernel time |\n|---|---|---|")
    for name, seconds in single.most_common(top):
        print(f"| {name.strip()} | {seconds:.3f} | {100 * seconds / total:.1f} % |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layout", choices=("paper", "monai", "recipe"), default="paper")
    parser.add_argument("--shape", type=int, nargs=3, default=[64, 64, 32])
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--top", type=int, default=20)
    parser.add_argument("--logdir", default=os.path.join(REPO, "runs", "profile"))
    args = parser.parse_args()

    import tensorflow as tf  # pylint: disable=import-outside-toplevel
    tf.config.threading.set_intra_op_parallelism_threads(args.threads)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from bench_monai import ours_batch, ours_model, ours_train_step  # pylint: disable=import-outside-toplevel

    if args.layout == "recipe":  # configs/hippocampus.flags' network
        from vnet_tf.model.vnet import build_vnet  # pylint: disable=import-outside-toplevel
        model = build_vnet(kernel_size=3, depth=4, base_width=16, normalization="instance", convs_right=(1, 1, 1))
    else:
        model = ours_model("ours_monai_layout" if args.layout == "monai" else "ours_paper")
    step = ours_train_step(model, args.batch)
    batch = ours_batch(args.shape, args.batch)
    for _ in range(2):
        float(step(batch))
    tf.profiler.experimental.start(args.logdir)
    start = time.perf_counter()
    for _ in range(args.steps):
        float(step(batch))
    wall = time.perf_counter() - start
    tf.profiler.experimental.stop()
    print(f"{args.layout} layout, shape {tuple(args.shape)}, batch {args.batch}: "
          f"{wall / args.steps:.3f} s per step while profiled")
    summarize(args.logdir, args.top, wall, args.steps)


if __name__ == "__main__":
    main()
