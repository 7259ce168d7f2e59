"""vnet_tf.commands.label_orientation: per-axis label layout across cases, after reorientation."""

import re

import numpy as np
import pytest

from conftest import run_command
from helpers import write_msd
from vnet_tf.core.io import Geometry

SPACING_XYZ = (1.0, 1.5, 2.0)


def _bench():
    from commands_in_process import flags_of
    with flags_of("label_orientation") as module:  # (its flags defined beside the other commands')
        return module


def _dataset(tmp_path, layouts, flipped_z=()):
    """An MSD folder whose labels are ``layouts[name]`` in LPS array order; cases in
    ``flipped_z`` are stored with their z axis reversed and a direction saying so."""
    cases = {}
    for name, label in layouts.items():
        direction = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)
        if name in flipped_z:
            label, direction = label[::-1], (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, -1.0)
        geometry = Geometry(spacing=SPACING_XYZ, origin=(0.0, 0.0, 0.0), direction=direction)
        cases[name] = (label.astype(np.float32), label, geometry)
    return write_msd(tmp_path, cases, modality=None)


def _random_layout(rng, shape=(8, 10, 12)):
    label = np.zeros(shape, np.uint8)
    label[rng.random(shape) < 0.2] = 1
    label[rng.random(shape) < 0.2] = 2
    label[: shape[0] // 2][label[: shape[0] // 2] == 2] = 0  # label 2 only in the upper half of z
    label[shape[0] // 2:][label[shape[0] // 2:] == 1] = 0
    return label


def test_counts_and_offsets_match_a_brute_force_on_the_reoriented_labels(tmp_path, rng):
    layouts = {f"case_{i}": _random_layout(rng) for i in range(4)}
    layouts["case_4"] = np.where(layouts["case_0"] == 2, 0, layouts["case_0"])  # label 2 missing
    data = _dataset(tmp_path, layouts, flipped_z=("case_1", "case_3"))
    labels, found = _bench().centroids(str(data))
    assert labels == [1, 2] and set(found) == set(layouts) and 2 not in found["case_4"]
    rows = _bench().agreement(labels, found)
    spacing_zyx = np.array(SPACING_XYZ[::-1])
    offsets = np.array([(np.argwhere(lab == 2).mean(0) - np.argwhere(lab == 1).mean(0)) * spacing_zyx
                        for name, lab in layouts.items() if name != "case_4"])
    for (a, b, axis, beyond, both, offset), expected in zip(rows, offsets.T):
        assert (a, b, both) == (1, 2, 4)
        assert beyond == int(np.sum(expected > 0))
        assert offset == pytest.approx(expected.mean())
    # z: every case has label 2 above label 1 once the stored-flipped cases are reoriented;
    # as stored, the two flipped ones point the other way, so skipping the reorientation fails
    stored_z = [(lab[::-1] if name in ("case_1", "case_3") else lab) for name, lab in layouts.items()
                if name != "case_4"]
    assert sum(np.argwhere(s == 2).mean(0)[0] > np.argwhere(s == 1).mean(0)[0] for s in stored_z) == 2
    assert rows[0][3] == 4
    text = _bench().report(rows)
    assert "| 1 → 2 | 0 (z) | 4 / 4 |" in text and "yes (100%)" in text.splitlines()[2]


def test_a_folder_without_a_dataset_is_refused_by_name(tmp_path):
    refused = run_command("label_orientation", tmp_path)
    assert refused.returncode == 2
    assert re.search(f"error: {tmp_path}: cannot tell the dataset layout", refused.stderr)


def test_a_bad_orientation_code_is_refused_by_name(tmp_path, rng):
    data = _dataset(tmp_path, {"case_0": _random_layout(rng)})
    refused = run_command("label_orientation", data, "--orientation=XYZ")
    assert refused.returncode == 2
    assert re.search("error: orientation must be a 3-letter code .* got 'XYZ'", refused.stderr)
