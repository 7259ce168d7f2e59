"""vnet_tf.commands.error_breakdown: per-label extra / missed / swapped voxels of an evaluate.py folder."""

import json
import re

import numpy as np
import pytest

from conftest import run_command
from vnet_tf.data.cases import find_cases
from vnet_tf.evaluation.report import evaluate_cases
from vnet_tf.core.io import Geometry, write_volume


def _bench():
    from commands_in_process import flags_of
    with flags_of("error_breakdown") as module:  # (its flags defined beside the other commands')
        return module


def test_breakdown_counts_match_the_voxels_and_the_reported_dice(tmp_path, rng):
    data, preds = tmp_path / "data", tmp_path / "preds"
    geometry = Geometry(spacing=(1.0, 1.0, 1.0), origin=(0.0, 0.0, 0.0))
    truth = {}
    for name in ("case_a", "case_b"):
        ref = rng.integers(0, 3, size=(6, 7, 8)).astype(np.uint8)
        pred = np.where(rng.random(ref.shape) < 0.3, rng.integers(0, 3, size=ref.shape), ref).astype(np.uint8)
        write_volume(data / "imagesTr" / f"{name}.nii.gz", ref.astype(np.float32), geometry)
        write_volume(data / "labelsTr" / f"{name}.nii.gz", ref, geometry)
        write_volume(preds / f"{name}.nii.gz", pred, geometry)
        truth[name] = (ref, pred)
    (data / "dataset.json").write_text(json.dumps({
        "labels": {"0": "background", "1": "a", "2": "b"},
        "training": [{"image": f"./imagesTr/{n}.nii.gz", "label": f"./labelsTr/{n}.nii.gz"} for n in truth]}))
    out = tmp_path / "eval"
    summary = evaluate_cases(find_cases(data).cases, out, (1, 2), predictions_dir=preds,
                             settings={"data_dir": str(data), "predictions_dir": str(preds)}, figures=False)
    labels, matrices = _bench().breakdown(out)
    assert labels == [1, 2] and matrices.shape == (2, 3, 3)
    ref = np.concatenate([truth[r["case_id"]][0].ravel() for r in summary["cases"]])
    pred = np.concatenate([truth[r["case_id"]][1].ravel() for r in summary["cases"]])
    text = _bench().report(labels, matrices)
    for k in (1, 2):
        extra, missed = int(np.sum((pred == k) & (ref != k))), int(np.sum((ref == k) & (pred != k)))
        swapped = int(np.sum((pred == k) & (ref == 3 - k)) + np.sum((ref == k) & (pred == 3 - k)))
        assert f"| {k} | {int(np.sum(ref == k))} | {extra} | {missed} | {swapped / (extra + missed):.0%} |" in text
        case_ref = np.array([np.sum(truth[r["case_id"]][0] == k) for r in summary["cases"]])
        case_pred = np.array([np.sum(truth[r["case_id"]][1] == k) for r in summary["cases"]])
        assert (f"| {np.median(case_pred / case_ref):.3f} | {int(np.sum(case_ref > case_pred))} / 2 |"
                in text.splitlines()[1 + k])
        for i, record in enumerate(summary["cases"]):
            m = matrices[i]
            assert 2 * m[k, k] / (m[k].sum() + m[:, k].sum()) == pytest.approx(record["labels"][str(k)]["dice"])


def test_a_folder_without_summary_is_refused_by_name(tmp_path):
    refused = run_command("error_breakdown", tmp_path)
    assert refused.returncode == 2
    assert re.search(f"error: {tmp_path}/summary.json: not found", refused.stderr)
