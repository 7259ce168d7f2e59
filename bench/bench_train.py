"""Training speed and peak memory of the demo and hippocampus configurations, and the cost
of host-side vs device-side augmentation, each run in its own process.

    python bench/bench_train.py [--steps 40] [--only hippocampus]

Runs `train.py --flagfile=configs/X.flags` with validation off and a temporary workdir, and
prints steps/s after the first 10 steps (tracing and start-up) and the process's peak resident memory.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import platform
import subprocess
import sys
import tempfile

REPO = pathlib.Path(__file__).resolve().parents[1]

RUNS = [
    ("demo (configs/demo.flags)", ["--flagfile=configs/demo.flags"]),
    ("hippocampus, augmentation on the device", ["--flagfile=configs/hippocampus.flags", "--augment_on=device"]),
    ("hippocampus, augmentation on the host (tf.data)", ["--flagfile=configs/hippocampus.flags", "--augment_on=host"]),
    ("hippocampus, deep supervision (2 heads) + batch Dice, not squared",
     ["--flagfile=configs/hippocampus.flags", "--deep_supervision=2", "--batch_dice", "--dice_squared=false"]),
]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--only", default="", help="run only the configurations whose name contains this")
    args = parser.parse_args()
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores; python {platform.python_version()}\n")
    print("| configuration | steps/s (after the first 10 steps) | patches/s | peak memory (MB) |\n|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for index, (name, flags) in enumerate(RUNS):
            if args.only not in name:
                continue
            workdir = pathlib.Path(tmp) / f"run{index}"
            cmd = [sys.executable, "train.py", *flags, f"--steps={args.steps}", f"--workdir={workdir}",
                   f"--validation_every={args.steps * 10}", f"--checkpoint_every={args.steps * 10}",
                   "--progress=false"]
            out = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
            if out.returncode:
                print(f"| {name} | failed: {out.stderr[-300:]} | | |")
                continue
            summary = json.loads((workdir / "summary.json").read_text())
            flagfile = (workdir / "flags.txt").read_text()
            batch = int(next(line.split("=")[1] for line in flagfile.splitlines() if line.startswith("--batch_size=")))
            rate = summary["steps_per_second_steady"]
            print(f"| {name} | {rate:.3f} | {rate * batch:.2f} | {summary['peak_memory_mb']:.0f} |")


if __name__ == "__main__":
    main()
