"""Helpers shared by the tests: reference implementations the library does not need, and
writers of small synthetic datasets."""

from __future__ import annotations

from typing import Tuple

import numpy as np
import SimpleITK as sitk

from vnet_tf.core.io import Geometry
from vnet_tf.data.preprocess import PreprocessRecord, crop_or_pad


# The preprocessing undone with SimpleITK's own filters: the reference that the inference
# graph's mapping back to the scan's grid is checked against.

def _to_original(array: np.ndarray, record: PreprocessRecord, interpolator) -> sitk.Image:
    """Uncrop, resample and reorient a ``(z, y, x)`` array back to the original grid."""
    uncropped = crop_or_pad(array, tuple(-s for s in record.crop_start_zyx), record.resampled_size_zyx)
    image = record.resampled_geometry.apply_to(sitk.GetImageFromArray(uncropped))
    if record.resampled_size_zyx != record.oriented_size_zyx or \
            record.resampled_geometry.differences(record.oriented_geometry):
        geo = record.oriented_geometry
        image = sitk.Resample(image, list(reversed(record.oriented_size_zyx)), sitk.Transform(),
                              interpolator, geo.origin, geo.spacing, geo.direction, 0.0,
                              image.GetPixelID())
    image = sitk.DICOMOrient(image, record.original_orientation)
    if tuple(reversed(image.GetSize())) != tuple(record.original_size_zyx):
        raise ValueError(f"restored size {tuple(reversed(image.GetSize()))} differs from the original "
                         f"{record.original_size_zyx}: the record does not match this prediction")
    return record.original_geometry.apply_to(image)


def restore_label(label: np.ndarray, record: PreprocessRecord) -> Tuple[np.ndarray, Geometry]:
    """Maps a ``(z, y, x)`` label map from the preprocessed grid back to the original one
    (nearest neighbour). Returns ``(array, geometry)`` of the original scan."""
    if tuple(label.shape) != tuple(record.final_size_zyx):
        raise ValueError(f"label shape {tuple(label.shape)} differs from the preprocessed size "
                         f"{record.final_size_zyx}")
    image = _to_original(np.asarray(label), record, sitk.sitkNearestNeighbor)
    return sitk.GetArrayFromImage(image), record.original_geometry


def restore_probabilities(probabilities: np.ndarray, record: PreprocessRecord) -> np.ndarray:
    """Maps ``(z, y, x, C)`` class probabilities back to the original grid (linear per class;
    voxels outside the cropped window get probability 1 for class 0)."""
    channels = []
    for c in range(probabilities.shape[-1]):
        channel = np.asarray(probabilities[..., c], dtype=np.float32)
        if c == 0:  # outside the window is background: pad with 1 via 1 - (1 - p)
            restored = 1.0 - sitk.GetArrayFromImage(_to_original(1.0 - channel, record, sitk.sitkLinear))
        else:
            restored = sitk.GetArrayFromImage(_to_original(channel, record, sitk.sitkLinear))
        channels.append(restored)
    return np.stack(channels, axis=-1)
