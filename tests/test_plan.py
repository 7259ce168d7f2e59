"""vnet-plan: the fingerprint of a dataset and the rules that turn it into a flagfile, each
checked against the rule it implements on synthetic datasets (isotropic MRI-like,
anisotropic CT-like in Hounsfield units, two-channel), and the hippocampus plan against the
recipe."""

import json
import math

import numpy as np
import pytest
import SimpleITK as sitk

from conftest import REPO, run_command, train_config
from helpers import spacing_geometry, write_msd
from vnet_tf.data.cases import find_cases
from vnet_tf.data.fingerprint import fingerprint_dataset
from vnet_tf.training import plan


def _write(path, array, spacing_zyx):
    image = sitk.GetImageFromArray(array)
    image.SetSpacing([float(s) for s in spacing_zyx[::-1]])
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(image, str(path))


def _blob_case(rng, size, background, foreground, blobs=1):
    """An image of ``background`` noise with ``blobs`` boxes of ``foreground`` intensities (class 1)."""
    image = rng.normal(*background, size=size).astype(np.float32)
    label = np.zeros(size, np.uint8)
    for b in range(blobs):
        z0 = 2 + b * (size[0] // 2)
        box = (slice(z0, z0 + 3), slice(4, 10), slice(4, 10))
        label[box] = 1
        image[box] = rng.normal(*foreground, size=label[box].shape)
    return image, label


def _msd(root, cases, modality):
    """An MSD-layout dataset of ``cases`` = [(image, label, spacing_zyx)]; the images kept."""
    return write_msd(root, {f"case_{i:03d}": (image, label, spacing_geometry(spacing))
                            for i, (image, label, spacing) in enumerate(cases)},
                     {"0": "background", "1": "target"}, modality)


def _plan(root, memory_gb=8.0):
    fp = fingerprint_dataset(find_cases(root))
    return fp, plan.plan_run(fp, str(root), "msd", memory_gb)


def _rounded_patch(median_shape):
    """The patch rule with room in the budget: depth from the shortest axis, axes rounded up."""
    depth = min(plan.MAX_DEPTH, max(2, 1 + int(math.floor(math.log2(min(median_shape) / plan.MIN_BOTTOM)))))
    step = 2 ** (depth - 1)
    return [int(math.ceil(s / step) * step) for s in median_shape], depth


def test_isotropic_mri_like(tmp_path, rng):
    sizes = [(30, 44, 38), (34, 48, 36), (28, 40, 40), (32, 46, 37), (36, 50, 35)]
    spacings = [tuple(rng.uniform(0.9, 1.1, 3)) for _ in sizes]
    cases = [(*_blob_case(rng, s, (100, 20), (300, 30)), sp) for s, sp in zip(sizes, spacings)]
    fp, planned = _plan(_msd(tmp_path / "mri", cases, "MRI"), memory_gb=8)
    np.testing.assert_allclose(fp.spacings, np.array(spacings), rtol=1e-5)
    got = planned.flags
    target = np.median(np.array(spacings), axis=0)  # not anisotropic, not all equal: the median
    np.testing.assert_allclose([float(v) for v in got["target_spacing"].split(",")], target, rtol=1e-3)
    resampled = np.median(np.maximum(np.round(np.array(sizes) * np.array(spacings) / target), 1), axis=0)
    patch, depth = _rounded_patch(resampled)
    assert got["patch_size"] == ",".join(map(str, patch)) and got["depth"] == str(depth)
    assert got["convs_right"] == ",".join(["1"] * (depth - 1))
    assert got["intensity_normalization"] == "zscore" and "ct_statistics" not in got
    assert got["aug_rotation"] == "15,15,15" and got["aug_elastic_axes"] == "1,1,1"
    assert got["postprocess"] == "largest" and got["batch_size"] == "2"


def test_anisotropic_ct_like_in_hounsfield_units(tmp_path, rng):
    z_spacings = [2.5, 3.0, 4.0, 5.0, 5.0, 5.0]
    cases = []
    for i, dz in enumerate(z_spacings):
        image, label = _blob_case(rng, (16 + i, 40, 40), (-800, 100), (60, 15), blobs=2 if i == 0 else 1)
        cases.append((image, label, (dz, 0.8, 0.8)))
    fp, planned = _plan(_msd(tmp_path / "ct", cases, "CT"), memory_gb=8)
    got = planned.flags
    # z is 5/0.8 = 6x the finest axis: its target is the 10th percentile of its spacings.
    expected_z = np.percentile(z_spacings, 10)
    np.testing.assert_allclose([float(v) for v in got["target_spacing"].split(",")], [expected_z, 0.8, 0.8], rtol=1e-3)
    assert got["aug_rotation"] == "15,0,0" and got["aug_elastic_axes"] == "0,1,1"
    # CT: the dataset's foreground (every voxel: fewer than FOREGROUND_SAMPLES a case), clipped, its mean and std.
    values = np.concatenate([image[label > 0] for image, label, _ in cases]).astype(np.float64)
    low, high = np.percentile(values, [0.5, 99.5])
    clipped = np.clip(values, low, high)
    assert got["intensity_normalization"] == "ct"
    np.testing.assert_allclose([float(v) for v in got["ct_statistics"].split(",")],
                               [low, high, clipped.mean(), clipped.std()], rtol=1e-5)
    assert got["postprocess"] == "none"  # case 0 has two components of class 1


def test_two_channel_nnunet_layout(tmp_path, rng):
    root = tmp_path / "mm"
    for i in range(3):
        t2, label = _blob_case(rng, (24, 32, 32), (100, 20), (300, 30))
        _write(root / "imagesTr" / f"c{i}_0000.nii.gz", t2, (1, 1, 1))
        _write(root / "imagesTr" / f"c{i}_0001.nii.gz", t2 * 0.5 + 7, (1, 1, 1))
        _write(root / "labelsTr" / f"c{i}.nii.gz", label, (1, 1, 1))
    (root / "dataset.json").write_text(json.dumps({"channel_names": {"0": "T2", "1": "ADC"}}))
    fp = fingerprint_dataset(find_cases(root))
    assert fp.modalities == ("T2", "ADC") and fp.channels == 2
    np.testing.assert_allclose(fp.foreground(1), fp.foreground(0) * 0.5 + 7, rtol=1e-5)
    got = plan.plan_run(fp, str(root), "nnunet").flags
    assert "target_spacing" not in got and got["intensity_normalization"] == "zscore"
    assert got["patch_size"] == "24,32,32" and got["depth"] == "3"


@pytest.mark.parametrize("budget", [1.0, 4.0])
def test_the_patch_shrinks_along_the_longest_axis_in_mm_to_fit_the_budget(budget):
    spacing, median = np.array([2.5, 0.8, 0.8]), (64, 256, 256)
    assert plan.training_memory_gb(median, 5, 1, 3) > budget
    patch, depth, memory, reason = plan.patch_and_depth(median, spacing, 1, 3, memory_gb=budget)
    step = 2 ** (depth - 1)
    assert memory <= budget and all(p % step == 0 for p in patch) and "shortened along" in reason
    assert depth == plan.depth_for(min(patch))
    # Shortened longest-in-mm first: the shortened axes end within one step (in mm) of each other.
    extent = np.array(patch) * spacing
    shortened = [a for a in range(3) if patch[a] < median[a]]
    assert shortened and np.ptp(extent[shortened]) <= step * spacing.max()
    # As large as the budget allows: one step more along every shortened axis does not fit.
    larger = [p + step if a in shortened else p for a, p in enumerate(patch)]
    assert plan.training_memory_gb(larger, depth, 1, 3) > budget


def test_memory_estimate_grows_with_the_patch_batch_and_channels():
    small = plan.training_memory_gb((16, 16, 16), 3, 1, 2)
    assert plan.training_memory_gb((32, 16, 16), 3, 1, 2) == pytest.approx(2 * small, rel=0.01)
    assert plan.training_memory_gb((16, 16, 16), 3, 1, 2, batch=4) == pytest.approx(2 * small, rel=1e-6)
    assert plan.training_memory_gb((16, 16, 16), 3, 4, 2) > small


def test_recipe_settings_are_the_hippocampus_flagfile_s():
    recipe = _flagfile(REPO / "configs" / "hippocampus.flags")
    expected = plan.flag_texts(plan.RECIPE)
    assert {k: recipe[k] for k in expected} == expected


def _flagfile(path):
    lines = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
    return dict(line[2:].split("=", 1) for line in lines if line.startswith("--"))


def test_the_hippocampus_plan_is_the_recipe(hippocampus_dir, tmp_path):
    out = tmp_path / "plans" / "h.flags"
    done = run_command("plan", hippocampus_dir, f"--output={out}")
    assert done.returncode == 0, done.stderr[-3000:]
    planned, recipe = _flagfile(out), _flagfile(REPO / "configs" / "hippocampus.flags")
    defaults = {"aug_elastic_axes": "1,1,1"}  # planned, and train.py's default
    assert {k: v for k, v in planned.items() if k not in ("workdir", "data_dir")} == \
        {**{k: v for k, v in recipe.items() if k not in ("workdir", "data_dir")}, **defaults}
    assert "next: python train.py --flagfile=" in done.stdout


def test_the_command_writes_a_flagfile_train_accepts_and_keeps_an_existing_one(tmp_path, rng):
    cases = [(*_blob_case(rng, (16, 24, 24), (-800, 100), (60, 15)), (3.0, 0.7, 0.7)) for _ in range(3)]
    root = _msd(tmp_path / "ct", cases, "CT")
    out = tmp_path / "ct.flags"
    done = run_command("plan", root, f"--output={out}", "--memory_gb=2")
    assert done.returncode == 0, done.stderr[-3000:]
    assert "dataset ct: 3 labelled cases" in done.stdout and "--intensity_normalization=ct" in done.stdout
    config = train_config(f"--flagfile={out}")
    assert config.preprocess.normalization == "ct" and len(config.preprocess.ct_statistics) == 4
    assert config.patch_size_zyx == tuple(int(v) for v in _flagfile(out)["patch_size"].split(","))
    before = out.read_text(encoding="utf-8")
    kept = run_command("plan", root, f"--output={out}")
    assert kept.returncode == 2 and "pass --overwrite" in kept.stderr
    assert out.read_text(encoding="utf-8") == before


def test_an_unlabelled_or_unreadable_case_is_named(tmp_path, rng):
    cases = [(*_blob_case(rng, (16, 24, 24), (100, 20), (300, 30)), (1, 1, 1)) for _ in range(2)]
    root = _msd(tmp_path / "d", cases, "MRI")
    (root / "labelsTr" / "case_001.nii.gz").unlink()
    missing = run_command("plan", root, f"--output={tmp_path / 'x.flags'}")
    assert missing.returncode == 2 and "case_001.nii.gz" in missing.stderr and "no label" in missing.stderr
    (root / "labelsTr" / "case_001.nii.gz").write_bytes(b"not a volume")
    unreadable = run_command("plan", root, f"--output={tmp_path / 'x.flags'}")
    assert unreadable.returncode == 2 and "case_001.nii.gz" in unreadable.stderr
    assert "Traceback" not in unreadable.stderr and not (tmp_path / "x.flags").exists()
