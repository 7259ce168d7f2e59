"""Preprocess a case for the network, record every step, and undo it for predictions.

Steps, in order, each optional (see :class:`PreprocessConfig`):

1. N4 bias-field correction of each channel (the paper; slow, off by default).
2. Reorientation to one canonical orientation (a permutation / flip of axes, no
   interpolation; default ``LPS``, i.e. the identity direction for axis-aligned scans).
3. Resampling to a target spacing (image: linear or B-spline; label: nearest neighbour,
   or each label's indicator resampled linearly then argmax). Origin and direction are kept;
   the new size is ``round(size * spacing / target)``.
4. Intensity normalisation of each channel: optional percentile clipping, then z-score over
   the whole volume, z-score over the foreground (voxels != 0), or rescale to [0, 1].
5. Centre crop / zero pad to a fixed size (the paper: 64x128x128 voxels, z-y-x, at
   1.5x1x1 mm) or keep the size.

Every spatial setting here is in array order ``(z, y, x)`` and named ``*_zyx``.
:class:`PreprocessRecord` holds the grids a case went through (the inference graph maps
predictions back itself: :mod:`vnet_tf.inference.graph_preprocessing`).
"""

from __future__ import annotations

import dataclasses
from typing import List, Optional, Sequence, Tuple

import numpy as np
import SimpleITK as sitk

from vnet_tf.core.errors import UserError
from vnet_tf.core.io import Geometry
from vnet_tf.core.labels import value_problem
from vnet_tf.core.settings import flag, no_flag

NORMALIZATIONS = ("none", "zscore", "zscore_foreground", "rescale", "ct")
IMAGE_INTERPOLATIONS = {"linear": sitk.sitkLinear, "bspline": sitk.sitkBSpline}
LABEL_INTERPOLATIONS = ("nearest", "linear_argmax")
AXIS_OF_LETTER = {"L": 0, "R": 0, "A": 1, "P": 1, "S": 2, "I": 2}


@dataclasses.dataclass(frozen=True)
class PreprocessConfig:
    """What to do to every case (defaults: reorient to LPS, z-score, keep spacing and size)."""

    orientation: Optional[str] = no_flag("LPS", "LPS, the orientation the inference graph serves")
    target_spacing_zyx: Optional[Tuple[float, float, float]] = flag(
        None, name="target_spacing", positive=True, help="resample to this spacing in mm, z,y,x; empty = keep")
    image_interpolation: str = no_flag("linear", "linear: the inference graph resamples linearly only (another "
                                       "is refused)")
    label_interpolation: str = no_flag("nearest", "nearest: each voxel of the network's grid keeps a label the "
                                       "annotator drew")
    normalization: str = flag("zscore", name="intensity_normalization", choices=NORMALIZATIONS,
                              help="per-case intensity normalisation; ct: the dataset's --ct_statistics")
    clip_percentiles: Optional[Tuple[float, float]] = flag(
        None, name="clip_percentiles", help="clip intensities to these percentiles first, e.g. 0.5,99.5")
    ct_statistics: Optional[Tuple[float, float, float, float]] = flag(None, name="ct_statistics", help=(
        "with --intensity_normalization=ct: low,high,mean,std: clip to [low, high], then (x - mean) / std "
        "(vnet-plan measures them in the labelled foreground)"))
    crop_size_zyx: Optional[Tuple[int, int, int]] = no_flag(None, "a centre crop: the library's, for data larger "
                                                            "than any patch")
    n4: bool = no_flag(False, "N4 bias correction; a run that used it cannot be exported")

    def validate(self) -> "PreprocessConfig":
        code = (self.orientation or "").upper()
        if self.orientation is not None and (
                len(code) != 3 or any(c not in AXIS_OF_LETTER for c in code)
                or len({AXIS_OF_LETTER[c] for c in code}) != 3):
            raise ValueError(f"orientation must be a 3-letter code with one of L/R, A/P and "
                             f"S/I each (e.g. 'LPS', 'RAS'), got {self.orientation!r}")
        if self.target_spacing_zyx is not None and (
                len(self.target_spacing_zyx) != 3 or min(self.target_spacing_zyx) <= 0):
            raise ValueError(f"target_spacing_zyx must be 3 positive spacings in mm, "
                             f"got {self.target_spacing_zyx!r}")
        if self.image_interpolation not in IMAGE_INTERPOLATIONS:
            raise ValueError(f"image_interpolation must be one of {tuple(IMAGE_INTERPOLATIONS)}, "
                             f"got {self.image_interpolation!r}")
        if self.label_interpolation not in LABEL_INTERPOLATIONS:
            raise ValueError(f"label_interpolation must be one of {LABEL_INTERPOLATIONS}, "
                             f"got {self.label_interpolation!r}")
        if self.normalization not in NORMALIZATIONS:
            raise ValueError(f"normalization must be one of {NORMALIZATIONS}, got {self.normalization!r}")
        if self.clip_percentiles is not None:
            low, high = self.clip_percentiles
            if not 0 <= low < high <= 100:
                raise ValueError(f"clip_percentiles must be (low, high) with 0 <= low < high <= 100, "
                                 f"got {self.clip_percentiles!r}")
        if (self.normalization == "ct") != (self.ct_statistics is not None):
            raise ValueError(f"ct_statistics (low, high, mean, std) go with normalization 'ct' and only with it; "
                             f"got normalization {self.normalization!r} and ct_statistics {self.ct_statistics!r}")
        if self.ct_statistics is not None:
            stats = tuple(self.ct_statistics)
            if len(stats) != 4 or not stats[0] < stats[1] or not stats[3] > 0 or not np.all(np.isfinite(stats)):
                raise ValueError(f"ct_statistics must be (low, high, mean, std) with low < high and std > 0, "
                                 f"got {self.ct_statistics!r}")
        if self.crop_size_zyx is not None and (
                len(self.crop_size_zyx) != 3 or min(self.crop_size_zyx) < 1):
            raise ValueError(f"crop_size_zyx must be 3 positive sizes, got {self.crop_size_zyx!r}")
        return self

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True)
class PreprocessRecord:
    """The grids a case went through; enough to map a prediction back exactly."""

    original_size_zyx: Tuple[int, int, int]
    original_geometry: Geometry
    original_orientation: str
    oriented_size_zyx: Tuple[int, int, int]
    oriented_geometry: Geometry
    resampled_size_zyx: Tuple[int, int, int]
    resampled_geometry: Geometry
    crop_start_zyx: Tuple[int, int, int]  # negative = padding before
    final_size_zyx: Tuple[int, int, int]


def split_channels(image: sitk.Image) -> List[sitk.Image]:
    """The 3D scalar images of a 3D, vector or 4D SimpleITK image."""
    if image.GetDimension() == 4:
        size = list(image.GetSize())
        channels = size[3]
        size[3] = 0
        return [sitk.Extract(image, size, [0, 0, 0, t]) for t in range(channels)]
    if image.GetNumberOfComponentsPerPixel() > 1:
        return [sitk.VectorIndexSelectionCast(image, c) for c in range(image.GetNumberOfComponentsPerPixel())]
    return [image]


def _size_zyx(image: sitk.Image) -> Tuple[int, int, int]:
    return tuple(int(s) for s in reversed(image.GetSize()))


def _resample(image: sitk.Image, size_xyz, spacing_xyz, origin, direction, interpolator,
              output_type=sitk.sitkFloat32) -> sitk.Image:
    return sitk.Resample(image, [int(s) for s in size_xyz], sitk.Transform(), interpolator,
                         origin, spacing_xyz, direction, 0.0, output_type)


def _resample_label(label: sitk.Image, reference: sitk.Image, mode: str) -> sitk.Image:
    args = (reference.GetSize(), reference.GetSpacing(), reference.GetOrigin(), reference.GetDirection())
    if mode == "nearest":
        return _resample(label, *args, sitk.sitkNearestNeighbor, label.GetPixelID())
    values = np.unique(sitk.GetArrayViewFromImage(label))
    scores = [sitk.GetArrayFromImage(_resample(sitk.Cast(label == int(v), sitk.sitkFloat32),
                                               *args, sitk.sitkLinear)) for v in values]
    out = sitk.GetImageFromArray(values[np.argmax(np.stack(scores), axis=0)].astype(
        sitk.GetArrayViewFromImage(label).dtype))
    out.CopyInformation(reference)
    return out


def normalize_intensities(array: np.ndarray, mode: str, clip_percentiles: Optional[Sequence[float]] = None,
                          ct_statistics: Optional[Sequence[float]] = None) -> np.ndarray:
    """Normalises one channel ``(z, y, x)``; returns float32. See :class:`PreprocessConfig`;
    ``ct``: clip to ``[low, high]`` then ``(x - mean) / std``, the dataset's values."""
    array = np.asarray(array, dtype=np.float32)
    if mode == "ct":
        low, high, mean, std = (float(v) for v in ct_statistics)
        return ((np.clip(array, low, high) - mean) / std).astype(np.float32)
    mask = array != 0 if mode == "zscore_foreground" else np.ones(array.shape, bool)
    if not mask.any():
        mask = np.ones(array.shape, bool)
    if clip_percentiles is not None:
        low, high = np.percentile(array[mask], clip_percentiles)
        array = np.clip(array, low, high)
    if mode in ("zscore", "zscore_foreground"):
        values = array[mask]
        out = (array - values.mean()) / max(float(values.std()), 1e-8)
        if mode == "zscore_foreground":
            out[~mask] = 0.0
        return out.astype(np.float32)
    if mode == "rescale":
        low, high = float(array.min()), float(array.max())
        return ((array - low) / max(high - low, 1e-8)).astype(np.float32)
    return array


def crop_or_pad(array: np.ndarray, start_zyx, size_zyx) -> np.ndarray:
    """The window ``[start, start + size)`` of the first 3 axes, zero outside the array."""
    out = np.zeros(tuple(size_zyx) + array.shape[3:], dtype=array.dtype)
    src, dst = [], []
    for start, size, length in zip(start_zyx, size_zyx, array.shape[:3]):
        lo, hi = max(start, 0), min(start + size, length)
        src.append(slice(lo, max(hi, lo)))
        dst.append(slice(lo - start, lo - start + max(hi - lo, 0)))
    out[tuple(dst)] = array[tuple(src)]
    return out


def n4_correct(image: sitk.Image) -> sitk.Image:
    image = sitk.Cast(image, sitk.sitkFloat32)
    mask = sitk.OtsuThreshold(image, 0, 1, 200)
    shrink = 2
    small = sitk.Shrink(image, [shrink] * 3)
    small_mask = sitk.Shrink(mask, [shrink] * 3)
    corrector = sitk.N4BiasFieldCorrectionImageFilter()
    corrector.SetMaximumNumberOfIterations([20, 20])
    corrector.Execute(small, small_mask)
    log_field = corrector.GetLogBiasFieldAsImage(image)
    return image / sitk.Exp(log_field)


def _label_array(label: sitk.Image) -> np.ndarray:
    """The label as uint8, refusing values a cast would change (wrap or truncate)."""
    array = sitk.GetArrayFromImage(label)
    problem = value_problem(np.unique(array))
    if problem:
        raise UserError(f"label: {problem}")
    return array.astype(np.uint8)


def preprocess_case(images: Sequence[sitk.Image], label: Optional[sitk.Image],
                    config: PreprocessConfig):
    """Preprocesses one case.

    Args:
      images: one SimpleITK image per channel file (each 3D, vector or 4D; their channels
        are concatenated in order), all on the same grid.
      label: the label map on that grid, or ``None``.
      config: the steps to apply.

    Returns:
      ``(image, label, record)``: float32 ``(z, y, x, c)``, uint8 ``(z, y, x)`` (or
      ``None``) and the :class:`PreprocessRecord`.
    """
    config.validate()
    channels = [c for image in images for c in split_channels(image)]
    reference = channels[0]
    original_geometry = Geometry.of(reference)
    orientation = sitk.DICOMOrientImageFilter.GetOrientationFromDirectionCosines(reference.GetDirection())
    if config.n4:
        channels = [n4_correct(c) for c in channels]
    if config.orientation is not None:
        channels = [sitk.DICOMOrient(c, config.orientation.upper()) for c in channels]
        label = sitk.DICOMOrient(label, config.orientation.upper()) if label is not None else None
    oriented = channels[0]
    resampled = oriented
    if config.target_spacing_zyx is not None:
        spacing_xyz = tuple(float(s) for s in reversed(config.target_spacing_zyx))
        size_xyz = [max(1, int(round(n * s / t))) for n, s, t in
                    zip(oriented.GetSize(), oriented.GetSpacing(), spacing_xyz)]
        interpolator = IMAGE_INTERPOLATIONS[config.image_interpolation]
        channels = [_resample(c, size_xyz, spacing_xyz, oriented.GetOrigin(),
                              oriented.GetDirection(), interpolator) for c in channels]
        resampled = channels[0]
        if label is not None:
            label = _resample_label(label, resampled, config.label_interpolation)
    arrays = [normalize_intensities(sitk.GetArrayViewFromImage(c), config.normalization,
                                    config.clip_percentiles, config.ct_statistics) for c in channels]
    image_array = np.stack(arrays, axis=-1)
    label_array = None if label is None else _label_array(label)
    size = image_array.shape[:3]
    final = tuple(config.crop_size_zyx) if config.crop_size_zyx else size
    start = tuple((s - f) // 2 for s, f in zip(size, final))
    if final != size:
        image_array = crop_or_pad(image_array, start, final)
        label_array = None if label_array is None else crop_or_pad(label_array, start, final)
    record = PreprocessRecord(
        original_size_zyx=_size_zyx(reference), original_geometry=original_geometry,
        original_orientation=orientation, oriented_size_zyx=_size_zyx(oriented),
        oriented_geometry=Geometry.of(oriented), resampled_size_zyx=tuple(int(s) for s in size),
        resampled_geometry=Geometry.of(resampled), crop_start_zyx=tuple(int(s) for s in start),
        final_size_zyx=tuple(int(s) for s in final))
    return image_array.astype(np.float32), label_array, record
