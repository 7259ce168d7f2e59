"""Paired comparison of two evaluations of the same cases (two ``metrics.csv`` files from
``evaluate.py``): is a change better, and by how much beyond the case-to-case noise?

For each label, the per-case differences ``new - base`` of a metric give the mean
difference, its 95 % bootstrap interval (resampling cases, fixed seed), and how many cases
improved, stayed equal or got worse. Both files must score the same cases and labels.
"""

from __future__ import annotations

import csv
import math
import pathlib
from typing import Dict, Tuple

import numpy as np

from vnet_tf.core.io import PathLike
from vnet_tf.evaluation.metrics import summarize


def metrics_csv(path: PathLike) -> pathlib.Path:
    """The ``metrics.csv`` of an ``evaluate.py`` output folder, or ``path`` itself if it is a file."""
    path = pathlib.Path(path)
    return path / "metrics.csv" if path.is_dir() else path


def metric_columns(path: PathLike) -> Tuple[str, ...]:
    """The columns of an ``evaluate.py`` ``metrics.csv``; none where the file is missing."""
    path = pathlib.Path(path)
    if not path.is_file():
        return ()
    with path.open(newline="") as handle:
        return tuple(next(csv.reader(handle), []))


def read_metric(path: PathLike, metric: str) -> Dict[Tuple[str, str], float]:
    """``{(case_id, label): value}`` of one column of an ``evaluate.py`` ``metrics.csv``."""
    path = pathlib.Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such metrics file (expected evaluate.py's metrics.csv)")
    with path.open(newline="") as handle:
        reader = csv.DictReader(handle)
        if metric not in (reader.fieldnames or []):
            raise ValueError(f"{path}: no column {metric!r}; columns are {reader.fieldnames}")
        values = {}
        for row in reader:
            text = row[metric]
            values[(row["case_id"], row["label"])] = float(text) if text not in ("", None) else math.nan
    return values


LOWER_IS_BETTER = ("hd", "hd95", "assd")


def bootstrap_interval(values, rng: np.random.Generator, resamples: int = 10000) -> Tuple[float, float]:
    """The 95 % bootstrap interval of the mean of ``values`` (resampled with replacement
    ``resamples`` times with ``rng``); ``(nan, nan)`` when there are no values."""
    values = np.asarray(values, dtype=np.float64)
    if not len(values):
        return math.nan, math.nan
    means = values[rng.integers(0, len(values), size=(resamples, len(values)))].mean(axis=1)
    low, high = np.percentile(means, [2.5, 97.5])
    return float(low), float(high)


def paired_comparison(base: Dict[Tuple[str, str], float], new: Dict[Tuple[str, str], float],
                      higher_is_better: bool = True, resamples: int = 10000,
                      seed: int = 0) -> Dict[str, dict]:
    """Per label: ``n``, ``base_mean``, ``new_mean``, ``mean_difference`` (new - base),
    ``ci95`` (bootstrap over cases), ``better`` / ``equal`` / ``worse`` case counts (for a
    distance, ``higher_is_better=False``, a lower value is better).
    Pairs with a NaN on either side (a distance of an empty mask) are left out and counted
    in ``skipped``.

    Raises:
      ValueError: if the two evaluations do not cover the same (case, label) pairs.
    """
    only_base, only_new = sorted(set(base) - set(new)), sorted(set(new) - set(base))
    if only_base or only_new:
        raise ValueError(f"the evaluations do not score the same cases: {len(only_base)} (case, label) pairs only "
                         f"in the base (e.g. {only_base[:3]}), {len(only_new)} only in the new one "
                         f"(e.g. {only_new[:3]})")
    rng = np.random.default_rng(seed)
    sign = 1.0 if higher_is_better else -1.0
    out = {}
    for label in sorted({label for _, label in base}, key=lambda s: (len(s), s)):
        keys = sorted(k for k in base if k[1] == label)
        pairs = np.array([(base[k], new[k]) for k in keys], dtype=np.float64)
        finite = np.all(np.isfinite(pairs), axis=1)
        pairs = pairs[finite]
        diff = pairs[:, 1] - pairs[:, 0]
        low, high = bootstrap_interval(diff, rng, resamples)
        out[label] = {"n": int(len(diff)), "skipped": int((~finite).sum()),
                      "base_mean": float(pairs[:, 0].mean()) if len(diff) else math.nan,
                      "new_mean": float(pairs[:, 1].mean()) if len(diff) else math.nan,
                      "mean_difference": float(diff.mean()) if len(diff) else math.nan,
                      "ci95": (float(low), float(high)),
                      "better": int((sign * diff > 0).sum()), "equal": int((diff == 0).sum()),
                      "worse": int((sign * diff < 0).sum())}
    return out


def pooled_summary(paths, metrics=("dice", "hd95", "assd")) -> Dict[str, Dict[str, dict]]:
    """``{label: {metric: summarize(...)}}`` over the cases of several ``metrics.csv`` files,
    as a cross-validation reports its folds together: each case counts once, scored by the
    one evaluation that held it out. Each metric's entry also holds ``ci95``, the 95 %
    bootstrap interval of its mean over the cases (fixed seed; cases without a value left out).

    Raises:
      ValueError: a (case, label) pair occurs in more than one file (the folds overlap), or
        the files score different labels.
    """
    pooled: Dict[str, Dict[Tuple[str, str], float]] = {m: {} for m in metrics}
    labels_of = {}
    for path in paths:
        for metric in metrics:
            values = read_metric(path, metric)
            seen = sorted(set(values) & set(pooled[metric]))
            if seen:
                raise ValueError(f"{path}: {len(seen)} (case, label) pairs are already in an earlier file "
                                 f"(e.g. {seen[:3]}); each case must be scored by one fold only")
            pooled[metric].update(values)
        labels_of[str(path)] = sorted({label for _, label in values})
    if len({tuple(v) for v in labels_of.values()}) > 1:
        raise ValueError(f"the files score different labels: {labels_of}")
    labels = sorted({label for _, label in pooled[metrics[0]]}, key=lambda s: (len(s), s))
    out = {}
    for label in labels:
        out[label] = {}
        for m in metrics:
            values = [v for (_, lab), v in pooled[m].items() if lab == label]
            finite = [v for v in values if math.isfinite(v)]
            out[label][m] = {**summarize(values), "ci95": bootstrap_interval(finite, np.random.default_rng(0))}
    return out
