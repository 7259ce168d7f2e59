"""bench/bench_fold.py's command line: which config, workdir and fold a run uses.

The whole recipe takes ~2 hours, so only the planning is tested here; tests/test_recipe.py
runs a short train -> evaluate on real cases.
"""

import pytest

from conftest import load_bench


def _bench():
    return load_bench("bench_fold")


def test_defaults_come_from_the_config():
    config, workdir, fold, extra = _bench().plan(["--steps=10"])
    assert (config, workdir, fold, extra) == ("configs/hippocampus.flags", "runs/hippocampus", "0", ["--steps=10"])
    config, workdir, fold, _ = _bench().plan(["--config=configs/hippocampus_paper.flags"])
    assert (workdir, fold) == ("runs/hippocampus_paper", "0")
    config, workdir, fold, _ = _bench().plan(["--config=configs/hippocampus_ds.flags"])
    assert (workdir, fold) == ("runs/hippocampus_ds", "1")  # the candidate is compared on fold 1


def test_another_fold_gets_its_own_workdir_and_is_evaluated():
    _, workdir, fold, extra = _bench().plan(["--fold=3"])
    assert (workdir, fold, extra) == ("runs/hippocampus_fold3", "3", ["--fold=3"])
    _, workdir, fold, _ = _bench().plan(["--fold=1", "--fold=2", "--workdir=runs/cv2"])
    assert (workdir, fold) == ("runs/cv2", "2")  # the last --fold wins, as in absl


def test_fold_minus_one_is_refused_as_it_leaves_nothing_to_evaluate():
    with pytest.raises(SystemExit, match="--fold: expected a held-out fold.*got -1.*--fold=-1"):
        _bench().plan(["--fold=-1"])


def test_a_missing_config_names_the_argument():
    with pytest.raises(SystemExit, match="--config: expected a flag file.*'configs/nope.flags'"):
        _bench().plan(["--config=configs/nope.flags"])
