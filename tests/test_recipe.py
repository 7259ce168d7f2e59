"""A short version of the hippocampus recipe: train -> evaluate on a handful of real cases
(evaluate.py as the README runs it, in its own process)."""

import json
import math
import os
import subprocess
import sys

from conftest import REPO, run_command, subprocess_env


def test_short_hippocampus_recipe(hippocampus_dir, tmp_path):
    meta = json.loads((hippocampus_dir / "dataset.json").read_text())
    subset = tmp_path / "hippo8"
    for folder in ("imagesTr", "labelsTr"):
        (subset / folder).mkdir(parents=True)
    entries = meta["training"][:8]
    for entry in entries:
        for key in ("image", "label"):
            rel = entry[key].lstrip("./")
            os.symlink(hippocampus_dir / rel, subset / rel)
    (subset / "dataset.json").write_text(json.dumps({**meta, "training": entries, "numTraining": 8}))
    common = [f"--data_dir={subset}", "--num_folds=2", "--fold=0"]
    train = run_command("train", "--flagfile=configs/hippocampus.flags", *common, "--steps=8", "--base_width=4",
                        "--validation_every=8", "--checkpoint_every=4", "--progress=false",
                        f"--workdir={tmp_path / 'run'}", f"--cache_dir={tmp_path / 'cache'}")
    assert train.returncode == 0, train.stderr[-3000:]
    evaluate = subprocess.run(
        [sys.executable, "evaluate.py", f"--model={tmp_path / 'run'}", f"--data_dir={subset}",
         "--num_folds=2", "--fold=0", f"--output_dir={tmp_path / 'eval'}", "--figures=false"],
        cwd=REPO, env=subprocess_env(), capture_output=True, text=True, encoding="utf-8", timeout=900)
    assert evaluate.returncode == 0, evaluate.stderr[-3000:]
    summary = json.loads((tmp_path / "eval" / "summary.json").read_text())
    assert summary["num_cases"] >= 1
    for label in ("1", "2"):
        assert math.isfinite(summary["per_label"][label]["dice"]["mean"])
