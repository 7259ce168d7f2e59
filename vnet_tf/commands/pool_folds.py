"""Cross-validation: the per-label mean ± std over the cases of several folds' evaluations.

    python -m vnet_tf.commands.pool_folds runs/hippocampus/eval_fold0 runs/hippocampus_fold1/eval_fold1 ...

Arguments are evaluate.py output folders (or their metrics.csv), one per fold. Every case
counts once, scored by the fold model that held it out; a case that appears in two of the
files is refused. Prints a markdown table of Dice, HD95 and ASSD per label (mean ± standard
deviation over cases; distances of an empty mask are left out and counted), and the 95 %
bootstrap interval of the mean Dice over the cases (how far case sampling alone moves it).
"""

from __future__ import annotations

from vnet_tf.commands import cli
from vnet_tf.core.errors import UserError
from vnet_tf.evaluation.comparison import metrics_csv, pooled_summary

POSITIONAL = {"EVALUATION": "evaluate.py output folders (or their metrics.csv), one per fold"}


def main(argv) -> int:
    evaluations = cli.positionals(argv, *POSITIONAL, repeat_last=True)
    try:
        result = pooled_summary([metrics_csv(p) for p in evaluations])
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
    return 0


def run() -> None:
    """The ``vnet-pool-folds`` command."""
    cli.run(main)


if __name__ == "__main__":
    run()
