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
from vnet_tf.training import plan, time_plan


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


# The time plan: its rule on synthetic data, with step times that follow the multiply-adds
# (time_plan's own prediction) or not, and the labels' grid cost given.

def _time_plan(root, minutes, seconds_of, grid_dice, memory_gb=8.0):
    fp = fingerprint_dataset(find_cases(root))
    measured = []

    def seconds(values):
        measured.append(values)
        return seconds_of(values)
    timing = plan.Timing(minutes, seconds, grid_dice)
    return fp, plan.plan_run(fp, str(root), "msd", memory_gb, timing=timing), measured


def _work(values):
    """Seconds a step in proportion to the network's multiply-adds (1e-9 s each)."""
    patch, depth, width = values["patch_size_zyx"], values["model.depth"], values["model.base_width"]
    return 1e-9 * plan.multiply_adds(patch, depth, 1, 2, base_width=width)


def _candidates_by_hand(fp, grid_costs):
    """Every (grid, width) in the rule's order of preference, with its patch, depth and steps a minute."""
    base = np.median(fp.spacings, axis=0)
    out = []
    for factor, dice in grid_costs:
        if factor > 1 and dice < 1 - time_plan.GRID_COST:
            break
        spacing = base * factor
        shape = np.median(np.maximum(np.round(fp.sizes * fp.spacings / spacing), 1), axis=0)
        for width in time_plan.WIDTHS:
            patch, depth, _, _ = plan.patch_and_depth(shape, spacing, 1, 2, 8.0, width)
            seconds = _work({"patch_size_zyx": patch, "model.depth": depth, "model.base_width": width})
            out.append((factor, width, patch, depth, 60 * (1 - time_plan.VALIDATION_SHARE) / seconds))
    return out


# Steps a minute of each candidate under _work, in the rule's order (_candidates_by_hand):
# grid 1: 3, 6, 13; 1.25: 7, 12, 27; 1.5: 16, 28, 62; 2: 31, 56, 125 (widths 16, 12, 8).
@pytest.mark.parametrize("minutes", [30, 60, 150, 300, 600, 3000])
def test_the_time_plan_takes_the_finest_grid_and_widest_network_that_get_the_steps(tmp_path, rng, minutes):
    root = _msd(tmp_path / "mri", [(*_blob_case(rng, s, (100, 20), (300, 30)), (1.0, 1.0, 1.0))
                                   for s in _SIZES], "MRI")
    fp, planned, measured = _time_plan(root, minutes, _work, _grid_dice)
    by_hand = _candidates_by_hand(fp, sorted(_COSTS.items()))
    assert {c[0] for c in by_hand} == {1.0, 1.25, 1.5, 2.0}  # 2.5 mm keeps less than 0.99
    reaching = [c for c in by_hand if int(c[4] * minutes) >= time_plan.STEPS_NEEDED]
    factor, width, patch, depth, per_minute = reaching[0] if reaching else max(by_hand, key=lambda c: c[4])
    got = planned.flags
    assert got["patch_size"] == ",".join(map(str, patch)) and got["depth"] == str(depth)
    assert got["base_width"] == str(width)
    assert got.get("target_spacing") == (None if factor == 1.0 else ",".join(format(factor, "g") for _ in range(3)))
    steps = int(per_minute * minutes)
    assert got["time_budget_minutes"] == format(minutes, "g") and int(got["steps"]) >= time_plan.STEP_CAP * steps
    assert int(got["validation_every"]) <= steps // time_plan.VALIDATIONS
    # Measured: the cheapest of each width, then (the prediction being exact here) the chosen one alone.
    assert len(measured) <= len(time_plan.WIDTHS) + 1
    assert ("no candidate reaches" in _reason(planned)) == (not reaching)


_SIZES = [(40, 48, 44), (44, 52, 40), (42, 50, 46)]
_COSTS = {1.0: 1.0, 1.25: 0.998, 1.5: 0.995, 2.0: 0.991, 2.5: 0.985}


def _grid_dice(spacing):
    return _COSTS.get(round(spacing[0], 4), 0.5)


def _reason(planned):
    return next(reason for reason, values in planned.groups if "model.base_width" in values)


def test_the_time_plan_measures_rather_than_trusts_its_prediction(tmp_path, rng):
    """Steps on the scans' grid twice as slow as the multiply-adds predict: its width-8 candidate,
    predicted to reach the steps, is measured short and passed over for the next grid's."""
    root = _msd(tmp_path / "mri", [(*_blob_case(rng, s, (100, 20), (300, 30)), (1.0, 1.0, 1.0))
                                   for s in _SIZES], "MRI")

    def seconds(values):
        return _work(values) * (2.0 if values["preprocess.target_spacing_zyx"][0] == 1.0 else 1.0)
    _, planned, measured = _time_plan(root, 600, seconds, _grid_dice)
    timed = [(values["preprocess.target_spacing_zyx"][0], values["model.base_width"]) for values in measured]
    assert (1.0, 8) in timed  # predicted 13 x 600 = 7800 steps; measured 3900
    assert planned.flags["target_spacing"] == "1.25,1.25,1.25" and planned.flags["base_width"] == "12"
    assert "the first candidate" in _reason(planned)


def test_grid_dice_is_one_on_the_scan_grid_and_falls_as_the_grid_coarsens():
    from vnet_tf.data.grid_cost import grid_dice
    z, y, x = np.meshgrid(*[np.arange(n) for n in (40, 48, 44)], indexing="ij")
    array = ((z - 20) ** 2 / 12 ** 2 + (y - 24) ** 2 / 15 ** 2 + (x - 22) ** 2 / 10 ** 2 <= 1).astype(np.uint8)
    array[2:6, 2:6, 2:6] = 2  # a small second class: coarse grids lose it first
    label = sitk.GetImageFromArray(array)
    label.SetSpacing((0.8, 0.8, 0.8))
    same = grid_dice(label, (0.8, 0.8, 0.8), 3)
    scores = [grid_dice(label, (0.8 * f,) * 3, 3) for f in (1.5, 2.5, 4.0)]
    assert same > 0.99 and same >= scores[0] > scores[1] > scores[2]
    only_large = grid_dice(sitk.GetImageFromArray((array == 1).astype(np.uint8)), (2.0, 2.0, 2.0), 2)
    assert grid_dice(sitk.GetImageFromArray(array), (2.0, 2.0, 2.0), 3) < only_large  # the mean over classes


def test_the_command_measures_steps_and_writes_the_time_plan(tmp_path, rng, monkeypatch):
    """vnet-plan --time_budget_minutes on a tiny dataset: real step timings on this machine,
    printed and written into the flagfile, which train.py accepts. One width is timed (a
    compiled step each); the choice among widths is the synthetic tests' above."""
    monkeypatch.setattr(time_plan, "WIDTHS", (4,))
    cases = [(*_blob_case(rng, (16, 24, 24), (100, 20), (300, 30)), (1.0, 1.0, 1.0)) for _ in range(3)]
    root = _msd(tmp_path / "mri", cases, "MRI")
    out = tmp_path / "t.flags"
    done = run_command("plan", root, f"--output={out}", "--time_budget_minutes=0.5")
    assert done.returncode == 0, done.stderr[-3000:]
    timed = [line for line in done.stdout.splitlines() if line.startswith("timing a training step")]
    assert timed and all(line.endswith(" s") and "width 4 " in line for line in timed), timed
    written = out.read_text(encoding="utf-8")
    assert "s a step" in written and "--time_budget_minutes=0.5" in written
    assert "# step times measured on " in written and " cores, with" in written
    config = train_config(f"--flagfile={out}")
    assert config.time_budget_minutes == 0.5 and config.model.base_width == 4
    assert config.steps >= time_plan.STEP_CAP and config.validation_every >= 1
    bad = run_command("plan", root, f"--output={tmp_path / 'x.flags'}", "--time_budget_minutes=-1")
    assert bad.returncode == 2 and "--time_budget_minutes" in bad.stderr and not (tmp_path / "x.flags").exists()


def test_step_timing_runs_the_run_s_own_step(tmp_path):
    """No data read (the dataset folder is never written); the run's step, deep supervision included."""
    from vnet_tf.model.config import VNetConfig
    from vnet_tf.training.config import TrainConfig
    from vnet_tf.training.step_timing import seconds_per_step
    config = TrainConfig(data_dir=str(tmp_path / "absent"), workdir=str(tmp_path / "run"), patch_size_zyx=(16, 16, 16),
                         model=VNetConfig(base_width=4, depth=3, kernel_size=3, normalization="instance"),
                         deep_supervision=1)
    assert np.isfinite(seconds_per_step(config, channels=2, num_classes=3, steps=2))
    assert not (tmp_path / "absent").exists() and not (tmp_path / "run").exists()


def test_the_left_atrium_recipe_is_the_time_plan_it_records(left_atrium_dir):
    """configs/la2018.flags is vnet-plan's 120-minute plan on the reference machine: the rule,
    replayed on the data's fingerprint with the grid costs and step times the flagfile records,
    gives its settings back (the recipe's own choices over the plan are listed in it)."""
    import re
    text = (REPO / "configs" / "la2018.flags").read_text(encoding="utf-8")
    grid_dice = {tuple(float(v) for v in g.split(",")): float(d)
                 for g, d in re.findall(r"([\d.]+,[\d.]+,[\d.]+) mm keeps ([\d.]+)", text)}
    measured = dict(re.findall(r"(\S+ mm, patch \S+, depth \d, width \d+): ([\d.e-]+) s", text))

    def seconds(values):
        spacing = ",".join(format(s, ".4g") for s in values["preprocess.target_spacing_zyx"])
        key = (f"{spacing} mm, patch {'x'.join(map(str, values['patch_size_zyx']))}, depth {values['model.depth']}, "
               f"width {values['model.base_width']}")
        assert key in measured, f"the plan times {key}, which the flagfile does not record"
        return float(measured[key])

    minutes = float(_flagfile(REPO / "configs" / "la2018.flags")["time_budget_minutes"])
    fp = fingerprint_dataset(find_cases(left_atrium_dir))
    planned = plan.plan_run(fp, "../shared/data/LA2018", "msd", timing=plan.Timing(minutes, seconds, grid_dice.__getitem__))
    recipe = _flagfile(REPO / "configs" / "la2018.flags")
    overridden = set(re.findall(r"^# over the plan: --(\w+)", text, flags=re.M))
    assert {k: v for k, v in planned.flags.items() if k not in overridden | {"workdir"}} == \
        {k: v for k, v in recipe.items() if k in planned.flags and k not in overridden | {"workdir"}}
    assert set(recipe) - set(planned.flags) <= overridden
