"""The whole hippocampus recipe in one command: train on the training folds, evaluate on the
validation fold, print the figures for docs/results/hippocampus.md.

    python bench/bench_hippocampus.py [--config=configs/hippocampus_paper.flags]
        [--workdir=runs/hippocampus] [--flag=override ...]

Runs `train.py --flagfile=configs/hippocampus.flags` (or the --config given) plus any extra
flags (e.g. `--steps=3500`, or `--fold=2` for one fold of a cross-validation), then
`evaluate.py` on the held-out fold with the run's inference settings and its final weights
(the best-on-validation checkpoint would be chosen on the very fold we report), and prints
training wall time and Dice / HD95 / ASSD per label (mean +/- std over cases). The workdir
defaults to the config's own --workdir (with ``_fold<k>`` appended for another fold).
"""

from __future__ import annotations

import json
import pathlib
import subprocess
import sys
import time

REPO = pathlib.Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data" / "Task04_Hippocampus"


def _flag_values(lines, name):
    return [line.split("=", 1)[1].strip() for line in lines if line.strip().startswith(f"--{name}=")]


def plan(argv):
    """(config, workdir, fold, extra train.py flags) from the command line. The config's own
    --workdir and --fold are the defaults; another fold than the config's gets its own
    workdir (``<config workdir>_fold<k>``) so that runs of a cross-validation never resume
    each other's checkpoints."""
    config, workdir, extra = "configs/hippocampus.flags", None, []
    for arg in argv:
        if arg.startswith("--workdir="):
            workdir = arg.split("=", 1)[1]
        elif arg.startswith("--config="):
            config = arg.split("=", 1)[1]
        else:
            extra.append(arg)
    if not (REPO / config).is_file():
        raise SystemExit(f"--config: expected a flag file under {REPO}, got {config!r} (not found)")
    lines = (REPO / config).read_text().splitlines()
    config_fold = (_flag_values(lines, "fold") or ["0"])[-1]
    fold = (_flag_values(extra, "fold") or [config_fold])[-1]
    if fold.startswith("-"):
        raise SystemExit(f"--fold: expected a held-out fold to evaluate (0 or more), got {fold}; to train the "
                         f"final model on every case run train.py --flagfile={config} --fold=-1")
    if workdir is None:
        workdir = (_flag_values(lines, "workdir") or ["runs/hippocampus"])[-1]
        if fold != config_fold:
            workdir = f"{workdir}_fold{fold}"
    return config, workdir, fold, extra


def main(argv):
    config, workdir, fold, extra = plan(argv)
    start = time.perf_counter()
    subprocess.run([sys.executable, "train.py", f"--flagfile={config}", f"--workdir={workdir}",
                    f"--data_dir={DATA}", "--progress=false", *extra], cwd=REPO, check=True)
    train_s = time.perf_counter() - start
    out_dir = pathlib.Path(workdir) / f"eval_fold{fold}"
    subprocess.run([sys.executable, "evaluate.py", f"--model={workdir}", f"--data_dir={DATA}", f"--fold={fold}", "--which=final",
                    f"--output_dir={out_dir}"], cwd=REPO, check=True)
    summary = json.loads((REPO / out_dir / "summary.json").read_text())
    trained = json.loads((REPO / workdir / "summary.json").read_text())
    print(f"\ntraining wall time {train_s / 60:.1f} min (train.py incl. data check and caching), "
          f"{trained['steps']} steps" + (" (the length the time budget set)" if trained.get("stopped_by_budget") else ""))
    print("| label | Dice | HD95 (mm) | ASSD (mm) |\n|---|---|---|---|")
    for label, stats in summary["per_label"].items():
        cells = [f"{stats[m]['mean']:.3f} +/- {stats[m]['std']:.3f}" for m in ("dice", "hd95", "assd")]
        print(f"| {label} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main(sys.argv[1:])
