"""Segmenting new scans, no labels needed: find the scans of a folder (or a list of files), run
each through a loaded model's segment function (:mod:`vnet_tf.inference.loading`: a workdir, an ensemble
or an export, the same inference graph that evaluation runs), and write each label map on the
scan's own grid. A scan that cannot be read or segmented is reported by name and the others go
on; a scan already predicted is skipped unless asked to overwrite.
"""

from __future__ import annotations

import dataclasses
import pathlib
import re
import time
from typing import Callable, List, Optional, Sequence

import numpy as np

from vnet_tf.core.errors import UserError, describe
from vnet_tf.core.folders import VOLUME_TEMPORARIES, remove_stale, writable_folder
from vnet_tf.core.lock import folder_lock
from vnet_tf.core.io import VOLUME_SUFFIXES, PathLike, case_stem, read_image, volume_suffix, write_volume
from vnet_tf.inference.segmentation import SegmentFunction, predict_case

# nnU-Net's channel naming: <case>_0000.nii.gz, <case>_0001.nii.gz, ... for a multi-channel scan.
CHANNEL_FILE = re.compile(r"^(?P<case>.+)_(?P<channel>\d{4})$")


@dataclasses.dataclass(frozen=True)
class Scan:
    name: str                    # the output's name: the file's stem, or the DICOM folder's name
    paths: tuple                 # one file (or DICOM folder) per channel, in channel order


def _is_dicom_folder(folder: pathlib.Path) -> bool:
    return folder.is_dir() and any(p.suffix.lower() == ".dcm" for p in folder.iterdir())


def find_scans(inputs: Sequence[PathLike], channels: int = 1) -> List[Scan]:
    """The scans of ``inputs``: volume files and DICOM series folders, given directly or found in
    a folder (not recursively: a sub-folder of ``.dcm`` files is one scan). With ``channels`` > 1,
    files named ``<case>_0000``, ``<case>_0001``, ... are the channels of one scan."""
    found = []
    for item in (pathlib.Path(p) for p in inputs):
        if not item.exists():
            raise UserError(f"{item}: no such file or folder")
        if item.is_file() or _is_dicom_folder(item):
            found.append(item)
        else:
            found += sorted(p for p in item.iterdir() if (p.is_file() and volume_suffix(p)) or _is_dicom_folder(p))
    if not found:
        raise UserError(f"{', '.join(str(p) for p in inputs)}: expected scans (NIfTI, MetaImage, NRRD files or "
                        f"DICOM series folders); found none")
    if channels == 1:
        return [Scan(case_stem(p), (p,)) for p in found]
    groups = {}
    for path in found:
        match = CHANNEL_FILE.match(case_stem(path))
        if not match:
            raise UserError(f"{path}: the model takes {channels} channels, one file each, named "
                            f"<case>_0000 ... <case>_{channels - 1:04d}; this name has no channel number")
        groups.setdefault(match["case"], {})[int(match["channel"])] = path
    scans = []
    for case, by_channel in sorted(groups.items()):
        if sorted(by_channel) != list(range(channels)):
            raise UserError(f"{case}: expected the channel files _0000 ... _{channels - 1:04d}; found "
                            f"{', '.join(f'_{c:04d}' for c in sorted(by_channel))}")
        scans.append(Scan(case, tuple(by_channel[c] for c in range(channels))))
    return scans


@dataclasses.dataclass
class PredictionReport:
    written: List[str] = dataclasses.field(default_factory=list)
    skipped: List[str] = dataclasses.field(default_factory=list)
    failed: List[str] = dataclasses.field(default_factory=list)    # "name: reason"


def output_path(output_dir: PathLike, scan: Scan, suffix: str) -> pathlib.Path:
    """Where ``scan``'s label map goes: ``suffix`` (e.g. ``.nii.gz``), or ``""`` for the
    scan's own format (NIfTI for a DICOM series)."""
    own = volume_suffix(scan.paths[0]) or ".nii.gz"
    return pathlib.Path(output_dir) / f"{scan.name}{suffix or own}"


def predict_scans(scans: Sequence[Scan], segment: SegmentFunction, output_dir: PathLike, *, postprocess: str = "none",
                  min_size: int = 0, n4: bool = False, suffix: str = ".nii.gz", probabilities: bool = False,
                  overwrite: bool = False,
                  log: Callable[[str], None] = print) -> PredictionReport:
    """Segments each scan and writes ``OUTPUT_DIR/<name><suffix>`` (and, with ``probabilities``,
    ``<name>_probabilities.nii.gz``: float32, one component per class). Returns what was
    written, skipped (already there) and failed; a failure is logged and the rest go on. The
    output folder is locked meanwhile (:mod:`vnet_tf.core.lock`)."""
    output_dir = writable_folder(output_dir, "output folder")
    with folder_lock(output_dir, "output folder"):
        remove_stale(output_dir, VOLUME_TEMPORARIES)
        return _predict_each(scans, segment, output_dir, postprocess, min_size, n4, suffix, probabilities,
                             overwrite, log)


def _predict_each(scans, segment, output_dir: pathlib.Path, postprocess, min_size, n4, suffix, probabilities,
                  overwrite, log) -> PredictionReport:
    """:func:`predict_scans` with the output folder locked."""
    report, started = PredictionReport(), time.perf_counter()
    for index, scan in enumerate(scans, start=1):
        target = output_path(output_dir, scan, suffix)
        if target.exists() and not overwrite:
            report.skipped.append(scan.name)
            continue
        try:
            prediction = predict_case([read_image(p) for p in scan.paths], segment, postprocess, min_size, n4,
                                      keep_probabilities=probabilities, names=tuple(str(p) for p in scan.paths))
            if probabilities:
                write_volume(output_dir / f"{scan.name}_probabilities.nii.gz",
                             np.asarray(prediction.probabilities, np.float32), prediction.geometry)
            write_volume(target, prediction.label.astype(np.uint8), prediction.geometry)
        except Exception as err:  # pylint: disable=broad-except
            reason = describe(err)
            if reason is None:
                raise
            reason = reason.splitlines()[0]
            report.failed.append(f"{scan.name}: {reason}")
            log(f"[{index}/{len(scans)}] {scan.name}: FAILED: {reason}")
            continue
        report.written.append(scan.name)
        per_scan = (time.perf_counter() - started) / len(report.written)
        log(f"[{index}/{len(scans)}] {scan.name} -> {target.name} ({per_scan:.1f} s per scan, "
            f"about {per_scan * (len(scans) - index):.0f} s left)")
    return report


def check_suffix(suffix: Optional[str]) -> str:
    """The output suffix, checked: one of the volume formats, or ``""`` (the scan's own)."""
    if suffix and suffix not in VOLUME_SUFFIXES:
        raise UserError(f"output format {suffix!r}: expected one of {', '.join(VOLUME_SUFFIXES)}, or 'same' "
                        f"for each scan's own format")
    return suffix or ""
