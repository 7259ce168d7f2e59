"""Is the anatomy laid out the same way in every case? Label centroids per axis.

    python -m vnet_tf.commands.label_orientation ../shared/data/Task04_Hippocampus [--orientation=LPS]

Reads every label map, reorients it as preprocessing does (default LPS, the library's
default), and, for each pair of foreground labels a < b and each array axis (0 = z, 1 = y,
2 = x), counts the cases where b's centroid lies at a higher index than a's, with the mean
offset in mm. An axis along which (nearly) every case agrees is one the data never shows
mirrored: flip augmentation along it trains on layouts that do not occur, and test-time
mirroring along it averages in predictions for such layouts. Read it before choosing
``--aug_flip_axes`` and ``--mirror_axes`` for a dataset.
"""

from __future__ import annotations

import itertools

import numpy as np
import SimpleITK as sitk
from absl import flags

from vnet_tf.data.cases import find_cases
from vnet_tf.core.io import image_to_array, read_image
from vnet_tf.data.preprocess import PreprocessConfig
from vnet_tf.commands import cli
from vnet_tf.core.errors import UserError

flags.DEFINE_string("orientation", "LPS", "reorient labels to this code first (as preprocessing)")
FLAGS = flags.FLAGS
POSITIONAL = {"DATA_DIR": "a labelled dataset folder"}

AXES = ("z", "y", "x")


def centroids(data_dir: str, orientation: str = "LPS"):
    """``(labels, {case_id: {label: centroid in mm along (z, y, x)}})``; a label absent from
    a case is absent from its dict."""
    PreprocessConfig(orientation=orientation).validate()
    orientation = orientation.upper()
    dataset = find_cases(data_dir)
    found = {}
    for case in dataset.cases:
        if case.label is None or not case.label.exists():
            raise FileNotFoundError(f"case {case.case_id}: label file {case.label} not found")
        image = sitk.DICOMOrient(read_image(case.label), orientation)
        array = image_to_array(image)
        if array.ndim != 3:
            raise ValueError(f"{case.label}: expected a 3D label map, got shape {array.shape}")
        spacing_zyx = np.array(image.GetSpacing()[::-1])
        found[case.case_id] = {int(k): np.argwhere(array == k).mean(0) * spacing_zyx
                               for k in np.unique(array) if k != 0}
    labels = sorted({k for per_case in found.values() for k in per_case})
    return labels, found


def agreement(labels, found):
    """Rows ``(a, b, axis, cases with b beyond a, cases with both, mean offset b - a in mm)``."""
    rows = []
    for a, b in itertools.combinations(labels, 2):
        offsets = np.array([c[b] - c[a] for c in found.values() if a in c and b in c]).reshape(-1, 3)
        for axis in range(3):
            rows.append((a, b, axis, int(np.sum(offsets[:, axis] > 0)), len(offsets),
                         float(offsets[:, axis].mean()) if len(offsets) else float("nan")))
    return rows


def report(rows, consistent: float = 0.95) -> str:
    lines = ["| labels | axis | cases with b beyond a | mean offset b - a (mm) | same side in every case? |",
             "|---|---|---|---|---|"]
    for a, b, axis, beyond, both, offset in rows:
        share = max(beyond, both - beyond) / both if both else float("nan")
        verdict = f"yes ({share:.0%})" if share >= consistent else f"no ({share:.0%})"
        lines.append(f"| {a} → {b} | {axis} ({AXES[axis]}) | {beyond} / {both} | {offset:+.2f} | {verdict} |")
    return "\n".join(lines)


def main(argv) -> int:
    data_dir, = cli.positionals(argv, *POSITIONAL)
    try:
        labels, found = centroids(data_dir, FLAGS.orientation)
    except (FileNotFoundError, ValueError, RuntimeError) as err:
        raise UserError(str(err)) from err
    if len(labels) < 2:
        raise UserError(f"{data_dir}: expected at least two foreground labels to compare, found {labels}")
    print(f"{data_dir}: {len(found)} cases, labels {labels}, reoriented to {FLAGS.orientation}\n")
    print(report(agreement(labels, found)))
    return 0


def run() -> None:
    """The ``vnet-label-orientation`` command."""
    cli.run(main)


if __name__ == "__main__":
    run()
