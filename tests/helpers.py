"""Helpers shared by the tests: reference implementations the library does not need, and
writers of small synthetic datasets."""

from __future__ import annotations

import dataclasses
import json
import pathlib
import shutil
import subprocess
import sys
from typing import Callable, Dict, Iterable, Optional, Sequence, Tuple

import numpy as np
import SimpleITK as sitk

from vnet_tf.core.io import Geometry, write_volume
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


# Small datasets on disk.

def msd_index(root: pathlib.Path, names: Iterable[str], labels: Optional[Dict[str, str]] = None,
              modality: Optional[str] = "MRI", extra_entries: Sequence[dict] = ()) -> pathlib.Path:
    """Writes ``root/dataset.json`` listing ``imagesTr/<name>.nii.gz`` and ``labelsTr/<name>.nii.gz``
    for each name (and ``extra_entries`` as they are); returns ``root``."""
    entries = [{"image": f"./imagesTr/{n}.nii.gz", "label": f"./labelsTr/{n}.nii.gz"} for n in names]
    index = {"labels": labels or {"0": "background", "1": "a", "2": "b"}, "training": entries + list(extra_entries)}
    if modality is not None:
        index["modality"] = {"0": modality}
    root.mkdir(parents=True, exist_ok=True)
    (root / "dataset.json").write_text(json.dumps(index))
    return root


def write_msd(root: pathlib.Path, cases: Dict[str, Tuple[np.ndarray, np.ndarray, Geometry]],
              labels: Optional[Dict[str, str]] = None, modality: Optional[str] = "MRI") -> pathlib.Path:
    """An MSD-layout dataset: ``cases`` maps each name to ``(image, label, geometry)``, the arrays
    in ``(z, y, x)`` order, written as they are (the label as uint8); returns ``root``."""
    for name, (image, label, geometry) in cases.items():
        write_volume(root / "imagesTr" / f"{name}.nii.gz", image, geometry)
        write_volume(root / "labelsTr" / f"{name}.nii.gz", np.asarray(label).astype(np.uint8), geometry)
    return msd_index(root, cases, labels, modality)


def spacing_geometry(spacing_zyx: Sequence[float]) -> Geometry:
    """Axis-aligned geometry at the origin with ``spacing_zyx`` (mm, array order)."""
    return Geometry(tuple(float(s) for s in reversed(spacing_zyx)), (0.0, 0.0, 0.0))


# Another Keras backend.

def run_under_backend(backend: str, code: str, env: dict, cwd: pathlib.Path) -> subprocess.CompletedProcess:
    """``code`` in a fresh Python with ``KERAS_BACKEND=backend`` (``env`` from conftest's
    subprocess_env)."""
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, encoding="utf-8",
                          env={**env, "KERAS_BACKEND": backend}, cwd=cwd, timeout=300)


# Training workdirs.

def copy_run(run: pathlib.Path, target: pathlib.Path,
             change: Optional[Callable[[pathlib.Path], None]] = None) -> pathlib.Path:
    """A copy of a training workdir (its TensorBoard logs left out), then ``change(target)``."""
    shutil.copytree(run, target, ignore=shutil.ignore_patterns("tensorboard"))
    if change is not None:
        change(target)
    return target


def edit_config(edit: Callable[[dict], None]) -> Callable[[pathlib.Path], None]:
    """A ``copy_run`` change that edits the copy's ``config.json`` in place."""
    def change(run: pathlib.Path) -> None:
        config = json.loads((run / "config.json").read_text())
        edit(config)
        (run / "config.json").write_text(json.dumps(config))
    return change


def tiny_train_config(folder: pathlib.Path, **overrides):
    """A TrainConfig that trains in seconds: 6 demo cases, a 3-level V-Net of width 4 on 16^3
    patches, 3 folds, 3 steps; ``overrides`` replace its settings."""
    from vnet_tf.data.demo_data import write_demo_dataset
    from vnet_tf.model.config import VNetConfig
    from vnet_tf.training.config import TrainConfig
    data = write_demo_dataset(folder / "demo", 6)
    base = TrainConfig(data_dir=str(data), workdir=str(folder / "run"), cache_dir=str(folder / "cache"),
                       model=VNetConfig(base_width=4, depth=3, kernel_size=3, normalization="instance"),
                       patch_size_zyx=(16, 16, 16), steps=3, num_folds=3, validation_every=100,
                       checkpoint_every=100)
    return dataclasses.replace(base, **overrides)
