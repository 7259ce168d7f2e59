"""Overlap and surface-distance metrics in millimetres, per label.

Definitions (``P`` prediction mask, ``R`` reference mask of one label):

- Dice = 2|P∩R| / (|P| + |R|); IoU = |P∩R| / |P∪R|.
- Surface of a mask: its voxels with at least one face neighbour (6-neighbourhood)
  outside the mask; the volume's border counts as outside.
- ``d(p, S)``: Euclidean distance in mm (using the spacing) from voxel centre ``p`` to
  the nearest voxel centre of surface ``S``.
- Hausdorff (HD) = max(max_{p∈∂P} d(p, ∂R), max_{r∈∂R} d(r, ∂P)).
- HD95 = max(95th percentile of d(∂P, ∂R), 95th percentile of d(∂R, ∂P)) (as MONAI).
- ASSD = (Σ_{p∈∂P} d(p, ∂R) + Σ_{r∈∂R} d(r, ∂P)) / (|∂P| + |∂R|).
- ASD = mean_{p∈∂P} d(p, ∂R): one way, from the prediction's surface to the reference's
  (medpy's ``asd``, which the left-atrium literature reports).
- HD95 pooled = 95th percentile of d(∂P, ∂R) and d(∂R, ∂P) together (medpy's ``hd95``; the
  left-atrium literature's "95HD"), beside HD95 above, the larger of the two one-way percentiles.
- Volumes in mm³: reference, prediction, and prediction − reference.

Empty masks:

- both empty: Dice = IoU = 1 and HD = HD95 = ASSD = 0 (a correct "nothing there");
- exactly one empty: Dice = IoU = 0 and the distances are undefined: NaN, flagged by
  ``distances_missing = True``. Summaries never drop them silently: they report the mean
  over the defined values together with the number of missing ones.
"""

from __future__ import annotations

import math
from typing import Dict, Iterable, List, Sequence

import numpy as np
import SimpleITK as sitk

METRICS = ("dice", "iou", "hd", "hd95", "assd", "asd", "hd95_pooled", "volume_reference_mm3",
           "volume_prediction_mm3", "volume_difference_mm3")
DISTANCES = ("hd", "hd95", "assd", "asd", "hd95_pooled")


def surface(mask: np.ndarray) -> np.ndarray:
    """Boolean surface voxels of a boolean ``(z, y, x)`` mask (6-neighbourhood)."""
    mask = np.asarray(mask, bool)
    padded = np.pad(mask, 1)
    interior = padded[1:-1, 1:-1, 1:-1].copy()
    for axis in range(3):
        for shift in (-1, 1):
            interior &= np.roll(padded, shift, axis=axis)[1:-1, 1:-1, 1:-1]
    return mask & ~interior


def _distance_to(surface_mask: np.ndarray, spacing_zyx: Sequence[float]) -> np.ndarray:
    """Distance (mm) of every voxel centre to the nearest voxel of ``surface_mask``."""
    image = sitk.GetImageFromArray(surface_mask.astype(np.uint8))
    image.SetSpacing(tuple(float(s) for s in spacing_zyx[::-1]))
    distance = sitk.SignedMaurerDistanceMap(image, insideIsPositive=False, squaredDistance=False,
                                            useImageSpacing=True)
    return np.abs(sitk.GetArrayFromImage(distance))


def surface_distances(prediction: np.ndarray, reference: np.ndarray, spacing_zyx: Sequence[float]):
    """``(d(∂P → ∂R), d(∂R → ∂P))`` as 1-D arrays in mm (both masks non-empty)."""
    sp, sr = surface(prediction), surface(reference)
    return _distance_to(sr, spacing_zyx)[sp], _distance_to(sp, spacing_zyx)[sr]


def label_metrics(prediction: np.ndarray, reference: np.ndarray, spacing_zyx: Sequence[float]) -> Dict[str, float]:
    """All metrics of one label from boolean masks ``(z, y, x)``; see the module docstring."""
    p, r = np.asarray(prediction, bool), np.asarray(reference, bool)
    if p.shape != r.shape:
        raise ValueError(f"prediction shape {p.shape} differs from reference shape {r.shape}")
    voxel = float(np.prod(spacing_zyx))
    np_, nr = int(p.sum()), int(r.sum())
    inter, union = int(np.sum(p & r)), int(np.sum(p | r))
    out = {"volume_reference_mm3": nr * voxel, "volume_prediction_mm3": np_ * voxel,
           "volume_difference_mm3": (np_ - nr) * voxel, "distances_missing": False}
    if np_ == 0 and nr == 0:
        out.update(dice=1.0, iou=1.0, **{name: 0.0 for name in DISTANCES})
        return out
    out.update(dice=2.0 * inter / (np_ + nr), iou=inter / union)
    if np_ == 0 or nr == 0:
        out.update(distances_missing=True, **{name: math.nan for name in DISTANCES})
        return out
    d_pr, d_rp = surface_distances(p, r, spacing_zyx)
    out.update(hd=float(max(d_pr.max(), d_rp.max())),
               hd95=float(max(np.percentile(d_pr, 95), np.percentile(d_rp, 95))),
               assd=float((d_pr.sum() + d_rp.sum()) / (d_pr.size + d_rp.size)),
               asd=float(d_pr.mean()), hd95_pooled=float(np.percentile(np.concatenate([d_pr, d_rp]), 95)))
    return out


def case_metrics(prediction: np.ndarray, reference: np.ndarray, spacing_zyx: Sequence[float],
                 labels: Iterable[int]) -> Dict[int, Dict[str, float]]:
    """``{label: metrics}`` for integer label maps of one case."""
    return {int(k): label_metrics(prediction == k, reference == k, spacing_zyx) for k in labels}


def confusion_matrix(prediction: np.ndarray, reference: np.ndarray, num_classes: int) -> np.ndarray:
    """Voxel counts ``m[r, p]``: reference label ``r`` predicted as ``p``, for labels
    ``0 .. num_classes - 1`` (int64, ``(num_classes, num_classes)``)."""
    p, r = np.asarray(prediction), np.asarray(reference)
    if p.shape != r.shape:
        raise ValueError(f"prediction shape {p.shape} differs from reference shape {r.shape}")
    for name, arr in (("prediction", p), ("reference", r)):
        if arr.size and (arr.min() < 0 or arr.max() >= num_classes or np.any(arr != np.round(arr))):
            raise ValueError(f"{name} holds values outside the integer labels 0..{num_classes - 1}: "
                             f"{np.unique(arr)[:10].tolist()}")
    flat = r.astype(np.int64).ravel() * num_classes + p.astype(np.int64).ravel()
    return np.bincount(flat, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def summarize(values: List[float]) -> Dict[str, float]:
    """Mean / median / std / min / max over the defined (non-NaN) values, and how many were
    missing."""
    arr = np.asarray(values, np.float64)
    defined = arr[~np.isnan(arr)]
    stats = {"n": int(defined.size), "missing": int(arr.size - defined.size)}
    if defined.size:
        stats.update(mean=float(defined.mean()), median=float(np.median(defined)),
                     std=float(defined.std()), min=float(defined.min()), max=float(defined.max()))
    else:
        stats.update(mean=None, median=None, std=None, min=None, max=None)
    return stats
