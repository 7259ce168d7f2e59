"""Read and write volumes with their geometry (SimpleITK).

Axis order: arrays are numpy in SimpleITK's order ``(z, y, x)`` for a scalar volume and
``(z, y, x, c)`` for a multi-channel one (channels last). That is the model's
``(depth, height, width, channels)``. :class:`Geometry` keeps the physical convention of
the file headers (and of ITK-SNAP / 3D Slicer): ``spacing`` and ``origin`` in ``(x, y, z)``
order, in millimetres, and ``direction`` as the 3x3 direction-cosine matrix flattened
row by row (SimpleITK's ``GetDirection()``).

Formats: NIfTI (``.nii``, ``.nii.gz``), MetaImage (``.mha``, ``.mhd`` + ``.raw``), NRRD
(``.nrrd``, ``.nhdr``), and a DICOM series given as a folder (read only by
:func:`read_volume`; :func:`write_dicom_series` writes one for tests and exchange).
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
import shutil
import tempfile
from typing import Tuple, Union

import numpy as np
import SimpleITK as sitk

from vnet_tf.core.errors import UserError
from vnet_tf.core.integrity import truncation_problem

PathLike = Union[str, os.PathLike]
VOLUME_SUFFIXES = (".nii.gz", ".nii", ".mha", ".mhd", ".nrrd", ".nhdr")


class VolumeReadError(UserError):
    """A file or DICOM folder that exists but cannot be read as a 3D volume."""


@dataclasses.dataclass(frozen=True)
class Geometry:
    """Where voxels lie in the patient: spacing and origin (x, y, z) in mm, direction."""

    spacing: Tuple[float, float, float]
    origin: Tuple[float, float, float]
    direction: Tuple[float, ...] = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)

    @classmethod
    def of(cls, image: sitk.Image) -> "Geometry":
        """The geometry of the first three axes of a SimpleITK image."""
        dim = image.GetDimension()
        direction = np.array(image.GetDirection()).reshape(dim, dim)[:3, :3]
        return cls(tuple(float(s) for s in image.GetSpacing()[:3]),
                   tuple(float(o) for o in image.GetOrigin()[:3]),
                   tuple(float(d) for d in direction.ravel()))

    def apply_to(self, image: sitk.Image) -> sitk.Image:
        image.SetSpacing(self.spacing)
        image.SetOrigin(self.origin)
        image.SetDirection(self.direction)
        return image

    def differences(self, other: "Geometry", tolerance: float = 1e-4) -> list:
        """Names of the fields (spacing / origin / direction) that differ beyond tolerance.

        Spacing and origin are compared relative to the spacing (``tolerance`` of a voxel),
        direction cosines absolutely.
        """
        scale = max(max(abs(s) for s in self.spacing), 1e-12)
        diffs = []
        for name, tol in (("spacing", tolerance * scale), ("origin", tolerance * scale),
                          ("direction", tolerance)):
            if not np.allclose(getattr(self, name), getattr(other, name), rtol=0, atol=tol):
                diffs.append(name)
        return diffs

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "Geometry":
        return cls(tuple(data["spacing"]), tuple(data["origin"]), tuple(data["direction"]))


def volume_suffix(path: PathLike) -> str:
    """The format suffix of ``path`` (``.nii.gz`` counts as one), lower case, or ``''``."""
    name = pathlib.Path(path).name.lower()
    for suffix in VOLUME_SUFFIXES:
        if name.endswith(suffix):
            return suffix
    return ""


def case_stem(path: PathLike) -> str:
    """File name without its volume suffix: ``a/case_01.nii.gz`` -> ``case_01``."""
    name = pathlib.Path(path).name
    return name[: len(name) - len(volume_suffix(name))] if volume_suffix(name) else name


def read_image(path: PathLike) -> sitk.Image:
    """Reads a file, or a DICOM series from a folder, as a SimpleITK image.

    Raises:
      FileNotFoundError: the path does not exist.
      VolumeReadError: the file is unreadable, truncated (NIfTI and MetaImage files are
        checked for missing voxel bytes, which ITK would silently zero-fill), of an
        unknown format, or the folder holds no DICOM series; the message names the path.
    """
    path = pathlib.Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file or folder")
    try:
        if path.is_dir():
            return _read_dicom_series(path)
        if not volume_suffix(path):
            raise VolumeReadError(
                f"{path}: unknown volume format (expected one of {', '.join(VOLUME_SUFFIXES)} "
                f"or a DICOM folder)")
        image = sitk.ReadImage(str(path))
    except RuntimeError as err:
        first_line = str(err).strip().splitlines()[-1] if str(err).strip() else repr(err)
        raise VolumeReadError(f"{path}: cannot be read as a volume ({first_line})") from err
    data_bytes = image.GetNumberOfPixels() * image.GetNumberOfComponentsPerPixel() * \
        np.dtype(sitk.GetArrayViewFromImage(image).dtype).itemsize
    problem = truncation_problem(path, data_bytes)
    if problem:
        raise VolumeReadError(f"{path}: truncated file: {problem}")
    return image


def _read_dicom_series(folder: pathlib.Path) -> sitk.Image:
    series = sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(folder))
    if not series:
        raise VolumeReadError(f"{folder}: folder holds no DICOM series")
    if len(series) > 1:
        raise VolumeReadError(
            f"{folder}: folder holds {len(series)} DICOM series ({', '.join(series)}); "
            f"expected one per folder")
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder), series[0]))
    return reader.Execute()


def image_to_array(image: sitk.Image) -> np.ndarray:
    """Array in ``(z, y, x)`` or ``(z, y, x, c)`` order; 4D images put their 4th axis last."""
    array = sitk.GetArrayFromImage(image)
    if image.GetDimension() == 4:  # (t, z, y, x) -> (z, y, x, t): MSD multi-modal files
        array = np.moveaxis(array, 0, -1)
    return array


def read_volume(path: PathLike) -> Tuple[np.ndarray, Geometry]:
    """Reads a volume and its geometry.

    Returns:
      ``(array, geometry)``: array ``(z, y, x)`` (or ``(z, y, x, c)`` for multi-channel /
      4D files) in the file's own dtype; :class:`Geometry` with spacing and origin in
      ``(x, y, z)`` order.
    """
    image = read_image(path)
    return image_to_array(image), Geometry.of(image)


def array_to_image(array: np.ndarray, geometry: Geometry) -> sitk.Image:
    """SimpleITK image of a ``(z, y, x)`` or ``(z, y, x, c)`` array with ``geometry``."""
    array = np.asarray(array)
    if array.ndim not in (3, 4):
        raise ValueError(f"expected a (z, y, x) or (z, y, x, c) array, got shape {array.shape}")
    if array.dtype == np.bool_:
        array = array.astype(np.uint8)
    image = sitk.GetImageFromArray(array, isVector=array.ndim == 4)
    return geometry.apply_to(image)


def _atomic_write(path: pathlib.Path, write) -> None:
    """Runs ``write(tmp_path)`` in a temporary folder beside ``path``, then moves the files
    in place (data files before the header), so no half-written file ever has the final name."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp_dir = pathlib.Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        write(tmp_dir / path.name)
        produced = sorted(tmp_dir.iterdir(), key=lambda p: p.name == path.name)
        for item in produced:
            os.replace(item, path.parent / item.name)
    finally:
        shutil.rmtree(tmp_dir, ignore_errors=True)


def write_volume(path: PathLike, array: np.ndarray, geometry: Geometry,
                 compress: bool = True) -> pathlib.Path:
    """Writes ``array`` (``(z, y, x)`` or ``(z, y, x, c)``) with ``geometry``, atomically.

    The format follows the suffix (NIfTI, MetaImage, NRRD). Reading the file back gives the
    same voxels, spacing, origin and direction, so a label map written with a scan's
    geometry overlays that scan in ITK-SNAP / 3D Slicer.
    """
    path = pathlib.Path(path)
    if not volume_suffix(path):
        raise ValueError(f"{path}: unknown volume format; use one of {', '.join(VOLUME_SUFFIXES)}")
    image = array_to_image(array, geometry)
    try:
        _atomic_write(path, lambda tmp: sitk.WriteImage(image, str(tmp), compress))
    except RuntimeError as err:  # ITK's error for a file it could not write (no space, permissions)
        reason = str(err).strip().splitlines()[-1] if str(err).strip() else type(err).__name__
        raise UserError(f"{path}: could not be written ({reason})") from err
    return path


def write_dicom_series(folder: PathLike, array: np.ndarray, geometry: Geometry,
                       modality: str = "MR") -> pathlib.Path:
    """Writes a ``(z, y, x)`` int16 volume as a DICOM series, one file per slice.

    The direction must be a rotation (determinant +1), as DICOM stores only the first two
    direction columns. The folder is written beside its final name and renamed into place.
    """
    folder = pathlib.Path(folder)
    direction = np.array(geometry.direction).reshape(3, 3)
    if not np.isclose(np.linalg.det(direction), 1.0, atol=1e-6):
        raise ValueError(f"DICOM needs a right-handed direction (det +1), got det "
                         f"{np.linalg.det(direction):.3f} for {folder}")
    image = array_to_image(np.asarray(array).astype(np.int16), geometry)
    uid = "1.2.826.0.1.3680043.2.1125." + str(abs(hash((str(folder), array.shape))) % 10**12)
    # DICOM's ImageOrientationPatient: the row (x) and column (y) direction cosines.
    orientation = "\\".join(f"{v:.10f}" for v in (*direction[:, 0], *direction[:, 1]))
    tmp = pathlib.Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    try:
        writer = sitk.ImageFileWriter()
        writer.KeepOriginalImageUIDOn()
        for z in range(image.GetDepth()):
            piece = image[:, :, z]
            position = image.TransformIndexToPhysicalPoint((0, 0, z))
            tags = {
                "0008|0060": modality, "0008|0016": "1.2.840.10008.5.1.4.1.1.4",
                "0020|000d": uid + ".1", "0020|000e": uid + ".2",
                "0008|0018": f"{uid}.3.{z + 1}", "0020|0013": str(z + 1),
                "0020|0032": "\\".join(f"{v:.10f}" for v in position),
                "0020|0037": orientation,
                "0018|0050": f"{geometry.spacing[2]:.10f}",
                "0028|0030": f"{geometry.spacing[1]:.10f}\\{geometry.spacing[0]:.10f}",
            }
            for tag, value in tags.items():
                piece.SetMetaData(tag, value)
            writer.SetFileName(str(tmp / f"slice_{z:04d}.dcm"))
            writer.Execute(piece)
        if folder.exists():
            raise FileExistsError(f"{folder}: already exists; refusing to overwrite a DICOM folder")
        os.replace(tmp, folder)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return folder
