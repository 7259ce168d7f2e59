"""Finding cases in every layout, and the data check's messages for each bad case."""

import re
import subprocess
import sys

import numpy as np
import pytest
import SimpleITK as sitk

from conftest import REPO, subprocess_env
from helpers import msd_index
from vnet_tf.data.cases import find_cases
from vnet_tf.data.check import check_dataset
from vnet_tf.core.io import Geometry, read_volume, write_volume

GEO = Geometry((1.0, 1.0, 1.5), (0.0, 0.0, 0.0))
LABELS = {"0": "background", "1": "structure"}
SHAPE = (6, 8, 10)


def _label():
    label = np.zeros(SHAPE, np.uint8)
    label[2:4, 2:6, 3:7] = 1
    return label


def _good(root, name):
    write_volume(root / "imagesTr" / f"{name}.nii.gz", np.random.rand(*SHAPE).astype(np.float32), GEO)
    write_volume(root / "labelsTr" / f"{name}.nii.gz", _label(), GEO)


@pytest.fixture
def bad_dataset(tmp_path):
    root = tmp_path / "data"
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    rand = lambda shape=SHAPE: np.random.rand(*shape).astype(np.float32)
    names = ["good1", "good2", "garbage", "truncated", "nolabel", "size", "spacing", "origin",
             "direction", "outside", "fraction", "nan", "flat", "fourd", "empty", "zerospacing"]
    for name in names:
        _good(root, name)
    (root / "imagesTr" / "garbage.nii.gz").write_bytes(b"\x00garbage" * 10)
    full = (root / "imagesTr" / "truncated.nii.gz").read_bytes()
    (root / "imagesTr" / "truncated.nii.gz").write_bytes(full[: len(full) // 2])
    (root / "labelsTr" / "nolabel.nii.gz").unlink()
    write_volume(root / "labelsTr" / "size.nii.gz", np.ones((6, 8, 9), np.uint8), GEO)
    write_volume(root / "labelsTr" / "spacing.nii.gz", _label(), Geometry((1.0, 1.0, 2.0), GEO.origin))
    write_volume(root / "labelsTr" / "origin.nii.gz", _label(), Geometry(GEO.spacing, (0.0, 5.0, 0.0)))
    write_volume(root / "labelsTr" / "direction.nii.gz", _label(),
                 Geometry(GEO.spacing, GEO.origin, (0, 1, 0, 1, 0, 0, 0, 0, -1)))
    write_volume(root / "labelsTr" / "outside.nii.gz", _label() * 7, GEO)
    write_volume(root / "labelsTr" / "fraction.nii.gz", _label() * np.float32(0.5), GEO)
    nan = rand()
    nan[0, 0, :2] = np.nan
    nan[0, 0, 2] = np.inf
    write_volume(root / "imagesTr" / "nan.nii.gz", nan, GEO)
    sitk.WriteImage(sitk.GetImageFromArray(rand((8, 10))), str(root / "imagesTr" / "flat.nii.gz"))
    four_d = sitk.JoinSeries([sitk.GetImageFromArray(rand()) for _ in range(2)])
    four_d.SetSpacing((1.0, 1.0, 1.5, 1.0))
    sitk.WriteImage(four_d, str(root / "imagesTr" / "fourd.nii.gz"))
    write_volume(root / "labelsTr" / "empty.nii.gz", np.zeros(SHAPE, np.uint8), GEO)
    write_volume(root / "imagesTr" / "zerospacing.mhd", rand(), GEO, compress=False)
    header = root / "imagesTr" / "zerospacing.mhd"
    header.write_text(re.sub(r"ElementSpacing = .*", "ElementSpacing = 0 1 1.5", header.read_text()))
    zero_entry = {"image": "./imagesTr/zerospacing.mhd", "label": "./labelsTr/zerospacing.nii.gz"}
    missing_entry = {"image": "./imagesTr/ghost.nii.gz", "label": "./labelsTr/good1.nii.gz"}
    msd_index(root, [n for n in names if n != "zerospacing"], LABELS, extra_entries=[zero_entry, missing_entry])
    return root


EXPECTED = {
    "garbage": "unreadable or truncated image",
    "truncated": "unreadable or truncated image",
    "nolabel": "missing label file",
    "ghost": "missing image file",
    "size": "label size (9, 8, 6) differs from the image's (10, 8, 6)",
    "spacing": "label spacing (1.0, 1.0, 2.0) differs from the image's (1.0, 1.0, 1.5)",
    "origin": "label origin (0.0, 5.0, 0.0) differs",
    "direction": "label direction",
    "outside": "label values [7] lie outside the declared classes 0..1",
    "fraction": "label values are not integers (found [0.5])",
    "nan": "expected finite values; found 3 NaN or infinite voxel(s)",
    "flat": "image is 2D",
    "fourd": "image has 2 channel(s) where 1 were declared",
    "zerospacing": "spacing has a zero or negative entry",
}


def test_every_bad_case_has_its_own_message(bad_dataset):
    before = {p: p.stat().st_mtime_ns for p in bad_dataset.rglob("*") if p.is_file()}
    report = check_dataset(find_cases(bad_dataset))
    messages = {}
    for problem in report.problems:
        messages.setdefault(problem.case_id, []).append(str(problem))
    for case_id, expected in EXPECTED.items():
        found = messages.get(case_id, [])
        assert any(expected in m for m in found), (case_id, found)
        assert all(case_id in m for m in found if m.startswith("ERROR")), found  # names the file
    assert sorted(report.good_cases) == ["empty", "good1", "good2"]
    assert [str(p) for p in report.warnings] == [
        f"WARNING: {bad_dataset / 'labelsTr' / 'empty.nii.gz'}: label is empty (background only)"]
    assert not report.ok
    after = {p: p.stat().st_mtime_ns for p in bad_dataset.rglob("*") if p.is_file()}
    assert before == after  # input files are never modified


def test_check_command_exit_codes(bad_dataset, tmp_path):
    cmd = [sys.executable, "-m", "vnet_tf.commands.check"]
    bad = subprocess.run(cmd + [str(bad_dataset)], capture_output=True, text=True, encoding="utf-8",
                         env=subprocess_env(), cwd=REPO, timeout=120)
    assert bad.returncode == 1
    assert "missing label file" in bad.stdout and "17 cases checked: 3 usable, 14 with errors" in bad.stdout
    good = tmp_path / "good"
    (good / "imagesTr").mkdir(parents=True)
    (good / "labelsTr").mkdir()
    _good(good, "a")
    msd_index(good, ["a"], LABELS)
    ok = subprocess.run(cmd + [str(good)], capture_output=True, text=True, encoding="utf-8", env=subprocess_env(),
                        cwd=REPO, timeout=120)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    missing = subprocess.run(cmd + [str(tmp_path / "nowhere")], capture_output=True, text=True, encoding="utf-8",
                             env=subprocess_env(), cwd=REPO, timeout=120)
    assert missing.returncode == 2 and "nowhere: no such folder" in missing.stderr


def test_nnunet_layout_gives_multichannel_cases(tmp_path):
    (tmp_path / "imagesTr").mkdir()
    (tmp_path / "labelsTr").mkdir()
    for case in ("p1", "p2"):
        for channel in range(2):
            write_volume(tmp_path / "imagesTr" / f"{case}_{channel:04d}.nii.gz", np.zeros(SHAPE, np.float32), GEO)
        write_volume(tmp_path / "labelsTr" / f"{case}.nii.gz", _label(), GEO)
    dataset = find_cases(tmp_path)
    assert dataset.layout == "nnunet" and dataset.channels == 2
    assert [c.case_id for c in dataset.cases] == ["p1", "p2"]
    assert [p.name for p in dataset.cases[0].images] == ["p1_0000.nii.gz", "p1_0001.nii.gz"]
    assert check_dataset(dataset, num_classes=2).ok


def test_promise12_layout(tmp_path):
    for case in ("Case00", "Case01"):
        write_volume(tmp_path / f"{case}.mhd", np.zeros(SHAPE, np.float32), GEO)
        write_volume(tmp_path / f"{case}_segmentation.mhd", _label(), GEO)
    dataset = find_cases(tmp_path)
    assert dataset.layout == "promise12"
    assert [(c.case_id, c.label.name) for c in dataset.cases] == [
        ("Case00", "Case00_segmentation.mhd"), ("Case01", "Case01_segmentation.mhd")]
    assert check_dataset(dataset, num_classes=2).ok


def test_glob_layout_pairs_by_case_id(tmp_path):
    for case in ("x1", "x2"):
        write_volume(tmp_path / "img" / f"{case}_t1.nrrd", np.zeros(SHAPE, np.float32), GEO)
        write_volume(tmp_path / "seg" / f"{case}_mask.nrrd", _label(), GEO)
    dataset = find_cases(tmp_path, "glob", "img/*_t1.nrrd", "seg/*_mask.nrrd")
    assert [(c.case_id, c.label.name) for c in dataset.cases] == [("x1", "x1_mask.nrrd"), ("x2", "x2_mask.nrrd")]
    with pytest.raises(ValueError, match="must contain exactly one"):
        find_cases(tmp_path, "glob", "img/*_*.nrrd")


def test_layout_errors(tmp_path):
    with pytest.raises(ValueError, match="cannot tell the dataset layout"):
        find_cases(tmp_path)
    with pytest.raises(ValueError, match="layout must be one of"):
        find_cases(tmp_path, layout="kits")


def test_hippocampus_all_cases_pass(hippocampus_dir):
    dataset = find_cases(hippocampus_dir)
    assert dataset.layout == "msd" and len(dataset.cases) == 192
    assert all(c.label.exists() for c in dataset.cases)
    report = check_dataset(dataset)
    assert report.ok and len(report.good_cases) == 192, report.summary()
    values = set()
    for case in dataset.cases[::16]:
        values |= set(np.unique(read_volume(case.label)[0]).tolist())
    assert values == {0, 1, 2}
