"""Paired comparison of two evaluations of the same cases, per label.

    python -m vnet_tf.commands.compare_runs runs/hippocampus_fold1/eval_fold1 runs/hippocampus_ds/eval_fold1 [--metric=dice]

Arguments are evaluate.py output folders (or their metrics.csv). Prints, per label, the
base and new means, the mean per-case difference (new - base) with its 95 % bootstrap
interval over cases, and how many cases got better / equal / worse. For HD95 and ASSD
lower is better: a negative difference is an improvement.

The interval covers the choice of cases only, not the randomness of training: two single
runs that differ only in --seed can differ by more than it suggests (how much: docs/experiments-log.md,
"Learning rate and seed noise").
"""

from __future__ import annotations

from absl import flags

from vnet_tf.commands import cli
from vnet_tf.core.errors import UserError
from vnet_tf.evaluation.comparison import LOWER_IS_BETTER, metrics_csv, paired_comparison, read_metric

flags.DEFINE_string("metric", "dice", "the metrics.csv column to compare (dice, hd95, assd, ...)")
FLAGS = flags.FLAGS
POSITIONAL = {"BASE": "the base evaluation (evaluate.py's output folder or its metrics.csv)",
              "NEW": "the new evaluation of the same cases"}


def main(argv) -> int:
    base, new = cli.positionals(argv, *POSITIONAL)
    try:
        result = paired_comparison(read_metric(metrics_csv(base), FLAGS.metric),
                                   read_metric(metrics_csv(new), FLAGS.metric),
                                   higher_is_better=FLAGS.metric not in LOWER_IS_BETTER)
    except (FileNotFoundError, ValueError) as err:
        raise UserError(str(err)) from err
    print(f"{FLAGS.metric}: {new} against {base}\n")
    print("| label | cases | base | new | difference (95 % CI) | better / equal / worse |\n|---|---|---|---|---|---|")
    for label, r in result.items():
        low, high = r["ci95"]
        print(f"| {label} | {r['n']} | {r['base_mean']:.4f} | {r['new_mean']:.4f} | "
              f"{r['mean_difference']:+.4f} ({low:+.4f}, {high:+.4f}) | {r['better']} / {r['equal']} / {r['worse']} |")
    return 0


def run() -> None:
    """The ``vnet-compare-runs`` command."""
    cli.run(main)


if __name__ == "__main__":
    run()
