"""The host's part of segmenting a scan, around the inference graph: the scan's channels as
one array with its spacing and direction, the graph (:class:`vnet_tf.inference.segmenter.Segmenter`,
or the same graph in an exported SavedModel), then connected-component post-processing,
which TensorFlow has no op for. ``evaluate.py`` and the TF Serving client
(:mod:`vnet_tf.serving.client`) both go through here; nothing here imports TensorFlow.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Dict, Optional, Sequence, Tuple

import numpy as np
import SimpleITK as sitk

from vnet_tf.core.errors import UserError
from vnet_tf.core.integrity import nonfinite_problem
from vnet_tf.core.io import Geometry
from vnet_tf.data.preprocess import n4_correct, split_channels

POSTPROCESS_MODES = ("none", "largest", "min_size")

# segment(volume (z, y, x, C) float32, spacing_zyx [3], direction [9], probabilities: bool)
#   -> {"labels": (z, y, x) int, "probabilities": (z, y, x, K) float32 when asked}
SegmentFunction = Callable[[np.ndarray, np.ndarray, np.ndarray, bool], Dict[str, np.ndarray]]


@dataclasses.dataclass
class ScanArrays:
    """What the graph needs of a scan: the voxels of every channel, spacing and direction."""
    volume: np.ndarray          # (z, y, x, C) float32, SimpleITK's array order
    spacing_zyx: np.ndarray     # float32 [3], mm
    direction: np.ndarray       # float32 [9], SimpleITK's GetDirection()
    geometry: Geometry          # the scan's own grid, to write the prediction on


def scan_arrays(images: Sequence[sitk.Image], n4: bool = False, names: Sequence[str] = ()) -> ScanArrays:
    """Stacks the channels of ``images`` (one per channel file; each 3D, vector or 4D) into
    one array. All channels must share the first one's grid (``ValueError`` naming the file
    otherwise), and every voxel finite (:func:`~vnet_tf.core.integrity.nonfinite_problem`, which reads
    a float NIfTI file named in ``names`` again: its NaNs were zeroed on reading). ``n4``:
    bias-field correct each channel first, as the run's preprocessing did."""
    for f, image in enumerate(images):
        problem = nonfinite_problem(names[f] if f < len(names) else None, sitk.GetArrayViewFromImage(image))
        if problem:
            raise UserError(f"{names[f] if f < len(names) else 'input volume'}: {problem}")
    sources = [(f, c) for f, image in enumerate(images) for c in split_channels(image)]
    channels = [c for _, c in sources]
    reference = Geometry.of(channels[0])
    for i, (f, channel) in enumerate(sources[1:], start=1):
        problems = Geometry.of(channel).differences(reference)
        if problems or channel.GetSize() != channels[0].GetSize():
            name = names[f] if f < len(names) else f"channel {i}"
            raise UserError(f"{name}: expected the grid of the first channel (size {channels[0].GetSize()}), "
                            f"got size {channel.GetSize()}; {'; '.join(problems)}")
    if n4:
        channels = [n4_correct(c) for c in channels]
    arrays = [sitk.GetArrayViewFromImage(c).astype(np.float32) for c in channels]
    volume = arrays[0][..., None] if len(arrays) == 1 else np.stack(arrays, axis=-1)  # one copy of a large scan, not two
    return ScanArrays(volume, np.asarray(channels[0].GetSpacing()[::-1], np.float32),
                      np.asarray(channels[0].GetDirection(), np.float32), reference)


def postprocess_label(label: np.ndarray, mode: str = "largest", min_size: int = 0) -> np.ndarray:
    """Per foreground class, keeps the largest connected component (``"largest"``) or the
    components of at least ``min_size`` voxels (``"min_size"``); removed voxels become 0.
    Components are face-and-edge-and-corner connected (26-neighbourhood)."""
    if mode == "none":
        return label
    if mode not in POSTPROCESS_MODES:
        raise ValueError(f"postprocess must be one of {POSTPROCESS_MODES}, got {mode!r}")
    out = np.array(label, copy=True)
    for cls in np.unique(label):
        if cls == 0:
            continue
        mask = sitk.GetImageFromArray((label == cls).astype(np.uint8))
        components = sitk.RelabelComponent(sitk.ConnectedComponent(mask, True), sortByObjectSize=True)
        comp = sitk.GetArrayFromImage(components)
        if mode == "largest":
            drop = comp > 1
        else:
            ids, counts = np.unique(comp[comp > 0], return_counts=True)
            drop = np.isin(comp, ids[counts < min_size])
        out[drop & (label == cls)] = 0
    return out


@dataclasses.dataclass
class Prediction:
    label: np.ndarray                            # (z, y, x) uint8 on the scan's grid
    geometry: Geometry                           # the scan's geometry
    probabilities: Optional[np.ndarray] = None   # (z, y, x, K) on the scan's grid


def predict_scan(scan: ScanArrays, segment: SegmentFunction, postprocess: str = "none", min_size: int = 0,
                 keep_probabilities: bool = False) -> Prediction:
    """The graph's labels for ``scan``, post-processed, on the scan's grid."""
    out = segment(scan.volume, scan.spacing_zyx, scan.direction, keep_probabilities)
    label = postprocess_label(np.asarray(out["labels"]).astype(np.uint8), postprocess, min_size)
    return Prediction(label, scan.geometry, out.get("probabilities") if keep_probabilities else None)


def predict_case(images: Sequence[sitk.Image], segment: SegmentFunction, postprocess: str = "none",
                 min_size: int = 0, n4: bool = False, keep_probabilities: bool = False,
                 names: Tuple[str, ...] = ()) -> Prediction:
    """:func:`scan_arrays` then :func:`predict_scan`."""
    return predict_scan(scan_arrays(images, n4, names), segment, postprocess, min_size, keep_probabilities)
