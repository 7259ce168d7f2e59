"""The whole hippocampus recipe in one command: train on the training folds, evaluate on the
validation fold, print the figures for BENCHMARKS.md.

    python bench/bench_hippocampus.py [--workdir runs/hippocampus] [--flag=override ...]

Runs `train.py --flagfile=configs/hippocampus.flags` (plus any extra flags, e.g.
`--steps=3500`), then `evaluate.py` on fold 0 with the run's inference settings and its final weights (the
best-on-validation checkpoint would be chosen on the very fold we report), and prints
training wall time and Dice / HD95 / ASSD per label (mean +/- std over cases).
"""

from __future__ import annotations

import json
import pathlib
import subprocess
import sys
import time

REPO = pathlib.Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data" / "Task04_Hippocampus"


def main(argv):
    workdir = "runs/hippocampus"
    extra = []
    for arg in argv:
        if arg.startswith("--workdir="):
            workdir = arg.split("=", 1)[1]
        else:
            extra.append(arg)
    start = time.perf_counter()
    subprocess.run([sys.executable, "train.py", "--flagfile=configs/hippocampus.flags", f"--workdir={workdir}",
                    f"--data_dir={DATA}", "--progress=false", *extra], cwd=REPO, check=True)
    train_s = time.perf_counter() - start
    out_dir = pathlib.Path(workdir) / "eval_fold0"
    subprocess.run([sys.executable, "evaluate.py", f"--model={workdir}", f"--data_dir={DATA}", "--fold=0", "--which=final",
                    f"--output_dir={out_dir}"], cwd=REPO, check=True)
    summary = json.loads((REPO / out_dir / "summary.json").read_text())
    print(f"\ntraining wall time {train_s / 60:.1f} min (train.py incl. data check and caching)")
    print("| label | Dice | HD95 (mm) | ASSD (mm) |\n|---|---|---|---|")
    for label, stats in summary["per_label"].items():
        cells = [f"{stats[m]['mean']:.3f} +/- {stats[m]['std']:.3f}" for m in ("dice", "hd95", "assd")]
        print(f"| {label} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main(sys.argv[1:])
