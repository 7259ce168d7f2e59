"""evaluate.py end to end: scoring existing predictions, running a trained workdir, and a
few hippocampus cases."""

import csv
import json
import shutil

import numpy as np
import SimpleITK as sitk

from conftest import run_command
from helpers import copy_run, edit_config
from vnet_tf.data.demo_data import write_demo_dataset
from vnet_tf.core.io import read_volume, write_volume
from vnet_tf.core.runtime import peak_rss_mb


def _evaluate(*args):
    return run_command("evaluate", *args)


def test_scores_existing_predictions_and_reports_failures(tmp_path):
    data = write_demo_dataset(tmp_path / "data", 3)
    preds = tmp_path / "preds"
    labels = sorted((data / "labelsTr").glob("*.nii.gz"))
    preds.mkdir()
    shutil.copy(labels[0], preds / labels[0].name)
    label, geometry = read_volume(labels[1])
    eroded = label.copy()
    eroded[label == 1] = 0  # label 1 missing entirely in this prediction
    write_volume(preds / labels[1].name, eroded, geometry)
    # no prediction for the third case
    out = _evaluate(f"--predictions_dir={preds}", f"--data_dir={data}", f"--output_dir={tmp_path / 'report'}")
    assert out.returncode == 1 and "1 of 3 cases failed" in out.stderr, out.stderr[-2000:]
    report = tmp_path / "report"
    rows = list(csv.DictReader(open(report / "metrics.csv")))
    assert len(rows) == 4 and {r["label"] for r in rows} == {"1", "2"}
    first = [r for r in rows if r["case_id"] == "demo_000"]
    assert all(float(r["dice"]) == 1.0 and float(r["hd95"]) == 0.0 for r in first)
    missing = [r for r in rows if r["case_id"] == "demo_001" and r["label"] == "1"][0]
    assert float(missing["dice"]) == 0.0 and missing["hd95"] == "nan" and missing["distances_missing"] == "True"
    summary = json.loads((report / "summary.json").read_text())
    assert summary["num_failed"] == 1 and summary["failed"][0]["case_id"] == "demo_002"
    assert summary["per_label"]["1"]["hd95"]["missing"] == 1 and summary["empty_masks"]["1"]["prediction_empty_only"] == 1
    assert summary["per_label"]["2"]["dice"]["mean"] == 1.0
    assert (report / "figures" / "dice_hd95.png").is_file()
    assert (report / "figures" / "demo_000.png").is_file()


def test_evaluates_a_training_workdir(tiny_run, tmp_path):
    run, _ = tiny_run
    data = run.parent / "cache" / "demo_data_6"
    out = _evaluate(f"--model={run}", f"--data_dir={data}", f"--output_dir={tmp_path / 'report'}",
                    "--mirror_axes=2", "--fold=0", "--num_folds=3")
    assert out.returncode == 0, out.stderr[-3000:]
    assert "label 1 (front): Dice" in out.stdout and "ETA" in out.stdout
    report = tmp_path / "report"
    summary = json.loads((report / "summary.json").read_text())
    config = json.loads((run / "config.json").read_text())
    assert sorted(r["case_id"] for r in summary["cases"]) == sorted(config["validation_cases"])
    assert summary["settings"]["inference"]["mirror_axes"] == [2]
    assert summary["settings"]["training_cases_evaluated"] == 0 and "not held-out" not in out.stderr
    # in process: this process's peak so far (the kernel syncs threads' page counts lazily: a
    # later reading may lag by a few MiB)
    assert 100 < summary["peak_memory_mb"] <= peak_rss_mb() + 64
    for record in summary["cases"]:
        written = sitk.ReadImage(str(report / "predictions" / f"{record['case_id']}.nii.gz"))
        original = sitk.ReadImage(str(data / "imagesTr" / f"{record['case_id']}.nii.gz"))
        assert written.GetSize() == original.GetSize() and written.GetSpacing() == original.GetSpacing()
        assert written.GetOrigin() == original.GetOrigin() and written.GetDirection() == original.GetDirection()
        assert np.isfinite(record["labels"]["1"]["dice"])


def test_evaluates_an_ensemble_of_workdirs(tiny_run, tmp_path):
    run, _ = tiny_run
    data = run.parent / "cache" / "demo_data_6"
    held_out = sorted(json.loads((run / "config.json").read_text())["validation_cases"])
    # The same weights with one held-out case listed as trained on: the average of two equal
    # models must reproduce the single model's labels, and the warning must cover both members.
    twin = copy_run(run, tmp_path / "twin", edit_config(lambda c: c["train_cases"].append(held_out[0])))
    common = [f"--data_dir={data}", "--fold=0", "--num_folds=3", "--mirror_axes=none", "--figures=false"]
    single = _evaluate(f"--model={run}", f"--output_dir={tmp_path / 'single'}", *common)
    both = _evaluate(f"--model={run},{twin}", f"--output_dir={tmp_path / 'both'}", *common)
    assert single.returncode == 0 and both.returncode == 0, (single.stderr[-2000:], both.stderr[-2000:])
    assert "training cases" not in single.stderr
    assert f"warning: 1 of the {len(held_out)} cases evaluated were training cases of {run},{twin}" in both.stderr
    summary = json.loads((tmp_path / "both" / "summary.json").read_text())
    assert summary["settings"]["model"] == [str(run), str(twin)] and summary["num_cases"] == len(held_out)
    for case_id in held_out:
        a, _ = read_volume(tmp_path / "single" / "predictions" / f"{case_id}.nii.gz")
        b, _ = read_volume(tmp_path / "both" / "predictions" / f"{case_id}.nii.gz")
        np.testing.assert_array_equal(a, b)


def test_evaluating_training_cases_warns(tiny_run, tmp_path):
    run, _ = tiny_run
    data = run.parent / "cache" / "demo_data_6"
    out = _evaluate(f"--model={run}", f"--data_dir={data}", f"--output_dir={tmp_path / 'report'}",
                    "--mirror_axes=none", "--figures=false")  # every case, the training ones too
    assert out.returncode == 0, out.stderr[-3000:]
    trained = json.loads((run / "config.json").read_text())["train_cases"]
    assert f"warning: {len(trained)} of the 6 cases evaluated were training cases of {run}" in out.stderr
    assert "not held-out" in out.stderr
    summary = json.loads((tmp_path / "report" / "summary.json").read_text())
    assert summary["settings"]["training_cases_evaluated"] == len(trained) > 0


def test_evaluates_hippocampus_cases(tiny_run, tmp_path, hippocampus_dir):
    run, _ = tiny_run
    out = _evaluate(f"--model={run}", f"--data_dir={hippocampus_dir}", f"--output_dir={tmp_path / 'report'}",
                    "--max_cases=2", "--mirror_axes=none", "--figures=false")
    assert out.returncode == 0, out.stderr[-3000:]
    summary = json.loads((tmp_path / "report" / "summary.json").read_text())
    assert summary["num_cases"] == 2 and set(summary["per_label"]) == {"1", "2"}
    assert len(list((tmp_path / "report" / "predictions").glob("hippocampus_*.nii.gz"))) == 2
