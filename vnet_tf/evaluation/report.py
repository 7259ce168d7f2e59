"""Score a set of cases: segment them (or read existing predictions), write each prediction
in its scan's own format and geometry, and report metrics per case and label.

Outputs in ``output_dir``: ``predictions/<case><suffix of the scan>``; ``metrics.csv`` (one
row per case and label; written as ``metrics.partial.csv`` row by row while cases are
scored, renamed when all are); ``summary.json``, written last and atomically (per-case
records; mean / median / std per label and over the foreground labels; empty-mask counts;
failed cases; the settings); ``figures/`` (per case, three orthogonal mid-slices through
the reference structure, the reference filled and the prediction outlined; Dice and HD95
per label over the cases in ``dice_hd95.png``; :mod:`vnet_tf.evaluation.figures`).

A case that fails (unreadable file, geometry mismatch, a missing or ambiguous prediction,
a reference label holding values outside the classes) is reported in ``failed`` with the
reason and skipped; the others are still scored. The output folder is checked to be
writable before any case is predicted, and locked while it is written
(:mod:`vnet_tf.core.lock`); an earlier evaluation's report found there moves into
``superseded/`` before the first prediction is written, so that no report describes
predictions it did not score.
"""

from __future__ import annotations

import csv
import json
import math
import os
import pathlib
import shutil
import sys
import time
from typing import Callable, List, Optional, Sequence

import numpy as np
import SimpleITK as sitk

from vnet_tf.data.cases import Case
from vnet_tf.inference.config import InferenceConfig
from vnet_tf.core.errors import UserError, describe
from vnet_tf.evaluation.figures import case_figure, metric_plot
from vnet_tf.core.folders import VOLUME_TEMPORARIES, atomic_write_text, remove_stale, writable_folder
from vnet_tf.core.lock import folder_lock
from vnet_tf.core.runtime import peak_rss_mb
from vnet_tf.core.io import PathLike, case_stem, read_image, read_volume, volume_suffix, write_volume
from vnet_tf.core.labels import value_problem
from vnet_tf.evaluation.metrics import METRICS, case_metrics, summarize
from vnet_tf.data.preprocess import PreprocessConfig
from vnet_tf.inference.segmentation import SegmentFunction, predict_case

CSV_FIELDS = ("case_id", "label") + METRICS + ("distances_missing",)
PARTIAL_CSV = "metrics.partial.csv"
REPORT_TEMPORARIES = (".*.json.*.tmp",)
# An evaluation's report, summary.json first: what set_aside_report moves into SUPERSEDED.
REPORT_FILES = ("summary.json", "metrics.csv", PARTIAL_CSV, "figures")
SUPERSEDED = "superseded"


def find_prediction(predictions_dir: pathlib.Path, case_id: str) -> pathlib.Path:
    """The one volume file named ``<case_id><volume suffix>`` in ``predictions_dir``."""
    matches = sorted(p for p in predictions_dir.iterdir() if volume_suffix(p) and case_stem(p) == case_id)
    if not matches:
        raise UserError(f"no prediction for case {case_id} in {predictions_dir} "
                        f"(expected one file named {case_id}.nii.gz, .mha, ...)")
    if len(matches) > 1:
        raise UserError(f"{len(matches)} predictions for case {case_id}: {', '.join(p.name for p in matches)} "
                        f"in {predictions_dir}; expected one (remove the others)")
    return matches[0]


def check_reference(reference: np.ndarray, labels: Sequence[int], path) -> None:
    """Refuses a reference label holding a value that is not background or one of ``labels``:
    its voxels would be scored as no class at all."""
    values = np.unique(reference)
    problem = value_problem(values, max(labels, default=0) + 1)
    unscored = [] if problem else sorted({int(v) for v in values} - {0, *labels})
    if unscored:
        problem = f"label values {unscored} are not among the classes scored {sorted(labels)}"
    if problem:
        raise UserError(f"reference label {path}: {problem}")


def trained_on(run: dict, cases: Sequence[Case]) -> List[str]:
    """The ids of ``cases`` that the run (its ``config.json``) trained on, in order: scores on
    these are not held-out."""
    seen = set(run.get("train_cases") or ())
    return [c.case_id for c in cases if c.case_id in seen]


def _progress(done: int, total: int, started: float, text: str) -> None:
    width = 30
    filled = int(width * done / max(total, 1))
    elapsed = time.perf_counter() - started
    eta = elapsed / max(done, 1) * (total - done)
    sys.stdout.write(f"[{'#' * filled}{'.' * (width - filled)}] {done}/{total} ETA {eta:5.0f}s {text}\n")
    sys.stdout.flush()


def evaluate_cases(cases: Sequence[Case], output_dir: PathLike, labels: Sequence[int],
                   segment: Optional[SegmentFunction] = None, preprocess: Optional[PreprocessConfig] = None,
                   inference: Optional[InferenceConfig] = None, predictions_dir: Optional[PathLike] = None,
                   settings: Optional[dict] = None, figures: bool = True,
                   progress: Callable[[int, int, float, str], None] = _progress,
                   label_names: Optional[dict] = None) -> dict:
    """Segments (with ``segment``, the inference graph) or reads (from ``predictions_dir``) every case, scores
    it against its label for ``labels`` (foreground label values) and writes the report; the
    figures name each class as ``label_names`` (the dataset's, number -> name) does.
    Returns the summary (also written to ``summary.json``)."""
    if (segment is None) == (predictions_dir is None):
        raise ValueError("give either segment (a model) or predictions_dir, not both or neither")
    out = writable_folder(output_dir, "output_dir")
    with folder_lock(out, "output_dir"):
        writable_folder(out / "predictions", "output_dir")
        remove_stale(out, REPORT_TEMPORARIES)
        remove_stale(out / "predictions", VOLUME_TEMPORARIES)
        set_aside_report(out)
        return _score_cases(cases, out, labels, segment, preprocess, inference, predictions_dir, settings,
                            (label_names or {}) if figures else None, progress)


def set_aside_report(out: pathlib.Path) -> List[str]:
    """Moves an earlier evaluation's report (:data:`REPORT_FILES`) from ``out`` into
    ``out/superseded/`` (replacing what an evaluation before it left there), ``summary.json``
    first: from now on the folder's predictions are replaced one by one, and no report may
    describe them until the new one is written. Returns the names moved."""
    found = [name for name in REPORT_FILES if (out / name).exists()]
    if not found:
        return []
    aside = out / SUPERSEDED
    if aside.exists():
        shutil.rmtree(aside)
    aside.mkdir()
    for name in found:
        os.replace(out / name, aside / name)
    print(f"note: {out} held the report of an earlier evaluation; moved {', '.join(found)} into {aside}",
          file=sys.stderr)
    return found


def _score_cases(cases, out: pathlib.Path, labels, segment, preprocess, inference, predictions_dir, settings,
                 figure_names, progress) -> dict:
    """:func:`evaluate_cases` with the output folder locked and cleared of an earlier report;
    ``figure_names``: the class names the figures use, or ``None`` for no figures."""
    records, failed, timings = [], [], []
    started = time.perf_counter()
    rows = _RowWriter(out / PARTIAL_CSV)
    for i, case in enumerate(cases):
        try:
            if case.label is None:
                raise UserError(f"case {case.case_id} has no reference label")
            reference, ref_geometry = read_volume(case.label)
            check_reference(reference, labels, case.label)
            t0 = time.perf_counter()
            scan = None
            if segment is not None:
                images = [read_image(p) for p in case.images]
                scan = images[0]
                prediction = predict_case(images, segment, inference.postprocess, inference.min_size, preprocess.n4,
                                          names=tuple(str(p) for p in case.images))
                label, geometry = prediction.label, prediction.geometry
                timings.append(time.perf_counter() - t0)
                target = out / "predictions" / f"{case.case_id}{volume_suffix(case.images[0])}"
                write_volume(target, label.astype(np.uint8), geometry)
            else:
                label, geometry = read_volume(find_prediction(pathlib.Path(predictions_dir), case.case_id))
            problems = geometry.differences(ref_geometry)
            if problems or label.shape != reference.shape:
                raise UserError(f"prediction of {case.case_id} is not on the reference grid: "
                                f"shape {label.shape} vs {reference.shape}; {'; '.join(problems)}")
            spacing_zyx = tuple(ref_geometry.spacing[::-1])
            scores = case_metrics(label, reference, spacing_zyx, labels)
            records.append({"case_id": case.case_id, "labels": {str(k): v for k, v in scores.items()}})
            rows.write(records[-1])
            if figure_names is not None:
                _case_figure(out / "figures" / f"{case.case_id}.png", reference, label, case, labels, scan,
                             figure_names)
            text = " ".join(f"dice{k}={v['dice']:.3f}" for k, v in scores.items())
        except Exception as err:  # reported, skipped, counted: one case never costs the others' results
            failed.append({"case_id": case.case_id, "error": describe(err) or f"{type(err).__name__}: {err}"})
            text = f"FAILED: {failed[-1]['error']}"
        progress(i + 1, len(cases), started, f"{case.case_id} {text}")
    summary = _summarize(records, failed, labels, settings or {})
    if timings:
        summary["seconds_per_case"] = summarize(timings)
    summary["peak_memory_mb"] = round(peak_rss_mb(), 1)  # this process's: the model, the scans, the metrics
    rows.close()
    os.replace(out / PARTIAL_CSV, out / "metrics.csv")
    atomic_write_text(out / "summary.json", json.dumps(_json_safe(summary), indent=2))
    if figure_names is not None and records:
        metric_plot(out / "figures" / "dice_hd95.png", records, labels, figure_names)
    return summary


def _summarize(records: List[dict], failed: List[dict], labels: Sequence[int], settings: dict) -> dict:
    per_label, empty = {}, {}
    for k in labels:
        rows = [r["labels"][str(k)] for r in records]
        per_label[str(k)] = {m: summarize([row[m] for row in rows]) for m in METRICS}
        empty[str(k)] = {
            "both_empty": sum(1 for row in rows if row["volume_reference_mm3"] == 0 and row["volume_prediction_mm3"] == 0),
            "reference_empty_only": sum(1 for row in rows if row["volume_reference_mm3"] == 0 < row["volume_prediction_mm3"]),
            "prediction_empty_only": sum(1 for row in rows if row["volume_prediction_mm3"] == 0 < row["volume_reference_mm3"]),
        }
    foreground = {}
    for m in ("dice", "iou", "hd", "hd95", "assd"):
        case_means = []
        for r in records:
            vals = [r["labels"][str(k)][m] for k in labels]
            vals = [v for v in vals if not math.isnan(v)]
            case_means.append(float(np.mean(vals)) if vals else math.nan)
        foreground[m] = summarize(case_means)
    return {"cases": records, "per_label": per_label, "foreground_mean": foreground,
            "empty_masks": empty, "failed": failed, "num_cases": len(records), "num_failed": len(failed),
            "rules": ("both masks empty: Dice = IoU = 1, distances 0; one empty: Dice = IoU = 0, distances "
                      "missing (NaN in metrics.csv), excluded from distance means and counted in 'missing'"),
            "settings": settings}


def _json_safe(value):
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value


class _RowWriter:
    """``metrics.csv``'s rows, appended and flushed as each case is scored."""

    def __init__(self, path: pathlib.Path):
        self._handle = open(path, "w", newline="", encoding="utf-8")  # pylint: disable=consider-using-with
        self._writer = csv.DictWriter(self._handle, fieldnames=CSV_FIELDS)
        self._writer.writeheader()

    def write(self, record: dict) -> None:
        for k, m in record["labels"].items():
            self._writer.writerow({"case_id": record["case_id"], "label": k, **{f: m[f] for f in CSV_FIELDS[2:]}})
        self._handle.flush()

    def close(self) -> None:
        self._handle.close()


def _case_figure(path: pathlib.Path, reference, prediction, case: Case, labels, scan, names: dict) -> None:
    # The scan already read for prediction, else read it (scoring existing predictions).
    image = sitk.GetArrayFromImage(scan) if scan is not None else read_volume(case.images[0])[0]
    case_figure(path, image[..., 0] if image.ndim == 4 else image, reference, prediction, labels,
                f"{case.case_id}: reference filled, prediction outlined", names)
