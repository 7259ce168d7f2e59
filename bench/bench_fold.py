"""One fold of a recipe in one command: train on the training folds, evaluate on the held-out
fold, print the figures for docs/results/.

    python bench/bench_fold.py [--config=configs/la2018.flags] [--workdir=runs/X] [--flag=override ...]

Runs `train.py --flagfile=configs/hippocampus.flags` (or the --config given: its own
--data_dir) plus any extra flags (e.g. `--steps=3500`, or `--fold=2` for one fold of a
cross-validation), then `evaluate.py` on the held-out fold with the run's inference settings and
its final weights (the best-on-validation checkpoint would be chosen on the very fold we
report), and prints training wall time, steps, each command's peak memory and, per label, the
mean +/- std over cases of Dice, Jaccard, HD95, ASSD, and medpy's pooled 95HD and one-way ASD
(the left-atrium literature's), in mm and, for isotropic scans, in voxels. The workdir defaults to the config's
own --workdir (with ``_fold<k>`` appended for another fold).
"""

from __future__ import annotations

import json
import pathlib
import subprocess
import sys
import time

REPO = pathlib.Path(__file__).resolve().parents[1]
METRICS = (("dice", "Dice", False), ("iou", "Jaccard", False), ("hd95", "HD95", True), ("assd", "ASSD", True),
           ("hd95_pooled", "95HD (medpy)", True), ("asd", "ASD (medpy)", True))


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
    lines = (REPO / config).read_text().splitlines() + extra
    data = (_flag_values(lines, "data_dir") or [None])[-1]
    if data is None:
        raise SystemExit(f"--config {config}: expected a --data_dir in the flag file or on the command line")
    start = time.perf_counter()
    subprocess.run([sys.executable, "train.py", f"--flagfile={config}", f"--workdir={workdir}",
                    "--progress=false", *extra], cwd=REPO, check=True)
    train_s = time.perf_counter() - start
    out_dir = pathlib.Path(workdir) / f"eval_fold{fold}"
    subprocess.run([sys.executable, "evaluate.py", f"--model={workdir}", f"--data_dir={data}", f"--fold={fold}",
                    "--which=final", f"--output_dir={out_dir}"], cwd=REPO, check=True)
    summary = json.loads((REPO / out_dir / "summary.json").read_text())
    trained = json.loads((REPO / workdir / "summary.json").read_text())
    print(f"\ntraining wall time {train_s / 60:.1f} min (train.py incl. data check and caching), "
          f"{trained['steps']} steps" + (" (the length the time budget set)" if trained.get("stopped_by_budget") else "")
          + f", peak memory {trained.get('peak_memory_mb', float('nan')) / 1024:.2f} GB; "
          f"evaluation {summary.get('seconds_per_case', {}).get('mean', float('nan')):.1f} s a case, "
          f"peak memory {summary.get('peak_memory_mb', float('nan')) / 1024:.2f} GB")
    print(metrics_table(summary, _voxel_mm(REPO / data)))


def _voxel_mm(data: pathlib.Path):
    """The voxel size in mm where every scan of the dataset is isotropic at one spacing, else None."""
    import SimpleITK as sitk  # pylint: disable=import-outside-toplevel
    spacings = set()
    for path in sorted((data / "imagesTr").glob("*.nii.gz")):
        reader = sitk.ImageFileReader()
        reader.SetFileName(str(path))
        reader.ReadImageInformation()
        spacings.add(tuple(round(s, 4) for s in reader.GetSpacing()))
    if len(spacings) == 1 and len(set(next(iter(spacings)))) == 1:
        return next(iter(spacings))[0]
    return None


def metrics_table(summary: dict, voxel_mm=None) -> str:
    """Per label, each metric's mean +/- std over cases; distances in mm (and voxels)."""
    unit = " (mm)" if voxel_mm is None else f" (mm; voxels of {voxel_mm:g} mm)"
    rows = ["| label | " + " | ".join(name + (unit if distance else "") for _, name, distance in METRICS) + " |",
            "|---|" + "---|" * len(METRICS)]
    for label, stats in summary["per_label"].items():
        cells = []
        for key, _, distance in METRICS:
            if key not in stats:
                cells.append("")
                continue
            mean, std = stats[key]["mean"], stats[key]["std"]
            cell = f"{mean:.3f} +/- {std:.3f}"
            if distance and voxel_mm:
                cell += f" ({mean / voxel_mm:.2f} vox)"
            cells.append(cell)
        rows.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(rows)


if __name__ == "__main__":
    main(sys.argv[1:])
