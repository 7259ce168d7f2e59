"""The fingerprint of a labelled dataset: what ``vnet-plan`` derives a training run from.

One pass over the cases, each read once: per case its spacing and size after reorientation
(the run's orientation, ``LPS`` by default), the voxels of each class, the connected
components of each foreground class, and a sample of each channel's intensities inside the
labelled foreground (at most ``FOREGROUND_SAMPLES`` voxels a case, drawn with a fixed seed),
from which the intensity statistics are taken. The channels' modalities come from the
dataset's index (``dataset.json``), where it names them.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import os
import zlib
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import SimpleITK as sitk

from vnet_tf.core.errors import UserError
from vnet_tf.core.io import Geometry, read_image
from vnet_tf.data.cases import Case, Dataset
from vnet_tf.data.preprocess import split_channels

FOREGROUND_SAMPLES = 10_000


@dataclasses.dataclass(frozen=True)
class CaseFingerprint:
    case_id: str
    spacing_zyx: Tuple[float, float, float]
    size_zyx: Tuple[int, int, int]
    class_voxels: Tuple[int, ...]          # voxels of class 0, 1, ... (as many as the label's values reach)
    components: Tuple[int, ...]            # connected components of each foreground class 1, 2, ...
    foreground: Tuple[np.ndarray, ...]     # per channel: sampled intensities inside the label's foreground


@dataclasses.dataclass(frozen=True)
class Fingerprint:
    name: str
    modalities: Tuple[str, ...]   # per channel; "" where the index names none
    cases: Tuple[CaseFingerprint, ...]

    @property
    def channels(self) -> int:
        return len(self.modalities)

    @property
    def spacings(self) -> np.ndarray:
        return np.array([c.spacing_zyx for c in self.cases], np.float64)

    @property
    def sizes(self) -> np.ndarray:
        return np.array([c.size_zyx for c in self.cases], np.int64)

    @property
    def class_voxels(self) -> np.ndarray:
        """Voxels of each class over every case."""
        k = max(len(c.class_voxels) for c in self.cases)
        return np.sum([np.pad(c.class_voxels, (0, k - len(c.class_voxels))) for c in self.cases], axis=0)

    def foreground(self, channel: int) -> np.ndarray:
        return np.concatenate([c.foreground[channel] for c in self.cases])

    def intensities(self, channel: int) -> Dict[str, float]:
        """Percentiles 0.5 / 50 / 99.5, mean and std of a channel's sampled foreground."""
        values = self.foreground(channel).astype(np.float64)
        if values.size == 0:
            return {}
        low, median, high = np.percentile(values, [0.5, 50.0, 99.5])
        return {"p0.5": float(low), "median": float(median), "p99.5": float(high),
                "mean": float(values.mean()), "std": float(values.std())}

    def lines(self) -> List[str]:
        """The fingerprint in a few lines of text."""
        spacing, size = self.spacings, self.sizes
        voxels = self.class_voxels
        out = [f"dataset {self.name}: {len(self.cases)} labelled cases, {self.channels} channel(s) "
               f"({', '.join(m or 'modality not named' for m in self.modalities)})",
               f"spacing (mm, z,y,x): median {_triple(np.median(spacing, 0))}, "
               f"min {_triple(spacing.min(0))}, max {_triple(spacing.max(0))}",
               f"size (voxels, z,y,x): median {_triple(np.median(size, 0), '.0f')}, "
               f"min {_triple(size.min(0), 'd')}, max {_triple(size.max(0), 'd')}",
               "classes (share of voxels): " + ", ".join(f"{k}: {v / voxels.sum():.4f}" for k, v in enumerate(voxels))]
        for channel in range(self.channels):
            stats = self.intensities(channel)
            if stats:
                out.append(f"channel {channel} in the foreground: " + ", ".join(f"{k} {v:.4g}" for k, v in stats.items()))
        return out


def _triple(values, fmt: str = ".3g") -> str:
    return " x ".join(format(v, fmt) for v in values)


def _read(path, what: str, case_id: str) -> sitk.Image:
    if path is None or not os.path.exists(path):
        raise UserError(f"{path}: case {case_id} has no {what} file; vnet-plan needs every case labelled "
                        f"(vnet-check DATA_DIR lists every problem)")
    return read_image(path)


def fingerprint_case(case: Case, orientation: Optional[str] = "LPS", seed: int = 0) -> CaseFingerprint:
    """Reads one case (images and label) and measures it (``UserError`` naming the file when
    it cannot be read, or when the label's grid is not the image's)."""
    channels = [c for path in case.images for c in split_channels(_read(path, "image", case.case_id))]
    label = _read(case.label, "label", case.case_id)
    problems = Geometry.of(label).differences(Geometry.of(channels[0]))
    if problems or label.GetSize() != channels[0].GetSize():
        raise UserError(f"{case.label}: expected the grid of its image {case.images[0]} (size {channels[0].GetSize()}), "
                        f"got size {label.GetSize()}; {'; '.join(problems)} (vnet-check DATA_DIR lists every problem)")
    if orientation is not None:
        channels = [sitk.DICOMOrient(c, orientation.upper()) for c in channels]
        label = sitk.DICOMOrient(label, orientation.upper())
    labels = sitk.GetArrayFromImage(label)
    if not np.all(np.equal(np.mod(labels, 1), 0)) or labels.min() < 0:
        raise UserError(f"{case.label}: expected class numbers 0, 1, ... (non-negative integers), "
                        f"found values from {labels.min()} to {labels.max()}")
    labels = labels.astype(np.int64)
    counts = np.bincount(labels.ravel())
    components = []
    for cls in range(1, len(counts)):
        if counts[cls] == 0:
            components.append(0)
            continue
        mask = sitk.GetImageFromArray((labels == cls).astype(np.uint8))
        components.append(int(sitk.GetArrayFromImage(sitk.ConnectedComponent(mask, True)).max()))
    where = np.flatnonzero(labels.ravel() > 0)
    rng = np.random.default_rng([seed, zlib.crc32(case.case_id.encode())])
    picked = np.sort(rng.choice(where, FOREGROUND_SAMPLES, replace=False)) if where.size > FOREGROUND_SAMPLES else where
    foreground = tuple(sitk.GetArrayFromImage(c).ravel()[picked].astype(np.float32) for c in channels)
    return CaseFingerprint(case.case_id, tuple(float(s) for s in channels[0].GetSpacing()[::-1]),
                           tuple(int(s) for s in channels[0].GetSize()[::-1]), tuple(int(n) for n in counts),
                           tuple(components), foreground)


def fingerprint_dataset(dataset: Dataset, orientation: Optional[str] = "LPS", workers: Optional[int] = None,
                        seed: int = 0) -> Fingerprint:
    """The fingerprint of every case of ``dataset`` (all must be labelled and readable)."""
    with concurrent.futures.ThreadPoolExecutor(max_workers=workers or os.cpu_count() or 1) as pool:
        cases = tuple(pool.map(lambda c: fingerprint_case(c, orientation, seed), dataset.cases))
    channels = {len(c.foreground) for c in cases}
    if len(channels) != 1:
        per = {c.case_id: len(c.foreground) for c in cases}
        raise UserError(f"{dataset.root}: expected the same number of channels in every case, found {sorted(channels)}: "
                        f"{_some(per)}")
    count = channels.pop()
    modalities = tuple(dataset.modalities or ())
    if modalities and len(modalities) != count:
        raise UserError(f"{dataset.root}: the index names {len(modalities)} modalities {list(modalities)}, "
                        f"the cases have {count} channel(s)")
    return Fingerprint(dataset.root.name, modalities or ("",) * count, cases)


def _some(mapping: Dict[str, int], n: int = 5) -> str:
    items = sorted(mapping.items())
    return ", ".join(f"{k}: {v}" for k, v in items[:n]) + (", ..." if len(items) > n else "")


def is_ct(modalities: Sequence[str]) -> bool:
    """Whether every channel is CT (as the index names it: "CT", "ct", "CT scan", ...)."""
    return bool(modalities) and all(m.strip().upper().split(" ")[0] == "CT" for m in modalities)
