"""Paired comparison of two evaluate.py metrics files (vnet_tf.commands.compare_runs)."""

import csv
import math

import numpy as np
import pytest

from conftest import run_command
from vnet_tf.evaluation.comparison import paired_comparison, pooled_summary, read_metric

FIELDS = ["case_id", "label", "dice", "hd95"]


def _write(path, rows):
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=FIELDS)
        writer.writeheader()
        writer.writerows(rows)
    return path


@pytest.fixture
def two_runs(tmp_path, rng):
    base_dice = rng.uniform(0.7, 0.9, size=(12, 2))
    new_dice = base_dice + rng.normal(0.01, 0.01, size=(12, 2))
    hd = rng.uniform(1, 3, size=(12, 2))
    base, new = [], []
    for i in range(12):
        for j, label in enumerate(("1", "2")):
            base.append({"case_id": f"c{i:02d}", "label": label, "dice": base_dice[i, j], "hd95": hd[i, j]})
            new.append({"case_id": f"c{i:02d}", "label": label, "dice": new_dice[i, j],
                        "hd95": "" if (i, j) == (3, 1) else hd[i, j] - 0.5})
    new.reverse()  # pairing is by case and label, not by row order
    return _write(tmp_path / "base.csv", base), _write(tmp_path / "new.csv", new), base_dice, new_dice


def test_paired_differences_match_numpy(two_runs):
    base_csv, new_csv, base_dice, new_dice = two_runs
    result = paired_comparison(read_metric(base_csv, "dice"), read_metric(new_csv, "dice"))
    for j, label in enumerate(("1", "2")):
        r = result[label]
        diff = new_dice[:, j] - base_dice[:, j]
        assert r["n"] == 12 and np.isclose(r["mean_difference"], diff.mean())
        assert np.isclose(r["base_mean"], base_dice[:, j].mean()) and np.isclose(r["new_mean"], new_dice[:, j].mean())
        low, high = r["ci95"]
        assert low < diff.mean() < high and high - low < 4 * diff.std() / math.sqrt(12) * 1.5
        assert (r["better"], r["worse"]) == (int((diff > 0).sum()), int((diff < 0).sum()))


def test_distances_lower_is_better_and_missing_values_are_skipped(two_runs):
    base_csv, new_csv, _, _ = two_runs
    result = paired_comparison(read_metric(base_csv, "hd95"), read_metric(new_csv, "hd95"), higher_is_better=False)
    assert result["1"]["better"] == 12 and np.isclose(result["1"]["mean_difference"], -0.5)
    assert result["2"]["n"] == 11 and result["2"]["skipped"] == 1


def test_different_cases_and_bad_columns_are_refused(two_runs, tmp_path):
    base_csv, _, _, _ = two_runs
    other = _write(tmp_path / "other.csv", [{"case_id": "c00", "label": "1", "dice": 0.5, "hd95": 1}])
    with pytest.raises(ValueError, match=r"23 \(case, label\) pairs only in the base"):
        paired_comparison(read_metric(base_csv, "dice"), read_metric(other, "dice"))
    with pytest.raises(ValueError, match="no column 'assd'"):
        read_metric(base_csv, "assd")
    missing = run_command("compare_runs", base_csv, tmp_path / "missing")
    assert missing.returncode == 2 and "no such metrics file" in missing.stderr


def test_the_command_prints_a_row_per_label(two_runs):
    base_csv, new_csv, _, _ = two_runs
    done = run_command("compare_runs", base_csv, new_csv)
    assert done.returncode == 0, done.stderr
    rows = [line for line in done.stdout.splitlines() if line.startswith("| 1 |") or line.startswith("| 2 |")]
    assert len(rows) == 2 and "| 12 |" in rows[0]


def _fold(path, first, dice, hd95):
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=FIELDS + ["assd"])
        writer.writeheader()
        writer.writerows({"case_id": f"c{first + i:02d}", "label": label, "dice": dice[i, j], "hd95": hd95[i, j],
                          "assd": hd95[i, j] / 3} for i in range(len(dice)) for j, label in enumerate(("1", "2")))
    return path


def test_pooled_folds_match_numpy_and_overlaps_are_refused(tmp_path, rng):
    dice_a, dice_b = rng.uniform(0.7, 0.9, size=(5, 2)), rng.uniform(0.6, 0.9, size=(7, 2))
    hd_a, hd_b = rng.uniform(1, 3, size=(5, 2)), rng.uniform(1, 3, size=(7, 2))
    hd_b[2, 1] = math.nan  # an empty mask: no distance
    a = _fold(tmp_path / "a.csv", 0, dice_a, hd_a)
    b = _fold(tmp_path / "b.csv", 5, dice_b, hd_b)
    out = pooled_summary([a, b], metrics=("dice", "hd95"))
    for j, label in enumerate(("1", "2")):
        dice = np.concatenate([dice_a[:, j], dice_b[:, j]])
        hd = np.concatenate([hd_a[:, j], hd_b[:, j]])
        assert out[label]["dice"]["n"] == 12
        assert out[label]["dice"]["mean"] == pytest.approx(dice.mean())
        assert out[label]["dice"]["std"] == pytest.approx(dice.std())
        assert out[label]["hd95"]["mean"] == pytest.approx(np.nanmean(hd))
        assert out[label]["hd95"]["missing"] == int(np.isnan(hd).sum())
    overlapping = _fold(tmp_path / "c.csv", 4, dice_a, hd_a)  # c04 is also in a.csv
    with pytest.raises(ValueError, match=r"c\.csv: 2 \(case, label\) pairs are already in an earlier file"):
        pooled_summary([a, overlapping], metrics=("dice", "hd95"))
    printed = run_command("pool_folds", a, b)
    assert printed.returncode == 0, printed.stderr
    dice, hd = np.concatenate([dice_a[:, 1], dice_b[:, 1]]), np.concatenate([hd_a[:, 1], hd_b[:, 1]])
    low, high = out["2"]["dice"]["ci95"]
    assert (f"| 2 | 12 | {dice.mean():.3f} ± {dice.std():.3f} | {low:.3f} to {high:.3f} | "
            f"{np.nanmean(hd):.3f} ± {np.nanstd(hd):.3f} | "
            f"{np.nanmean(hd) / 3:.3f} ± {np.nanstd(hd) / 3:.3f} | 1 |") in printed.stdout
    missing = run_command("pool_folds", a, tmp_path / "missing")
    assert missing.returncode == 2 and "no such metrics file" in missing.stderr


def test_pooled_folds_give_the_left_atrium_literatures_metrics_in_voxels(tmp_path, rng):
    """Jaccard, medpy's 95HD and ASD pooled over two folds, in mm and in voxels, against numpy;
    the files without those columns (the first table only) give no second table."""
    columns = ("iou", "hd95_pooled", "asd")
    values = {m: (rng.uniform(0.7, 0.9, size=6), rng.uniform(1, 5, size=4)) for m in columns}
    paths = []
    for k, first in enumerate((0, 6)):
        n = len(values["iou"][k])
        path = tmp_path / f"fold{k}.csv"
        with path.open("w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=FIELDS + ["assd", *columns])
            writer.writeheader()
            writer.writerows({"case_id": f"c{first + i:02d}", "label": "1", "dice": 0.9, "hd95": 2, "assd": 1,
                              **{m: values[m][k][i] for m in columns}} for i in range(n))
        paths.append(path)
    printed = run_command("pool_folds", *paths, "--voxel_mm=0.625")
    assert printed.returncode == 0, printed.stderr
    cells = []
    for m in columns:
        pooled = np.concatenate(values[m])
        cell = f"{pooled.mean():.3f} ± {pooled.std():.3f}"
        cells.append(cell + (f" ({pooled.mean() / 0.625:.2f} vox)" if m != "iou" else ""))
    assert "| label | Jaccard | 95HD (medpy) (mm; voxels of 0.625 mm) | ASD (medpy) (mm; voxels of 0.625 mm) |" \
        in printed.stdout, printed.stdout
    assert f"| 1 | {' | '.join(cells)} |" in printed.stdout, printed.stdout
    plain = run_command("pool_folds", _fold(tmp_path / "a.csv", 0, np.full((3, 2), 0.8), np.ones((3, 2))))
    assert plain.returncode == 0 and "Jaccard" not in plain.stdout, plain.stdout + plain.stderr


def test_pooled_interval_of_the_mean_matches_the_normal_approximation(tmp_path, rng):
    # Independent reference: for many cases the bootstrap interval of a mean approaches
    # mean ± 1.96 std / sqrt(n) (central limit theorem).
    dice = rng.normal(0.88, 0.035, size=(400, 2))
    hd = rng.uniform(1, 3, size=(400, 2))
    hd[:7, 0] = math.nan  # distances of empty masks are left out of the interval
    out = pooled_summary([_fold(tmp_path / "a.csv", 0, dice, hd)], metrics=("dice", "hd95"))
    for j, label in enumerate(("1", "2")):
        low, high = out[label]["dice"]["ci95"]
        half = 1.96 * dice[:, j].std() / np.sqrt(len(dice))
        assert low < dice[:, j].mean() < high
        assert (high - low) / 2 == pytest.approx(half, rel=0.1)
        assert (low + high) / 2 == pytest.approx(dice[:, j].mean(), abs=0.2 * half)
    finite = hd[7:, 0]
    low, high = out["1"]["hd95"]["ci95"]
    assert math.isfinite(low) and (high - low) / 2 == pytest.approx(1.96 * finite.std() / np.sqrt(len(finite)), rel=0.1)
