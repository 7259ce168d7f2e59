"""The fault matrix: what a user sees for each bad input, broken file or failing disk.

Every row builds one faulty input on tiny data and runs the command as its command line
does, in the test's process (``tests/commands_in_process.py``). Each must end with the exit code and the words listed, never a traceback, and must leave the
results it found in place. Kills during training and export are in test_train.py
(``test_kill_and_resume_gives_identical_weights``) and test_export.py
(``test_versions_and_killed_export``); the serving requests in test_export.py.
"""

import contextlib
import errno
import json
import os
import pathlib
import shutil
import subprocess
import sys
import time

import numpy as np
import pytest

from commands_in_process import run_case
from conftest import TINY_TRAIN, run_command
from helpers import copy_run, edit_config

# One worker runs the whole matrix: its rows share module fixtures that cost a run each.
pytestmark = pytest.mark.xdist_group("fault_matrix")

OLD = time.time() - 3600  # the modification time of temporaries "left by a killed process"


# ---------------------------------------------------------------- inputs

def _dataset_json(root):
    return json.loads((root / "dataset.json").read_text(encoding="utf-8"))


def _write_json(root, index):
    (root / "dataset.json").write_text(json.dumps(index), encoding="utf-8")


def _edit_label(root, case_id, edit, dtype=np.int16):
    from vnet_tf.core.io import read_volume, write_volume
    path = root / "labelsTr" / f"{case_id}.nii.gz"
    array, geometry = read_volume(path)
    write_volume(path, edit(array.astype(dtype)), geometry)


def _set_voxel(value):
    def edit(array):
        array[0, 0, 0] = value
        return array
    return edit


def _undeclared(root):
    index = _dataset_json(root)
    del index["labels"]
    _write_json(root, index)


def _split(root):
    """(a training case id, a validation case id) of fold 0 of 3, as the tiny runs split."""
    from vnet_tf.data.cases import fold_of
    ids = [pathlib.Path(e["image"]).name.split(".")[0] for e in _dataset_json(root)["training"]]
    return next(i for i in ids if fold_of(i, 3) != 0), next(i for i in ids if fold_of(i, 3) == 0)


def _faulty_datasets(demo, root):
    """name -> a copy of the demo dataset with one fault."""
    made = {}

    def variant(name, *edits):
        target = root / name
        shutil.copytree(demo, target)
        for edit in edits:
            edit(target)
        made[name] = target

    train_id, val_id = _split(demo)
    variant("label_256_undeclared", _undeclared, lambda r: _edit_label(r, train_id, _set_voxel(256)))
    variant("label_minus_one_undeclared", _undeclared, lambda r: _edit_label(r, train_id, _set_voxel(-1)))
    variant("stray_7_in_training_undeclared", _undeclared, lambda r: _edit_label(r, train_id, _set_voxel(7)))
    variant("stray_7_in_validation_undeclared", _undeclared, lambda r: _edit_label(r, val_id, _set_voxel(7)))
    variant("value_7_declared_0_2", lambda r: _edit_label(r, val_id, _set_voxel(7)))
    variant("fractional_label", lambda r: _edit_label(r, train_id, lambda a: a * np.float32(0.5), np.float32))

    def drop_validation_label(r):
        index = _dataset_json(r)
        for entry in index["training"]:
            if val_id in entry["image"]:
                del entry["label"]
        _write_json(r, index)

    variant("validation_entry_without_label", drop_validation_label)

    def word_label(r):
        index = _dataset_json(r)
        index["labels"] = {"0": "background", "one": "front", "2": "back"}
        _write_json(r, index)

    variant("labels_key_one", word_label)

    def truncate_index(r):
        text = (r / "dataset.json").read_text(encoding="utf-8")
        (r / "dataset.json").write_text(text[: len(text) // 2], encoding="utf-8")

    variant("truncated_dataset_json", truncate_index)
    variant("missing_image", lambda r: (r / "imagesTr" / f"{val_id}.nii.gz").unlink())

    def two_channels(r):  # one 4D case of 2 channels among 1-channel cases, no modality declared
        import SimpleITK as sitk
        index = _dataset_json(r)
        index.pop("modality", None)
        _write_json(r, index)
        path = r / "imagesTr" / f"{train_id}.nii.gz"
        image = sitk.ReadImage(str(path))
        sitk.WriteImage(sitk.JoinSeries([image, image]), str(path))

    variant("two_channels_in_one_case_undeclared", two_channels)
    variant("nan_voxel_in_validation_image", lambda r: _edit_image(r, val_id, _set_voxel(np.nan)))

    def symlinked(r):  # every listed file a link to a store file of another name
        store = r.parent / "store"
        store.mkdir(exist_ok=True)
        for i, path in enumerate(sorted([*(r / "imagesTr").iterdir(), *(r / "labelsTr").iterdir()])):
            target = store / f"blob_{i}.nii.gz"
            shutil.move(path, target)
            path.symlink_to(target)

    variant("symlinked_from_a_store", symlinked)
    return made, train_id, val_id


def _edit_image(root, case_id, edit):
    from vnet_tf.core.io import read_volume, write_volume
    path = root / "imagesTr" / f"{case_id}.nii.gz"
    array, geometry = read_volume(path)
    write_volume(path, edit(array.astype(np.float32)), geometry)


def _truncate(path):
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 3])


def _random_bytes(path):
    path.write_bytes(np.random.default_rng(0).bytes(4096))


@contextlib.contextmanager
def _unwritable(*folders):
    """The folders made unwritable for this process (root: the immutable attribute; others:
    mode 0555); yields False where that did not take (the rows that need it skip)."""
    undo = []
    try:
        for folder in folders:
            folder.mkdir(parents=True, exist_ok=True)
            if os.geteuid() == 0:
                ok = subprocess.run(["chattr", "+i", str(folder)], capture_output=True).returncode == 0 \
                    if shutil.which("chattr") else False
                if ok:
                    undo.append(lambda f=folder: subprocess.run(["chattr", "-i", str(f)], capture_output=True))
            else:
                folder.chmod(0o555)
                undo.append(lambda f=folder: f.chmod(0o755))
        yield all(_refuses_writes(f) for f in folders)
    finally:
        for step in undo:
            step()


def _refuses_writes(folder):
    try:
        (folder / ".probe").write_text("x")
    except OSError:
        return True
    (folder / ".probe").unlink()
    return False


def _run_rows(command, rows):
    """Runs ``rows`` (name -> argv) of ``command`` in this process; name -> result."""
    return {name: run_case(command, argv) for name, argv in rows.items()}


def _python_lines(stderr):
    """stderr without TensorFlow's native log lines (they bypass Python's streams)."""
    return [line for line in stderr.splitlines() if line.strip()]


def _check(result, code, words, name):
    text = result["stdout"] + result["stderr"]
    assert "Traceback" not in text, (name, text[-3000:])
    assert result["code"] == code, (name, result["code"], text[-3000:])
    for word in words:
        assert word in text, (name, word, text[-3000:])
    if code == 2:
        errors = [line for line in _python_lines(result["stderr"]) if line.startswith("error:")]
        assert len(errors) == 1, (name, result["stderr"][-3000:])


# ---------------------------------------------------------------- train.py

@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """The demo dataset, its faulty copies, and places for runs."""
    from vnet_tf.data.demo_data import write_demo_dataset
    root = tmp_path_factory.mktemp("faults")
    demo = write_demo_dataset(root / "demo", 6)
    datasets, train_id, val_id = _faulty_datasets(demo, root / "data")
    (root / "a_file").write_text("not a folder")
    return {"root": root, "demo": demo, "data": datasets, "train_id": train_id, "val_id": val_id}


def _train_args(world, workdir, *extra, data=None):
    root = world["root"]
    return ["--flagfile=configs/demo.flags", *TINY_TRAIN, "--steps=2", "--validation_every=2",
            "--checkpoint_every=1", f"--cache_dir={root / 'cache'}", f"--workdir={workdir}",
            *([f"--data_dir={data}"] if data else []), *extra]


TRAIN_DATA_ROWS = {  # dataset variant -> words of the message
    "label_256_undeclared": ["the data check found unusable cases", "label values [256] lie outside class numbers 0..255"],
    "label_minus_one_undeclared": ["label values [-1] lie outside class numbers 0..255"],
    "stray_7_in_training_undeclared": ["label values [7] make the classes 0..7", "[3, 4, 5, 6] occur in no case"],
    "stray_7_in_validation_undeclared": ["label values [7] make the classes 0..7"],
    "value_7_declared_0_2": ["label values [7] lie outside the declared classes 0..2"],
    "fractional_label": ["label values are not integers (found [0.5])"],
    "validation_entry_without_label": ["lists no label for this case"],
    "labels_key_one": ["dataset.json: 'labels' keys must be class numbers", "['one']"],
    "truncated_dataset_json": ["dataset.json: not a readable JSON file"],
    "missing_image": ["missing image file"],
    "two_channels_in_one_case_undeclared": ["image has 2 channel(s) where 5 of the 6 cases read have 1"],
    "nan_voxel_in_validation_image": ["expected finite values; found 1 NaN or infinite voxel(s)"],
}


@pytest.fixture(scope="module")
def train_rows(world):
    root, runs = world["root"], world["root"] / "runs"
    good = runs / "good"
    rows = {f"data: {name}": _train_args(world, runs / name, data=world["data"][name]) for name in TRAIN_DATA_ROWS}
    rows.update({
        "workdir is a file": _train_args(world, root / "a_file"),
        "workdir under a file": _train_args(world, root / "a_file" / "run"),
        "workdir not writable": _train_args(world, root / "locked" / "run"),
        "cache_dir is a file": _train_args(world, runs / "c1")[:-2] + [f"--cache_dir={root / 'a_file'}",
                                                                         f"--workdir={runs / 'c1'}"],
        "cache_dir not writable": _train_args(world, runs / "c2")[:-2] + [f"--cache_dir={root / 'locked_cache'}",
                                                                            f"--workdir={runs / 'c2'}"],
        "data_dir missing": _train_args(world, runs / "nodata", data=root / "nowhere"),
        "num_classes against dataset.json": _train_args(world, runs / "k", "--num_classes=4"),
        "bad flag value before any work": _train_args(world, runs / "bad", "--batch_size=0"),
        "patch not a multiple before any work": _train_args(world, runs / "bad", "--patch_size=30,32,32"),
        "positional argument": _train_args(world, runs / "bad", "stray"),
        "good run": _train_args(world, good),
        "finished run rerun": _train_args(world, good),
        "other settings": _train_args(world, good, "--batch_dice"),
    })
    # Rows on copies of the good run, made once the rows above have run.
    later = {
        "truncated checkpoint.npz": _train_args(world, runs / "trunc_ckpt", "--steps=3"),
        "random bytes in checkpoint.npz": _train_args(world, runs / "rand_ckpt", "--steps=3"),
        "truncated config.json at resume": _train_args(world, runs / "trunc_cfg", "--steps=3"),
    }
    # What a killed run left in the good run's folder, before the good run starts there.
    good.mkdir(parents=True)
    for name in (".checkpoint.npz.k1ll3d.tmp", ".best.tmp.keras", ".summary.json.x.tmp"):
        (good / name).write_bytes(b"partial")
        os.utime(good / name, (OLD, OLD))
    (good / ".checkpoint.npz.fresh.tmp").write_bytes(b"another process, now")
    os.utime(good / ".checkpoint.npz.fresh.tmp", (time.time() + 3600,) * 2)
    with _unwritable(root / "locked", root / "locked_cache") as locked:
        first = _run_rows("train", rows)
    world["locked"] = locked
    good_state = {name: (good / name).read_bytes() for name in ("summary.json", "best.npz", "flags.txt")}
    copy_run(good, runs / "trunc_ckpt", lambda r: _truncate(r / "checkpoint.npz"))
    copy_run(good, runs / "rand_ckpt", lambda r: _random_bytes(r / "checkpoint.npz"))
    copy_run(good, runs / "trunc_cfg", lambda r: _truncate(r / "config.json"))
    second = _run_rows("train", later)
    return {**first, **second}, good_state


@pytest.mark.parametrize("name", sorted(TRAIN_DATA_ROWS))
def test_train_refuses_bad_data_before_training(train_rows, world, name):
    results, _ = train_rows
    _check(results[f"data: {name}"], 2, TRAIN_DATA_ROWS[name], name)
    workdir = world["root"] / "runs" / name
    assert not [p for p in workdir.glob("*") if p.name != ".lock"] if workdir.exists() else True, \
        list(workdir.iterdir())


@pytest.mark.parametrize("name, words", [
    ("workdir is a file", ["workdir", "expected a folder, found a file"]),
    ("workdir under a file", ["workdir", "a_file is a file"]),
    ("workdir not writable", ["workdir", "expected a folder this user can write"]),
    ("cache_dir is a file", ["cache_dir", "expected a folder, found a file"]),
    ("cache_dir not writable", ["cache_dir", "expected a folder this user can write"]),
    ("data_dir missing", ["--data_dir", "no such folder"]),
    ("num_classes against dataset.json", ["num_classes 4 differs from the 3 classes", "dataset.json"]),
    ("bad flag value before any work", ["batch_size"]),
    ("patch not a multiple before any work", ["must be multiples of 4"]),
    ("positional argument", ["unexpected arguments: stray"]),
    ("other settings", ["holds a run with other settings (batch_dice differ)"]),
    ("truncated checkpoint.npz", ["checkpoint.npz: expected a vnet_tf checkpoint, found a truncated or corrupt file"]),
    ("random bytes in checkpoint.npz", ["checkpoint.npz: expected a vnet_tf checkpoint"]),
    ("truncated config.json at resume", ["config.json: expected the settings of the run", "truncated or corrupt"]),
])
def test_train_errors_name_what_to_fix(train_rows, world, name, words):
    if "not writable" in name and not world["locked"]:
        pytest.skip("cannot make a folder unwritable here (root without chattr)")
    results, _ = train_rows
    _check(results[name], 2, words, name)
    if "before any work" in name:
        assert not (world["root"] / "runs" / "bad").exists()


def test_a_finished_run_rerun_changes_nothing(train_rows, world):
    results, good_state = train_rows
    good = world["root"] / "runs" / "good"
    _check(results["good run"], 0, ["done: step 2", "validation Dice per class: label 0 (background) 0.",
                                    "label 2 (back) ", f"next, score the held-out fold: python evaluate.py "
                                    f"--model={good} --data_dir="], "good run")
    _check(results["finished run rerun"], 0, ["nothing to do", "is finished (step 2)", "--steps over 2"], "rerun")
    _check(results["other settings"], 2, [], "other settings")
    for name, data in good_state.items():  # neither the rerun nor the refused run touched them
        assert (good / name).read_bytes() == data, name
    summary = json.loads(good_state["summary.json"])
    assert summary["final_loss"] is not None and summary["validation_dice_per_class"] is not None


def test_stale_temporaries_of_a_killed_run_are_removed(train_rows, world):
    results, _ = train_rows
    _check(results["good run"], 0, ["done: step 2"], "good run")
    left = sorted(p.name for p in (world["root"] / "runs" / "good").glob(".*"))
    assert left == [".checkpoint.npz.fresh.tmp", ".lock"], left  # newer than the process: not its to remove


# ---------------------------------------------------------------- evaluate.py

@pytest.fixture(scope="module")
def evaluate_rows(train_rows, world):
    root = world["root"]
    good, runs, out = root / "runs" / "good", root / "runs", root / "eval"
    copy_run(good, runs / "eval_trunc_best", lambda r: _truncate(r / "best.npz"))
    copy_run(good, runs / "eval_rand_best", lambda r: _random_bytes(r / "best.npz"))
    copy_run(good, runs / "eval_trunc_cfg", lambda r: _truncate(r / "config.json"))
    (runs / "not_a_run").mkdir()

    def other_patch(config):
        config["train"]["patch_size_zyx"] = [p + 8 for p in config["train"]["patch_size_zyx"]]

    other = copy_run(good, runs / "eval_other_patch", edit_config(other_patch))
    # Predictions: one case twice (.mha beside .nii.gz), one case missing.
    from vnet_tf.core.io import read_volume, write_volume
    preds = root / "preds"
    preds.mkdir()
    ids = sorted(p.name.split(".")[0] for p in (world["demo"] / "labelsTr").glob("*.nii.gz"))
    for case_id in ids[1:]:
        shutil.copy(world["demo"] / "labelsTr" / f"{case_id}.nii.gz", preds / f"{case_id}.nii.gz")
    array, geometry = read_volume(preds / f"{ids[1]}.nii.gz")
    write_volume(preds / f"{ids[1]}.mha", np.zeros_like(array), geometry)
    # A previous complete report, then a rerun into the same folder made unwritable.
    demo, model = world["demo"], f"--model={good}"
    rows = {
        "good": [model, f"--data_dir={demo}", f"--output_dir={out / 'good'}", "--figures=false"],
        "missing data_dir": [model, f"--output_dir={out / 'x'}"],
        "model and predictions_dir": [model, f"--predictions_dir={preds}", f"--data_dir={demo}", f"--output_dir={out / 'x'}"],
        "model not a workdir": [f"--model={runs / 'not_a_run'}", f"--data_dir={demo}", f"--output_dir={out / 'x'}"],
        "model missing": [f"--model={runs / 'nowhere'}", f"--data_dir={demo}", f"--output_dir={out / 'x'}"],
        "ensemble of other patch sizes": [f"--model={good},{other}", f"--data_dir={demo}", f"--output_dir={out / 'x'}"],
        "fold -2": [model, f"--data_dir={demo}", f"--output_dir={out / 'x'}", "--fold=-2", "--num_folds=3"],
        "fold 3 of 3": [model, f"--data_dir={demo}", f"--output_dir={out / 'x'}", "--fold=3", "--num_folds=3"],
        "bad mirror_axes": [model, f"--data_dir={demo}", f"--output_dir={out / 'x'}", "--mirror_axes=z"],
        "truncated best.npz": [f"--model={runs / 'eval_trunc_best'}", f"--data_dir={demo}", f"--output_dir={out / 'x'}"],
        "random bytes in best.npz": [f"--model={runs / 'eval_rand_best'}", f"--data_dir={demo}", f"--output_dir={out / 'x'}"],
        "truncated config.json": [f"--model={runs / 'eval_trunc_cfg'}", f"--data_dir={demo}", f"--output_dir={out / 'x'}"],
        "output_dir is a file": [model, f"--data_dir={demo}", f"--output_dir={root / 'a_file'}"],
        "output_dir not writable": [model, f"--data_dir={demo}", f"--output_dir={out / 'locked'}"],
        "reference holds an undeclared value": [model, f"--data_dir={world['data']['value_7_declared_0_2']}",
                                                f"--output_dir={out / 'seven'}", "--figures=false"],
        "two predictions and a missing one": [f"--predictions_dir={preds}", f"--data_dir={demo}",
                                              f"--output_dir={out / 'preds'}", "--figures=false"],
        "a NaN voxel in a scan": [model, f"--data_dir={world['data']['nan_voxel_in_validation_image']}",
                                  f"--output_dir={out / 'nan'}", "--figures=false"],
        "listed files are links": [model, f"--data_dir={world['data']['symlinked_from_a_store']}",
                                   f"--output_dir={out / 'linked'}", "--figures=false"],
    }
    (out / "locked").mkdir(parents=True)
    (out / "locked" / "summary.json").write_text('{"a": "previous report"}')
    with _unwritable(out / "locked"):
        results = _run_rows("evaluate", rows)
    return results, ids


@pytest.mark.parametrize("name, code, words", [
    ("missing data_dir", 2, ["--data_dir is required"]),
    ("model and predictions_dir", 2, ["give exactly one of --model and --predictions_dir"]),
    ("model not a workdir", 2, ["not_a_run: no config.json"]),
    ("model missing", 2, ["--model", "nowhere: no such folder"]),
    ("ensemble of other patch sizes", 2, ["eval_other_patch cannot be ensembled with", "its patch size differs"]),
    ("fold -2", 2, ["--fold / --num_folds: fold must be -1", "got fold=-2, num_folds=3"]),
    ("fold 3 of 3", 2, ["--fold / --num_folds: fold must be -1", "got fold=3, num_folds=3"]),
    ("bad mirror_axes", 2, ["--mirror_axes: expected integers 0-2 or 'none', got z"]),
    ("truncated best.npz", 2, ["best.npz: expected a vnet_tf checkpoint, found a truncated or corrupt file"]),
    ("random bytes in best.npz", 2, ["best.npz: expected a vnet_tf checkpoint"]),
    ("truncated config.json", 2, ["config.json: expected a training run's settings"]),
    ("output_dir is a file", 2, ["--output_dir", "expected a folder, found a file"]),
    ("output_dir not writable", 2, ["--output_dir", "expected a folder this user can write"]),
])
def test_evaluate_errors_name_what_to_fix(evaluate_rows, world, name, code, words):
    if "not writable" in name and not world["locked"]:
        pytest.skip("cannot make a folder unwritable here (root without chattr)")
    results, _ = evaluate_rows
    _check(results[name], code, words, name)
    assert len(_python_lines(results[name]["stderr"])) <= 3, results[name]["stderr"]  # no flag help
    assert not (world["root"] / "eval" / "x").exists()  # nothing written for a refused command
    if name == "output_dir not writable":
        locked = world["root"] / "eval" / "locked"
        assert sorted(p.name for p in locked.iterdir()) == ["summary.json"]
        assert "previous report" in (locked / "summary.json").read_text()


def test_evaluate_writes_its_report_and_no_partial_file(evaluate_rows, world):
    results, ids = evaluate_rows
    _check(results["good"], 0, ["label 1 (front): Dice", "label 2 (back): Dice", "report in"], "good")
    out = world["root"] / "eval" / "good"
    rows = (out / "metrics.csv").read_text(encoding="utf-8").splitlines()
    assert len(rows) == 1 + 2 * len(ids)
    assert sorted(p.name for p in out.iterdir()) == [".lock", "metrics.csv", "predictions", "summary.json"]


def test_evaluate_fails_the_case_whose_reference_holds_an_undeclared_value(evaluate_rows, world):
    results, ids = evaluate_rows
    result = results["reference holds an undeclared value"]
    _check(result, 1, ["1 of 6 cases failed"], "seven")
    summary = json.loads((world["root"] / "eval" / "seven" / "summary.json").read_text(encoding="utf-8"))
    assert [f["case_id"] for f in summary["failed"]] == [world["val_id"]]
    assert "label values [7] lie outside the declared classes 0..2" in summary["failed"][0]["error"]
    assert summary["num_cases"] == 5


def test_evaluate_refuses_two_predictions_for_one_case_naming_both(evaluate_rows, world):
    results, ids = evaluate_rows
    _check(results["two predictions and a missing one"], 1, ["2 of 6 cases failed"], "preds")
    summary = json.loads((world["root"] / "eval" / "preds" / "summary.json").read_text(encoding="utf-8"))
    errors = {f["case_id"]: f["error"] for f in summary["failed"]}
    assert f"{ids[1]}.mha" in errors[ids[1]] and f"{ids[1]}.nii.gz" in errors[ids[1]]
    assert "no prediction for case" in errors[ids[0]]


def test_evaluate_refuses_a_scan_with_a_nan_voxel(evaluate_rows, world):
    """ITK reads a NIfTI NaN as 0; the scan is refused all the same, as the data check does."""
    results, _ = evaluate_rows
    _check(results["a NaN voxel in a scan"], 1, ["1 of 6 cases failed"], "nan")
    summary = json.loads((world["root"] / "eval" / "nan" / "summary.json").read_text(encoding="utf-8"))
    [failed] = summary["failed"]
    assert failed["case_id"] == world["val_id"]
    assert f"{world['val_id']}.nii.gz: expected finite values; found 1 NaN or infinite voxel(s)" in failed["error"]


def test_cases_are_named_by_the_listed_files_not_their_links_targets(evaluate_rows, world):
    from vnet_tf.data.cases import find_cases
    linked, plain = (find_cases(world["data"]["symlinked_from_a_store"]), find_cases(world["demo"]))
    assert [c.case_id for c in linked.cases] == [c.case_id for c in plain.cases]
    assert all(c.images[0].is_symlink() and c.images[0].name.startswith(c.case_id) for c in linked.cases)
    results, ids = evaluate_rows
    _check(results["listed files are links"], 0, ["label 1 (front): Dice"], "linked")
    written = sorted(p.name for p in (world["root"] / "eval" / "linked" / "predictions").iterdir())
    assert written == sorted(f"{i}.nii.gz" for i in ids)


def test_predict_refuses_a_scan_with_a_nan_voxel_naming_it(train_rows, world):
    images = world["data"]["nan_voxel_in_validation_image"] / "imagesTr"
    out = world["root"] / "predict_nan"
    result = run_case("predict", [f"--model={world['root'] / 'runs' / 'good'}", f"--input={images}",
                                  f"--output_dir={out}"])
    _check(result, 1, ["5 written", "1 failed", f"{world['val_id']}: ",
                       f"{images / world['val_id']}.nii.gz: expected finite values; found 1 NaN"], "predict nan")
    assert not (out / f"{world['val_id']}.nii.gz").exists()


# ---------------------------------------------------------------- export.py

@pytest.fixture(scope="module")
def export_rows(train_rows, world):
    root = world["root"]
    good, runs, base = root / "runs" / "good", root / "runs", root / "exports"
    copy_run(good, runs / "export_trunc_best", lambda r: _truncate(r / "best.npz"))
    copy_run(good, runs / "export_rand_best", lambda r: _random_bytes(r / "best.npz"))
    copy_run(good, runs / "export_trunc_cfg", lambda r: _truncate(r / "config.json"))
    (base / "ok" / "1").mkdir(parents=True)  # an existing version
    (base / "ok" / ".tmp-2-k1ll3d" / "model").mkdir(parents=True)  # left by a killed export
    os.utime(base / "ok" / ".tmp-2-k1ll3d", (OLD, OLD))
    rows = {
        "missing export_base": [f"--workdir={good}"],
        "workdir missing": [f"--workdir={runs / 'nowhere'}", f"--export_base={base / 'x'}"],
        "export_base is a file": [f"--workdir={good}", f"--export_base={root / 'a_file'}"],
        "export_base not writable": [f"--workdir={good}", f"--export_base={base / 'locked'}"],
        "truncated best.npz": [f"--workdir={runs / 'export_trunc_best'}", f"--export_base={base / 'x'}"],
        "random bytes in best.npz": [f"--workdir={runs / 'export_rand_best'}", f"--export_base={base / 'x'}"],
        "truncated config.json": [f"--workdir={runs / 'export_trunc_cfg'}", f"--export_base={base / 'x'}"],
        "version exists": [f"--workdir={good}", f"--export_base={base / 'ok'}", "--version=1"],
        "bad mirror_axes": [f"--workdir={good}", f"--export_base={base / 'x'}", "--mirror_axes=0,5"],
        "good": [f"--workdir={good}", f"--export_base={base / 'ok'}"],
    }
    with _unwritable(base / "locked"):
        return _run_rows("export", rows)


@pytest.mark.parametrize("name, words", [
    ("missing export_base", ["--export_base is required"]),
    ("workdir missing", ["--workdir", "no such folder"]),
    ("export_base is a file", ["export_base", "expected a folder, found a file"]),
    ("export_base not writable", ["export_base", "expected a folder this user can write"]),
    ("truncated best.npz", ["best.npz: expected a vnet_tf checkpoint, found a truncated or corrupt file"]),
    ("random bytes in best.npz", ["best.npz: expected a vnet_tf checkpoint"]),
    ("truncated config.json", ["config.json: expected a training run's settings"]),
    ("version exists", ["1 exists; pick another version"]),
    ("bad mirror_axes", ["--mirror_axes: expected integers 0-2 or 'none', got 0,5"]),
])
def test_export_errors_name_what_to_fix(export_rows, world, name, words):
    if "not writable" in name and not world["locked"]:
        pytest.skip("cannot make a folder unwritable here (root without chattr)")
    _check(export_rows[name], 2, words, name)
    assert not list((world["root"] / "exports").glob("x/*"))  # nothing half-written


def test_export_removes_what_a_killed_export_left(export_rows, world):
    _check(export_rows["good"], 0, ["exported"], "good")
    base = world["root"] / "exports" / "ok"
    assert sorted(p.name for p in base.iterdir()) == [".lock", "1", "2"]  # the stale .tmp-2-* folder is gone
    run_file = json.loads((base / "2" / "assets.extra" / "vnet_tf_run.json").read_text(encoding="utf-8"))
    good = world["root"] / "runs" / "good"
    from vnet_tf.model.checkpoint import read_meta
    best_step = read_meta(good / "best.npz")["step"]
    assert run_file["which"] == "best" and run_file["weights"] == {
        "which": "best", "file": "best.npz", "step": best_step, "workdir": str(good.resolve())}


# ---------------------------------------------------------------- python -m vnet_tf.commands.check

CHECK_ROWS = {  # dataset variant -> (exit code, words)
    "label_256_undeclared": (1, ["label values [256] lie outside class numbers 0..255"]),
    "label_minus_one_undeclared": (1, ["label values [-1] lie outside"]),
    "stray_7_in_training_undeclared": (1, ["make the classes 0..7"]),
    "stray_7_in_validation_undeclared": (1, ["make the classes 0..7"]),
    "validation_entry_without_label": (1, ["lists no label for this case"]),
    "labels_key_one": (2, ["'labels' keys must be class numbers"]),
    "truncated_dataset_json": (2, ["not a readable JSON file"]),
    "two_channels_in_one_case_undeclared": (1, ["image has 2 channel(s) where 5 of the 6 cases read have 1"]),
    "nan_voxel_in_validation_image": (1, ["expected finite values; found 1 NaN or infinite voxel(s)"]),
}


@pytest.mark.parametrize("name", sorted(CHECK_ROWS))
def test_the_data_check_reports_each_fault(world, name):
    out = run_command("check", str(world["data"][name]))
    expected_code, words = CHECK_ROWS[name]
    assert out.returncode == expected_code, out
    for word in words:
        assert word in out.stdout + out.stderr


def test_declared_classes_allow_a_gap(world):
    """A value that the dataset leaves a gap below is fine once the classes are declared."""
    from vnet_tf.data.cases import find_cases
    from vnet_tf.data.check import check_dataset
    dataset = find_cases(world["data"]["stray_7_in_training_undeclared"])
    assert not check_dataset(dataset).ok
    report = check_dataset(dataset, num_classes=8)
    assert report.ok and report.num_classes == 8 and report.label_values == (0, 1, 2, 7)


def test_preprocessing_never_wraps_a_label_value():
    import SimpleITK as sitk
    from vnet_tf.core.errors import UserError
    from vnet_tf.data.preprocess import PreprocessConfig, preprocess_case
    image = sitk.GetImageFromArray(np.zeros((4, 4, 4), np.float32))
    for value in (256, -1):
        array = np.zeros((4, 4, 4), np.int16)
        array[1, 1, 1] = value
        with pytest.raises(UserError, match=rf"label values \[{value}\] lie outside"):
            preprocess_case([image], sitk.GetImageFromArray(array), PreprocessConfig())


# ---------------------------------------------------------------- a full disk

def _no_space(path="x"):
    return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))


def test_a_full_disk_keeps_the_previous_checkpoint_and_no_temporary(tmp_path, monkeypatch):
    from vnet_tf.model import checkpoint
    from vnet_tf.core import folders
    target = tmp_path / "checkpoint.npz"
    checkpoint.save_checkpoint(target, {"model": [np.ones(3)]}, {"step": 1})
    before = target.read_bytes()

    def full(*_):
        raise _no_space(tmp_path / ".checkpoint.npz.tmp")

    monkeypatch.setattr(folders.os, "fsync", full)
    with pytest.raises(OSError) as err:
        checkpoint.save_checkpoint(target, {"model": [np.zeros(3)]}, {"step": 2})
    assert target.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.npz"]
    from vnet_tf.core.errors import describe
    assert "No space left on device" in describe(err.value) and "free some space" in describe(err.value)


def test_a_full_disk_during_export_leaves_no_version(train_rows, world, monkeypatch):
    import tensorflow as tf
    from vnet_tf.serving.exporter import export_run
    base = world["root"] / "full_disk_export"

    def full(module, path, signatures=None):
        pathlib.Path(path).mkdir(parents=True)
        (pathlib.Path(path) / "saved_model.pb").write_bytes(b"half")
        raise _no_space(path)

    monkeypatch.setattr(tf.saved_model, "save", full)
    with pytest.raises(OSError, match="No space left"):
        export_run(world["root"] / "runs" / "good", base)
    assert [p.name for p in base.iterdir()] == [".lock"]


def test_commands_print_a_users_error_in_one_line_and_a_bug_with_its_traceback(capsys):
    from vnet_tf.commands import cli
    from vnet_tf.core.errors import UserError

    def fails(err):
        def main(argv):
            raise err
        return cli.guarded(main)

    assert fails(UserError("data_dir x: expected a, found b"))([]) == cli.EXIT_USER_ERROR
    assert capsys.readouterr().err == "error: data_dir x: expected a, found b\n"
    assert fails(_no_space("/out/summary.json"))([]) == cli.EXIT_USER_ERROR
    assert capsys.readouterr().err.startswith("error: /out/summary.json: No space left on device")
    with pytest.raises(KeyError):  # a bug is not dressed up as the user's error
        fails(KeyError("bug"))([])


# ---------------------------------------------------------------- two processes, one folder

_HOLDER = """
import sys, time
from vnet_tf.core.lock import folder_lock
with folder_lock(sys.argv[1], "folder"):
    print("locked", flush=True)
    time.sleep(600)
"""


@contextlib.contextmanager
def _held(folder):
    """Another process holding ``folder``'s lock (as a running command would) until killed."""
    from conftest import REPO, subprocess_env
    folder.mkdir(parents=True, exist_ok=True)
    holder = subprocess.Popen([sys.executable, "-c", _HOLDER, str(folder)], cwd=REPO, env=subprocess_env(),
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        yield holder
    finally:
        holder.kill()
        holder.wait()
        holder.stdout.close()


def test_a_folder_in_use_is_refused_naming_its_holder_and_taken_over_once_it_is_killed(train_rows, world):
    """evaluate.py, predict.py and export.py against a real second process holding their output
    folder (train.py's workdir: test_train's kill-and-resume test, with a real train.py)."""
    root, good = world["root"], world["root"] / "runs" / "good"
    scan = world["demo"] / "imagesTr" / f"{world['val_id']}.nii.gz"
    rows = {
        "evaluate": (root / "lock_eval", lambda f: [f"--model={good}", f"--data_dir={world['demo']}",
                                                    f"--output_dir={f}", "--figures=false", "--max_cases=1"]),
        "predict": (root / "lock_predict", lambda f: [f"--model={good}", f"--input={scan}", f"--output_dir={f}"]),
        "export": (root / "lock_export", lambda f: [f"--workdir={good}", f"--export_base={f}"]),
    }
    for command, (folder, argv) in rows.items():
        with _held(folder) as holder:
            refused = run_case(command, argv(folder))
            _check(refused, 2, [f"{folder}: in use by another process: pid {holder.pid} on host",
                                "a stopped process releases the folder by itself"], command)
            assert [p.name for p in folder.iterdir()] == [".lock"], command  # nothing written
            if command == "evaluate":  # the others take a lock over the same way
                holder.kill()  # SIGKILL: no clean-up of its own
                holder.wait()
                _check(run_case(command, argv(folder)), 0, [], f"{command} after the holder was killed")
                assert (folder / "summary.json").is_file()


def test_a_new_evaluation_sets_the_old_report_aside_before_its_first_prediction(world):
    """A re-evaluation killed half way leaves no report beside predictions it replaced."""
    from vnet_tf.data.cases import find_cases
    from vnet_tf.data.preprocess import PreprocessConfig
    from vnet_tf.evaluation.report import evaluate_cases
    from vnet_tf.inference.config import InferenceConfig

    def constant(value):
        return lambda volume, spacing, direction, probabilities=False: {
            "labels": np.full(volume.shape[:3], value, np.int32)}

    cases = find_cases(world["demo"]).cases[:3]
    out = world["root"] / "reevaluated"
    kwargs = dict(preprocess=PreprocessConfig(), inference=InferenceConfig(), figures=False)
    evaluate_cases(cases, out, [1, 2], segment=constant(0), progress=lambda *_: None, **kwargs)
    old = {name: (out / name).read_bytes() for name in ("summary.json", "metrics.csv")}

    class Killed(BaseException):
        pass

    def killed(done, *_):
        raise Killed

    with pytest.raises(Killed):
        evaluate_cases(cases, out, [1, 2], segment=constant(1), progress=killed, **kwargs)
    assert not (out / "summary.json").exists() and not (out / "metrics.csv").exists()
    assert {name: (out / "superseded" / name).read_bytes() for name in old} == old
    from vnet_tf.core.io import read_volume
    assert read_volume(out / "predictions" / f"{cases[0].case_id}.nii.gz")[0].max() == 1  # the new model's


# ---------------------------------------------------------------- flagfiles

def test_a_nested_flagfile_is_found_from_its_including_file_s_folder(tmp_path, monkeypatch, capsys):
    from vnet_tf.commands import cli
    monkeypatch.chdir(tmp_path)
    (tmp_path / "configs" / "sub").mkdir(parents=True)
    (tmp_path / "configs" / "main.flags").write_text("# a comment\n--flagfile=sub/base.flags\n--steps=7\n")
    (tmp_path / "configs" / "sub" / "base.flags").write_text("--steps=3\n\n// another comment\n--batch_size=2\n")
    args, origins = cli.expand_flagfiles(["train.py", "--flagfile=configs/main.flags", "--seed=1"])
    assert args == ["train.py", "--steps=3", "--batch_size=2", "--steps=7", "--seed=1"]
    assert origins == [None, (pathlib.Path("configs/sub/base.flags"), 1), (pathlib.Path("configs/sub/base.flags"), 4),
                       (pathlib.Path("configs/main.flags"), 3), None]
    # A flagfile written for the working directory (as absl resolves) still reads, with a note.
    (tmp_path / "configs" / "old.flags").write_text("--flagfile=configs/sub/base.flags\n")
    assert cli.expand_flagfiles(["train.py", "--flagfile", "configs/old.flags"])[0] == [
        "train.py", "--steps=3", "--batch_size=2"]
    assert "note: configs/old.flags, line 1: configs/sub/base.flags is not in configs" in capsys.readouterr().err


@pytest.mark.parametrize("files, top, words", [
    ({"self.flags": "--steps=2\n--flagfile={root}/self.flags\n"}, "self.flags",
     ["self.flags, line 2: --flagfile=", "includes itself: {root}/self.flags -> {root}/self.flags"]),
    ({"a.flags": "--flagfile=b.flags\n", "b.flags": "--steps=1\n--flagfile=a.flags\n"}, "a.flags",
     ["b.flags, line 2: --flagfile=a.flags includes itself: {root}/a.flags -> {root}/b.flags -> {root}/a.flags"]),
    ({"a.flags": "--steps=1\n--flagfile=nowhere.flags\n"}, "a.flags",
     ["a.flags, line 2: --flagfile=nowhere.flags: cannot read {root}/nowhere.flags (No such file or directory)"]),
    ({"a.flags": "--steps=1\n--no_such_flag=3\n"}, "a.flags",
     ["no_such_flag", "(in {root}/a.flags, line 2)"]),
    ({"a.flags": "--flagfile=b.flags\n", "b.flags": "--seed=0\n--steps=many\n"}, "a.flags",
     ["--steps=many", "(in {root}/b.flags, line 2)"]),
])
def test_a_bad_flagfile_names_the_file_and_line(tmp_path, files, top, words):
    root = tmp_path.resolve()
    for name, text in files.items():
        (root / name).write_text(text.format(root=root))
    result = run_case("train", [f"--flagfile={root / top}"])
    _check(result, 2, [w.format(root=root) for w in words], top)
    assert "ERROR::" not in result["stderr"]
