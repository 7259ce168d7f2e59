"""Cross-validation: the per-label mean ± std over the cases of several folds' evaluations.

    python -m vnet_tf.commands.pool_folds runs/hippocampus/eval_fold0 runs/hippocampus_fold1/eval_fold1 ... [--voxel_mm=0.625]

Arguments are evaluate.py output folders (or their metrics.csv), one per fold. Every case
counts once, scored by the fold model that held it out; a case that appears in two of the
files is refused. Prints a markdown table of Dice, HD95 and ASSD per label (mean ± standard
deviation over cases; distances of an empty mask are left out and counted), and the 95 %
bootstrap interval of the mean Dice over the cases (how far case sampling alone moves it).
Where every file has them, a second table gives the left-atrium literature's metrics:
Jaccard, medpy's 95HD (both directions' distances pooled) and ASD (one way, prediction to
reference), in mm and, with ``--voxel_mm`` (an isotropic grid), in voxels.
"""

from __future__ import annotations

from absl import flags

from vnet_tf.commands import cli
from vnet_tf.core.errors import UserError
from vnet_tf.evaluation.comparison import metric_columns, metrics_csv, pooled_summary

flags.DEFINE_float("voxel_mm", None, "the scans' voxel size in mm (an isotropic grid): distances of the "
                   "literature's table also in voxels", lower_bound=0.0)
FLAGS = flags.FLAGS
POSITIONAL = {"EVALUATION": "evaluate.py output folders (or their metrics.csv), one per fold"}
# The left-atrium literature's metrics (medpy's jc, hd95, asd): metrics.csv column, heading, distance.
LITERATURE = (("iou", "Jaccard", False), ("hd95_pooled", "95HD (medpy)", True), ("asd", "ASD (medpy)", True))


def main(argv) -> int:
    evaluations = cli.positionals(argv, *POSITIONAL, repeat_last=True)
    paths = [metrics_csv(p) for p in evaluations]
    literature = [m for m in LITERATURE if all(m[0] in metric_columns(p) for p in paths)]
    try:
        result = pooled_summary(paths, metrics=("dice", "hd95", "assd") + tuple(m[0] for m in literature))
    except (FileNotFoundError, ValueError) as err:
        raise UserError(str(err)) from err
    n = {label: r["dice"]["n"] + r["dice"]["missing"] for label, r in result.items()}
    print(f"{len(evaluations)} evaluations, {max(n.values())} cases\n")
    print("| label | cases | Dice | Dice mean, 95 % interval | HD95 (mm) | ASSD (mm) | distances missing |\n"
          "|---|---|---|---|---|---|---|")
    for label, r in result.items():
        cells = [f"{r[m]['mean']:.3f} ± {r[m]['std']:.3f}" if r[m]["mean"] is not None else "-"
                 for m in ("dice", "hd95", "assd")]
        low, high = r["dice"]["ci95"]
        cells.insert(1, f"{low:.3f} to {high:.3f}")
        print(f"| {label} | {n[label]} | {' | '.join(cells)} | {r['hd95']['missing']} |")
    if literature:
        unit = "mm" + (f"; voxels of {FLAGS.voxel_mm:g} mm" if FLAGS.voxel_mm else "")
        print(f"\n| label | {' | '.join(name + (f' ({unit})' if distance else '') for _, name, distance in literature)} |"
              f"\n|---|{'---|' * len(literature)}")
        for label, r in result.items():
            cells = []
            for key, _, distance in literature:
                mean, std = r[key]["mean"], r[key]["std"]
                cell = "-" if mean is None else f"{mean:.3f} ± {std:.3f}"
                if mean is not None and distance and FLAGS.voxel_mm:
                    cell += f" ({mean / FLAGS.voxel_mm:.2f} vox)"
                cells.append(cell)
            print(f"| {label} | {' | '.join(cells)} |")
    return 0


def run() -> None:
    """The ``vnet-pool-folds`` command."""
    cli.run(main)


if __name__ == "__main__":
    run()
