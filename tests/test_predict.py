"""predict.py / vnet_tf.inference.prediction: new scans segmented with no labels, from a workdir, an
ensemble or an export, in any supported format, each label map on its scan's grid; unreadable
scans reported by name while the others go on; finished scans skipped unless overwritten."""

import json

import numpy as np
import pytest
import SimpleITK as sitk

from conftest import REPO, run_command
from vnet_tf.core.errors import UserError
from vnet_tf.core.io import read_volume, write_dicom_series, write_volume
from vnet_tf.inference.prediction import Scan, find_scans, predict_scans


@pytest.fixture(scope="module")
def scans(tiny_run, tmp_path_factory):
    """A folder with one demo scan as NIfTI and MetaImage, an int16 copy as NIfTI and as a DICOM
    series, and a file that is not a volume."""
    run, _ = tiny_run
    data = json.loads((run / "config.json").read_text())["train"]["data_dir"]
    source = sorted((REPO / data).glob("imagesTr/*.nii.gz"))[0]  # (REPO / an absolute path is that path)
    array, geometry = read_volume(source)
    folder = tmp_path_factory.mktemp("scans")
    write_volume(folder / "scan.nii.gz", array, geometry)
    write_volume(folder / "scan_mha.mha", array, geometry)
    as_int = np.round(array * 100).astype(np.int16)
    write_volume(folder / "int16.nii.gz", as_int, geometry)
    write_dicom_series(folder / "int16_dicom", as_int, geometry)
    (folder / "broken.nii.gz").write_bytes(b"not a volume at all")
    return folder, geometry


def _labels(path):
    image = sitk.ReadImage(str(path))
    return sitk.GetArrayFromImage(image), image


def test_a_folder_in_every_format_with_a_broken_file(tiny_run, scans, tmp_path):
    from vnet_tf.inference.loading import load_segment
    folder, geometry = scans
    loaded = load_segment([tiny_run[0]])
    found = find_scans([folder])
    assert sorted(s.name for s in found) == ["broken", "int16", "int16_dicom", "scan", "scan_mha"]
    lines = []
    report = predict_scans(found, loaded.segment, tmp_path / "out", log=lines.append)
    assert sorted(report.written) == ["int16", "int16_dicom", "scan", "scan_mha"]
    assert len(report.failed) == 1 and report.failed[0].startswith("broken: ") and "broken.nii.gz" in report.failed[0]
    assert any("broken: FAILED" in line for line in lines) and any("left" in line for line in lines)
    nifti, image = _labels(tmp_path / "out" / "scan.nii.gz")
    assert image.GetSpacing() == pytest.approx(geometry.spacing) and image.GetOrigin() == pytest.approx(geometry.origin)
    assert set(np.unique(nifti)) <= {0, 1, 2} and nifti.any()
    assert np.array_equal(_labels(tmp_path / "out" / "scan_mha.nii.gz")[0], nifti)  # the same scan as MetaImage
    dicom, dicom_image = _labels(tmp_path / "out" / "int16_dicom.nii.gz")
    assert np.array_equal(dicom, _labels(tmp_path / "out" / "int16.nii.gz")[0])  # the same scan as DICOM
    assert dicom_image.GetSize() == image.GetSize()

    again = predict_scans(found, loaded.segment, tmp_path / "out", log=lambda line: None)
    assert sorted(again.skipped) == sorted(report.written) and not again.written
    before = (tmp_path / "out" / "scan.nii.gz").stat().st_mtime_ns
    redone = predict_scans([s for s in found if s.name == "scan"], loaded.segment, tmp_path / "out",
                           overwrite=True, suffix="", probabilities=True, log=lambda line: None)
    assert redone.written == ["scan"] and (tmp_path / "out" / "scan.nii.gz").stat().st_mtime_ns >= before
    probabilities, _ = read_volume(tmp_path / "out" / "scan_probabilities.nii.gz")
    assert probabilities.shape == nifti.shape + (3,)
    assert np.array_equal(np.argmax(probabilities, axis=-1), nifti)


def test_an_ensemble_and_an_export_give_the_workdirs_labels(tiny_run, scans, tmp_path):
    from vnet_tf.serving.exporter import export_run
    from vnet_tf.inference.loading import load_segment
    folder, _ = scans
    scan = [Scan("scan", (folder / "scan.nii.gz",))]
    single = predict_scans(scan, load_segment([tiny_run[0]]).segment, tmp_path / "single", log=lambda line: None)
    both = predict_scans(scan, load_segment([tiny_run[0], tiny_run[0]]).segment, tmp_path / "ensemble",
                         log=lambda line: None)
    version = export_run([tiny_run[0]], tmp_path / "export")
    served = predict_scans(scan, load_segment([version]).segment, tmp_path / "export_out", log=lambda line: None)
    assert single.written == both.written == served.written == ["scan"]
    reference = _labels(tmp_path / "single" / "scan.nii.gz")[0]
    assert np.array_equal(_labels(tmp_path / "ensemble" / "scan.nii.gz")[0], reference)
    assert np.array_equal(_labels(tmp_path / "export_out" / "scan.nii.gz")[0], reference)


def test_channel_files_group_into_scans(tmp_path):
    for name in ("a_0000.nii.gz", "a_0001.nii.gz", "b_0000.nii.gz", "b_0001.nii.gz"):
        (tmp_path / name).write_bytes(b"")
    scans = find_scans([tmp_path], channels=2)
    assert [(s.name, [p.name for p in s.paths]) for s in scans] == [
        ("a", ["a_0000.nii.gz", "a_0001.nii.gz"]), ("b", ["b_0000.nii.gz", "b_0001.nii.gz"])]
    (tmp_path / "b_0001.nii.gz").unlink()
    with pytest.raises(UserError, match="b: expected the channel files _0000 ... _0001; found _0000"):
        find_scans([tmp_path], channels=2)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(UserError, match="expected scans"):
        find_scans([empty])
    with pytest.raises(UserError, match="no such file or folder"):
        find_scans([tmp_path / "nowhere"])


def test_the_command_reports_the_failed_scan_and_exits_non_zero(tiny_run, scans, tmp_path):
    folder, _ = scans
    out = run_command("predict", f"--model={tiny_run[0]}", f"--input={folder}", f"--output_dir={tmp_path / 'out'}")
    assert out.returncode == 1, out.stderr[-3000:]
    assert "4 written, 0 already there" in out.stdout and "1 failed" in out.stdout
    assert "broken: " in out.stderr and "Traceback" not in out.stderr
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        ".lock", "int16.nii.gz", "int16_dicom.nii.gz", "scan.nii.gz", "scan_mha.nii.gz"]


def test_the_output_format_is_a_volume_format_or_the_scans_own():
    from vnet_tf.inference.prediction import check_suffix, output_path
    assert check_suffix(".mha") == ".mha" and check_suffix("") == ""
    with pytest.raises(UserError, match="output format '.png': expected one of .nii.gz"):
        check_suffix(".png")
    dicom = Scan("series", (REPO / "some_dicom_folder",))
    assert output_path("out", dicom, "").name == "series.nii.gz"  # DICOM in, NIfTI out
    assert output_path("out", Scan("a", (REPO / "a.mha",)), "").name == "a.mha"
