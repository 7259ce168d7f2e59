"""Reading and writing volumes keeps voxels and geometry, for every format."""

import numpy as np
import pytest
import SimpleITK as sitk

from vnet_tf.core.io import (Geometry, VolumeReadError, case_stem, read_volume, write_dicom_series,
                        write_volume)


def rotation(angle):
    c, s = np.cos(angle), np.sin(angle)
    return np.array([[c, 0, s], [0, 1, 0], [-s, 0, c]]) @ np.array([[1, 0, 0], [0, c, -s], [0, s, c]])


GEOMETRY = Geometry((0.7, 1.3, 2.5), (12.5, -30.25, 4.0), tuple(rotation(0.4).ravel()))


@pytest.fixture
def label_map(rng):
    return rng.integers(0, 3, size=(5, 7, 9)).astype(np.uint8)


@pytest.mark.parametrize("suffix", [".nii", ".nii.gz", ".mha", ".mhd", ".nrrd"])
def test_round_trip_every_format(tmp_path, label_map, suffix):
    path = write_volume(tmp_path / f"case{suffix}", label_map, GEOMETRY)
    array, geometry = read_volume(path)
    np.testing.assert_array_equal(array, label_map)
    assert array.shape == (5, 7, 9)  # (z, y, x)
    assert geometry.differences(GEOMETRY, 1e-6) == []
    # the file's header agrees with SimpleITK's own reading (x, y, z order)
    image = sitk.ReadImage(str(path))
    assert image.GetSize() == (9, 7, 5)
    np.testing.assert_allclose(image.GetSpacing(), GEOMETRY.spacing, atol=1e-6)


def test_round_trip_dicom_series(tmp_path, rng):
    volume = rng.integers(-1000, 2000, size=(6, 8, 10)).astype(np.int16)
    folder = write_dicom_series(tmp_path / "series", volume, GEOMETRY)
    assert len(list(folder.iterdir())) == 6
    array, geometry = read_volume(folder)
    np.testing.assert_array_equal(array, volume)
    assert geometry.differences(GEOMETRY, 1e-5) == []


def test_multichannel_round_trip(tmp_path, rng):
    volume = rng.normal(size=(4, 5, 6, 2)).astype(np.float32)
    array, geometry = read_volume(write_volume(tmp_path / "mm.nii.gz", volume, GEOMETRY))
    np.testing.assert_array_equal(array, volume)
    assert geometry == read_volume(tmp_path / "mm.nii.gz")[1]


def test_4d_nifti_becomes_channels_last(tmp_path, rng):
    volume = rng.normal(size=(3, 4, 5, 6)).astype(np.float32)  # (t, z, y, x) as in MSD files
    image = sitk.JoinSeries([sitk.GetImageFromArray(v) for v in volume])
    sitk.WriteImage(image, str(tmp_path / "4d.nii.gz"))
    array, _ = read_volume(tmp_path / "4d.nii.gz")
    assert array.shape == (4, 5, 6, 3)
    np.testing.assert_array_equal(array[..., 1], volume[1])


def test_write_leaves_no_temporary_files(tmp_path, label_map):
    write_volume(tmp_path / "a.mhd", label_map, GEOMETRY)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.mhd", "a.zraw"]


def test_read_errors_name_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.nii.gz: no such file"):
        read_volume(tmp_path / "nope.nii.gz")
    bad = tmp_path / "bad.nii.gz"
    bad.write_bytes(b"not a volume")
    with pytest.raises(VolumeReadError, match="bad.nii.gz: cannot be read as a volume"):
        read_volume(bad)
    (tmp_path / "x.txt").write_text("hello")
    with pytest.raises(VolumeReadError, match="x.txt: unknown volume format"):
        read_volume(tmp_path / "x.txt")
    (tmp_path / "empty").mkdir()
    with pytest.raises(VolumeReadError, match="empty: folder holds no DICOM series"):
        read_volume(tmp_path / "empty")
    with pytest.raises(ValueError, match="unknown volume format"):
        write_volume(tmp_path / "out.png", np.zeros((2, 2, 2)), GEOMETRY)


def test_case_stem():
    assert case_stem("/a/b/case_01.nii.gz") == "case_01"
    assert case_stem("Case00_segmentation.mhd") == "Case00_segmentation"


@pytest.mark.parametrize("suffix,compress", [(".nii", False), (".nii.gz", True), (".mha", True),
                                             (".mha", False), (".mhd", False), (".mhd", True)])
def test_truncated_files_are_refused_not_zero_filled(tmp_path, rng, suffix, compress):
    """ITK reads a truncated file without error, zero-filling it; read_volume refuses it."""
    volume = rng.normal(size=(6, 8, 10)).astype(np.float32)
    path = write_volume(tmp_path / f"v{suffix}", volume, GEOMETRY, compress=compress)
    np.testing.assert_array_equal(read_volume(path)[0], volume)  # complete: reads fine
    data = path.with_suffix(".zraw" if compress else ".raw") if suffix == ".mhd" else path
    content = data.read_bytes()
    data.write_bytes(content[: len(content) - 200])
    with pytest.raises(VolumeReadError, match=rf"v\{suffix}: (truncated file|cannot be read)"):
        read_volume(path)
