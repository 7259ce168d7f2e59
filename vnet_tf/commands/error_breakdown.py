"""Where an evaluation's errors are: missed vs extra voxels, and label swaps, per label.

    python -m vnet_tf.commands.error_breakdown runs/hippocampus/eval_fold0 [--data_dir=DATA]

The argument is an evaluate.py output folder: its summary.json names the cases, the labels
and the dataset (override with --data_dir), and its predictions/ holds the label maps. Prints,
per label over all cases: the reference voxels, the voxels predicted as the label that are
not (extra), the voxels of the label predicted as something else (missed), the share of
those errors that are a swap with another foreground label rather than with background, the
median ratio of predicted to reference volume, and in how many cases the label was
under-segmented (missed > extra).

Read it to choose a lever: a label that is systematically under-segmented may gain from
weighting it up in the loss; balanced errors at the boundary with background will not.
"""

from __future__ import annotations

import json
import pathlib

import numpy as np
from absl import flags

from vnet_tf.data.cases import find_cases
from vnet_tf.evaluation.report import find_prediction
from vnet_tf.core.io import read_volume
from vnet_tf.evaluation.metrics import confusion_matrix
from vnet_tf.commands import cli
from vnet_tf.core.errors import UserError

flags.DEFINE_string("data_dir", "", "the dataset (default: the one summary.json names)")
FLAGS = flags.FLAGS
POSITIONAL = {"EVAL_DIR": "an evaluate.py output folder"}


def breakdown(eval_dir: pathlib.Path, data_dir: str = ""):
    """``(labels, per-case confusion matrices)`` of an evaluate.py output folder."""
    summary_path = eval_dir / "summary.json"
    if not summary_path.is_file():
        raise FileNotFoundError(f"{summary_path}: not found (expected an evaluate.py output folder)")
    summary = json.loads(summary_path.read_text())
    labels = sorted(int(k) for k in summary["per_label"])
    data_dir = data_dir or summary["settings"]["data_dir"]
    by_id = {c.case_id: c for c in find_cases(data_dir).cases}
    predictions = pathlib.Path(summary["settings"].get("predictions_dir") or eval_dir / "predictions")
    matrices = []
    for record in summary["cases"]:
        case_id = record["case_id"]
        if case_id not in by_id:
            raise ValueError(f"case {case_id} of {summary_path} is not in {data_dir}")
        reference, _ = read_volume(by_id[case_id].label)
        prediction, _ = read_volume(find_prediction(predictions, case_id))
        try:
            matrices.append(confusion_matrix(prediction, reference, max(labels) + 1))
        except ValueError as err:
            raise ValueError(f"case {case_id}: {err}") from None
    return labels, np.stack(matrices)


def report(labels, matrices: np.ndarray) -> str:
    total = matrices.sum(0)
    lines = ["| label | reference voxels | extra | missed | swapped with another label | "
             "median predicted / reference volume | cases under-segmented |", "|---|---|---|---|---|---|---|"]
    for k in labels:
        others = [j for j in labels if j != k]
        extra, missed = total[:, k].sum() - total[k, k], total[k].sum() - total[k, k]
        swapped = sum(total[k, j] + total[j, k] for j in others)
        ref, pred = matrices[:, k, :].sum(1), matrices[:, :, k].sum(1)  # per case
        ratio = np.median(pred[ref > 0] / ref[ref > 0]) if np.any(ref > 0) else float("nan")
        under = int(np.sum(ref > pred))  # missed > extra, the correct voxels cancelling
        errors = extra + missed
        share = f"{swapped / errors:.0%}" if errors else "-"
        lines.append(f"| {k} | {total[k].sum()} | {extra} | {missed} | {share} | {ratio:.3f} | "
                     f"{under} / {len(matrices)} |")
    return "\n".join(lines)


def main(argv) -> int:
    eval_dir, = cli.positionals(argv, *POSITIONAL)
    try:
        labels, matrices = breakdown(pathlib.Path(eval_dir), FLAGS.data_dir)
    except (FileNotFoundError, ValueError, KeyError) as err:
        raise UserError(str(err)) from err
    print(f"{eval_dir}: {len(matrices)} cases\n")
    print(report(labels, matrices))
    return 0


def run() -> None:
    """The ``vnet-error-breakdown`` command."""
    cli.run(main)


if __name__ == "__main__":
    run()
