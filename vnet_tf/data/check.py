"""Check a dataset before training: read every case and report *all* problems at once
(the command: ``python -m vnet_tf.commands.check``, ``vnet-check``).

Errors (the case is unusable): a missing, unreadable or truncated file; a 2D image; more
or fewer channels than declared; zero or negative spacing; NaN or Inf intensities; a
label whose size, spacing, origin or direction differs from its image's (beyond a
tolerance of 1e-4 voxel / 1e-4 in the direction cosines); label values that are not
integers or lie outside the declared classes (or, where none are declared, are negative,
over 255, or leave a gap: the values found over the whole dataset must be 0..K-1); a case
with no label where the dataset lists labels. Warnings: an empty label (background only).
Input files are only read, never modified. Exit status 1 when any case has an error, 2 when
the folder cannot be read as a dataset.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import os
from typing import List, Optional, Sequence, Set, Tuple

import numpy as np
import SimpleITK as sitk

from vnet_tf.data.cases import Case, Dataset
from vnet_tf.core.integrity import nonfinite_problem
from vnet_tf.core.io import Geometry, VolumeReadError, image_to_array, read_image
from vnet_tf.core.labels import value_problem

GEOMETRY_TOLERANCE = 1e-4


@dataclasses.dataclass(frozen=True)
class Problem:
    case_id: str
    path: str
    message: str
    severity: str = "error"  # or "warning"

    def __str__(self) -> str:
        return f"{self.severity.upper()}: {self.path}: {self.message}"


@dataclasses.dataclass(frozen=True)
class CheckReport:
    cases: Sequence[Case]
    problems: Sequence[Problem]
    label_values: Tuple[int, ...] = ()  # every label value found, over all cases
    declared_classes: Optional[int] = None

    @property
    def num_classes(self) -> Optional[int]:
        """The declared classes, else those the label values make (``None`` without labels)."""
        if self.declared_classes is not None:
            return self.declared_classes
        return max(self.label_values) + 1 if self.label_values else None

    @property
    def errors(self) -> List[Problem]:
        return [p for p in self.problems if p.severity == "error"]

    @property
    def warnings(self) -> List[Problem]:
        return [p for p in self.problems if p.severity == "warning"]

    @property
    def good_cases(self) -> List[str]:
        bad = {p.case_id for p in self.errors}
        return [c.case_id for c in self.cases if c.case_id not in bad]

    @property
    def ok(self) -> bool:
        return not self.errors

    def summary(self) -> str:
        lines = [str(p) for p in self.problems]
        lines.append(f"{len(self.cases)} cases checked: {len(self.good_cases)} usable, "
                     f"{len(self.cases) - len(self.good_cases)} with errors, "
                     f"{len(self.warnings)} warning(s)")
        return "\n".join(lines)


def _read(path, case_id, what, problems) -> Optional[sitk.Image]:
    if path is None or not os.path.exists(path):
        problems.append(Problem(case_id, str(path), f"missing {what} file"))
        return None
    try:
        return read_image(path)
    except (VolumeReadError, OSError) as err:
        if "Refusing to change spacing" in str(err):  # ITK's refusal of a zero spacing
            message = f"{what} spacing has a zero or negative entry; expected positive spacings in mm ({err})"
        else:
            message = f"unreadable or truncated {what}: {err}"
        problems.append(Problem(case_id, str(path), message))
        return None


def _channel_count(image: sitk.Image) -> int:
    if image.GetDimension() == 4:
        return image.GetSize()[3]
    return image.GetNumberOfComponentsPerPixel()


def _check_shape(image: sitk.Image, path, case_id, what, problems) -> bool:
    size = image.GetSize()
    if image.GetDimension() < 3 or min(size[:3]) < 2:
        problems.append(Problem(case_id, str(path), f"{what} is 2D (size {size}); expected a 3D volume"))
        return False
    spacing = image.GetSpacing()[:3]
    if min(spacing) <= 0:
        problems.append(Problem(case_id, str(path), f"{what} spacing {spacing} has a zero or "
                                f"negative entry; expected positive spacings in mm"))
        return False
    return True


def check_case(case: Case, num_classes: Optional[int] = None,
               channels: Optional[int] = None, require_label: bool = False) -> List[Problem]:
    """All problems of one case (an empty list for a good case)."""
    return _check_case(case, num_classes, channels, require_label)[0]


def _check_case(case: Case, num_classes, channels, require_label) -> Tuple[List[Problem], Set[int], Optional[int]]:
    """The problems of one case, the values its label holds and its channels (``None`` where
    no image was read)."""
    problems: List[Problem] = []
    values: Set[int] = set()
    images = []
    found = None
    for path in case.images:
        image = _read(path, case.case_id, "image", problems)
        if image is None or not _check_shape(image, path, case.case_id, "image", problems):
            continue
        problem = nonfinite_problem(path, image_to_array(image))
        if problem:
            problems.append(Problem(case.case_id, str(path), problem))
        images.append((path, image))
    if images:
        found = sum(_channel_count(image) for _, image in images)
        if channels is not None and found != channels:
            problems.append(Problem(case.case_id, str(images[0][0]),
                                    f"image has {found} channel(s) where {channels} were declared"))
        _, reference = images[0]
        for path, image in images[1:]:
            _compare_grids(reference, image, case.case_id, path, "channel file", problems)
    if case.label is None and require_label:
        problems.append(Problem(case.case_id, str(case.images[0]), "the dataset lists no label for this case; "
                                "expected one for every training and validation case"))
    label = _read(case.label, case.case_id, "label", problems) if case.label is not None else None
    if label is not None and _check_shape(label, case.label, case.case_id, "label", problems):
        if images:
            _compare_grids(images[0][1], label, case.case_id, case.label, "label", problems)
        values = _check_label_values(label, case, num_classes, problems)
    return problems, values, found


def _compare_grids(reference, other, case_id, path, what, problems) -> None:
    if reference.GetSize()[:3] != other.GetSize()[:3]:
        problems.append(Problem(case_id, str(path), f"{what} size {other.GetSize()[:3]} differs "
                                f"from the image's {reference.GetSize()[:3]}"))
        return
    ref_geo, geo = Geometry.of(reference), Geometry.of(other)
    for field in ref_geo.differences(geo, GEOMETRY_TOLERANCE):
        problems.append(Problem(case_id, str(path), f"{what} {field} {getattr(geo, field)} differs "
                                f"from the image's {getattr(ref_geo, field)}"))


def _check_label_values(label: sitk.Image, case: Case, num_classes, problems) -> Set[int]:
    values = np.unique(sitk.GetArrayViewFromImage(label))
    problem = value_problem(values, num_classes)
    if problem:
        problems.append(Problem(case.case_id, str(case.label), problem))
        return set()
    if values.size == 1 and values[0] == 0:
        problems.append(Problem(case.case_id, str(case.label), "label is empty (background only)",
                                "warning"))
    return {int(v) for v in values}


def _gap_problems(cases: Sequence[Case], values: Sequence[Set[int]]) -> List[Problem]:
    """Without declared classes, the label values over the whole dataset must be 0..K-1: a
    gap means a stray value (e.g. a 7 among 0..2) that would add classes nobody trains."""
    found = set().union(*values) if values else set()
    if not found:
        return []
    missing = sorted(set(range(max(found) + 1)) - found)
    if not missing:
        return []
    strays = {v for v in found if v > missing[0]}
    return [Problem(case.case_id, str(case.label),
                    f"label values {sorted(case_values & strays)} make the classes 0..{max(found)}, but "
                    f"{missing[:8]} occur in no case; expected the classes 0..K-1 without gaps: "
                    f"declare the classes (dataset.json 'labels', or num_classes) or fix the label")
            for case, case_values in zip(cases, values) if case_values & strays]


def _channel_problems(cases: Sequence[Case], counts: Sequence[Optional[int]]) -> List[Problem]:
    """Without declared channels, every case must have as many as the most common count (the
    network takes one count): each case that differs is an error naming both counts."""
    read = [c for c in counts if c is not None]
    if len(set(read)) < 2:
        return []
    usual = max(sorted(set(read)), key=read.count)
    return [Problem(case.case_id, str(case.images[0]),
                    f"image has {found} channel(s) where {read.count(usual)} of the {len(read)} cases read have "
                    f"{usual}; expected one channel count for the whole dataset (declare it: dataset.json "
                    f"'modality', or --channels)")
            for case, found in zip(cases, counts) if found is not None and found != usual]


def check_dataset(dataset: Dataset, num_classes: Optional[int] = None,
                  channels: Optional[int] = None, workers: Optional[int] = None,
                  require_labels: Optional[bool] = None) -> CheckReport:
    """Checks every case of ``dataset``. ``num_classes`` and ``channels`` default to what
    the dataset's index declares (MSD ``labels`` and ``modality``); with no classes
    declared, the label values found must be ``0..K-1``. ``require_labels``: every case
    must have a label (default: where any case has one)."""
    if num_classes is None and dataset.labels:
        num_classes = max(dataset.labels) + 1
    if channels is None:
        channels = dataset.channels
    if require_labels is None:
        require_labels = any(c.label is not None for c in dataset.cases)
    with concurrent.futures.ThreadPoolExecutor(max_workers=workers or os.cpu_count() or 1) as pool:
        per_case = list(pool.map(lambda c: _check_case(c, num_classes, channels, require_labels), dataset.cases))
    problems = [p for case_problems, _, _ in per_case for p in case_problems]
    values = [case_values for _, case_values, _ in per_case]
    if num_classes is None:
        problems += _gap_problems(dataset.cases, values)
    if channels is None:
        problems += _channel_problems(dataset.cases, [found for _, _, found in per_case])
    found = tuple(sorted(set().union(*values))) if values else ()
    return CheckReport(tuple(dataset.cases), tuple(problems), found, num_classes)
