"""Segment held-out cases and report Dice / IoU / HD / HD95 / ASSD per case and label.

    python evaluate.py --model=runs/hippocampus --data_dir=DATA --output_dir=OUT [--fold=0]
    python evaluate.py --predictions_dir=PRED --data_dir=DATA --output_dir=OUT   # score files
    python evaluate.py --model=RUN_A,RUN_B --data_dir=DATA --output_dir=OUT      # an ensemble

--model is a training workdir (config.json and the weights of best.npz / checkpoint.npz:
preprocessing and sliding-window settings as at training; --overlap, --mirror_axes and
--postprocess override them) or an exported SavedModel version folder, which runs the same
inference graph (vnet_tf.inference.segmenter). Several comma-separated --model workdirs are an
ensemble: their probabilities are averaged per window (vnet_tf.inference.ensemble). Writes OUT/predictions/, metrics.csv, summary.json and figures/. Exits
non-zero, saying how many, when a case failed.
"""

import vnet_tf  # noqa: F401  (first: turns oneDNN on before TensorFlow loads)

import pathlib
import sys

from absl import app, flags

from vnet_tf.commands import cli
from vnet_tf.core.labels import class_label
from vnet_tf.data.cases import FOLDER_LAYOUTS
from vnet_tf.inference.segmentation import POSTPROCESS_MODES

FLAGS = flags.FLAGS
flags.DEFINE_list("model", [], "a training workdir (config.json + best.npz / checkpoint.npz), or an "
                  "exported SavedModel version folder (EXPORT_BASE/N); several, comma-separated, are scored as "
                  "an ensemble (probabilities averaged; equal preprocessing, patch size and classes needed)")
flags.DEFINE_enum("which", "best", ["best", "final", "final_raw"], "which model of the workdir (final_raw: a run "
                  "with --weight_average, its training weights rather than their average)")
flags.DEFINE_string("predictions_dir", "", "score the predictions in this folder instead of running a model")
flags.DEFINE_string("data_dir", "", "dataset folder with labels (any layout train.py reads)")
flags.DEFINE_enum("layout", "auto", list(FOLDER_LAYOUTS), "dataset layout")
flags.DEFINE_string("output_dir", "", "where the predictions and the report go")
flags.DEFINE_integer("fold", -1, "only the cases of this fold (case-id hash, as train.py); -1 = all")
flags.DEFINE_integer("num_folds", 5, "folds for --fold", lower_bound=2)
flags.DEFINE_integer("max_cases", 0, "score at most this many cases (0 = all)", lower_bound=0)
flags.DEFINE_float("overlap", None, "sliding-window overlap (default: the run's)")
flags.DEFINE_list("mirror_axes", None, "test-time mirroring axes 0=z,1=y,2=x (default: the run's); 'none' = off")
flags.DEFINE_enum("postprocess", None, list(POSTPROCESS_MODES), "post-processing (default: the run's)")
flags.DEFINE_integer("window_batch", None, "windows per forward pass", lower_bound=1)
flags.DEFINE_bool("figures", True, "write PNG figures")


def _check_flags(argv) -> None:
    """Every flag error before any work (the output folder included, before a model loads)."""
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    if bool(FLAGS.model) == bool(FLAGS.predictions_dir):
        raise app.UsageError("give exactly one of --model and --predictions_dir")
    for name in ("data_dir", "output_dir"):
        if not getattr(FLAGS, name):
            raise app.UsageError(f"--{name} is required")
    if not pathlib.Path(FLAGS.data_dir).is_dir():
        raise app.UsageError(f"--data_dir {FLAGS.data_dir}: no such folder")
    for source in FLAGS.model or [FLAGS.predictions_dir]:
        if not pathlib.Path(source).is_dir():
            raise app.UsageError(f"--{'model' if FLAGS.model else 'predictions_dir'} {source}: no such folder")
    from vnet_tf.core.folders import writable_folder  # pylint: disable=import-outside-toplevel
    writable_folder(FLAGS.output_dir, "--output_dir", create=False)


def _selected_cases():
    """``(dataset, cases)``: the dataset and the cases of --fold (at most --max_cases)."""
    from vnet_tf.data.cases import check_fold, find_cases, fold_of  # pylint: disable=import-outside-toplevel
    try:
        dataset = find_cases(FLAGS.data_dir, FLAGS.layout)
    except ValueError as err:
        raise app.UsageError(f"--data_dir: {err}") from err
    cases = dataset.cases
    try:
        check_fold(FLAGS.fold, FLAGS.num_folds)
    except ValueError as err:
        raise app.UsageError(f"--fold / --num_folds: {err}") from err
    if FLAGS.fold >= 0:
        cases = [c for c in cases if fold_of(c.case_id, FLAGS.num_folds) == FLAGS.fold]
    if FLAGS.max_cases:
        cases = cases[: FLAGS.max_cases]
    return dataset, cases


def _model_inputs(cases, settings: dict):
    """``(labels, evaluate_cases keyword arguments)`` for --model; adds the model's settings
    and how many of the cases it trained on to ``settings`` (and warns if any)."""
    from vnet_tf.inference.ensemble import training_cases  # pylint: disable=import-outside-toplevel
    from vnet_tf.evaluation.report import trained_on  # pylint: disable=import-outside-toplevel
    from vnet_tf.inference.loading import load_segment  # pylint: disable=import-outside-toplevel
    try:
        loaded = load_segment(FLAGS.model, FLAGS.which, cli.inference_overrides(
            FLAGS.overlap, FLAGS.mirror_axes, FLAGS.postprocess, FLAGS.window_batch))
    except (FileNotFoundError, ValueError) as err:
        raise app.UsageError(f"--model {err}") from err
    labels = list(range(1, loaded.runs[0]["num_classes"]))
    seen = trained_on({"train_cases": training_cases(loaded.runs)}, cases)
    if seen:
        print(f"warning: {len(seen)} of the {len(cases)} cases evaluated were training cases of "
              f"{','.join(FLAGS.model)} (e.g. {', '.join(seen[:3])}): their scores are not held-out",
              file=sys.stderr)
    settings.update(preprocess=loaded.preprocess.to_dict(), inference=loaded.inference.to_dict(),
                    training_cases_evaluated=len(seen))
    return labels, dict(segment=loaded.segment, preprocess=loaded.preprocess, inference=loaded.inference)


def _print_summary(summary: dict, num_cases: int, names: dict) -> int:
    for k, stats in summary["per_label"].items():
        d, h = stats["dice"], stats["hd95"]
        fmt = lambda v: "n/a" if v is None else f"{v:.3f}"  # noqa: E731
        print(f"{class_label(int(k), names)}: Dice {fmt(d['mean'])} +/- {fmt(d['std'])}, HD95 {fmt(h['mean'])} mm "
              f"({h['missing']} missing), n={d['n']}")
    print(f"report in {pathlib.Path(FLAGS.output_dir).resolve()}")
    if summary["num_failed"]:
        print(f"{summary['num_failed']} of {num_cases} cases failed; see summary.json 'failed'", file=sys.stderr)
        return 1
    return 0


def main(argv):
    _check_flags(argv)
    with cli.output_folder_lock(FLAGS.output_dir, "--output_dir"):  # refused before a model loads
        return _evaluate()


def _evaluate() -> int:
    from vnet_tf.evaluation.report import evaluate_cases  # pylint: disable=import-outside-toplevel
    dataset, cases = _selected_cases()
    settings = {"data_dir": FLAGS.data_dir, "fold": FLAGS.fold, "num_folds": FLAGS.num_folds,
                "model": (FLAGS.model[0] if len(FLAGS.model) == 1 else FLAGS.model) or None,
                "which": FLAGS.which if FLAGS.model else None,
                "predictions_dir": FLAGS.predictions_dir or None}
    if FLAGS.model:
        labels, kwargs = _model_inputs(cases, settings)
    else:
        labels = sorted(k for k in (dataset.labels or {}) if k > 0) or [1]
        kwargs = dict(predictions_dir=FLAGS.predictions_dir)
    summary = evaluate_cases(cases, FLAGS.output_dir, labels, settings=settings, figures=FLAGS.figures,
                             label_names=dataset.labels, **kwargs)
    return _print_summary(summary, len(cases), dataset.labels or {})


def run() -> None:
    """The ``vnet-evaluate`` command (and ``python evaluate.py``)."""
    cli.run(main)


if __name__ == "__main__":
    run()
