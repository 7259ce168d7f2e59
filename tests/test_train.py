"""train.py on the embedded demo dataset, its flag checks, and patch sampling."""

import json
import subprocess
import sys

import numpy as np

from conftest import REPO, subprocess_env
from vnet_tf.training import sample_patch

TINY = ["--demo_cases=3", "--patch_size=16,16,16", "--depth=3", "--base_width=4", "--batch_size=1"]


def _run(tmp_path, *args):
    cmd = [sys.executable, "train.py", *args, f"--workdir={tmp_path / 'run'}", f"--cache_dir={tmp_path / 'cache'}"]
    env = subprocess_env()
    env.pop("TF_ENABLE_ONEDNN_OPTS", None)
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)


def test_demo_run_writes_its_outputs_with_onednn_on(tmp_path):
    out = _run(tmp_path, "--flagfile=configs/demo.flags", *TINY, "--steps=4")
    assert out.returncode == 0, out.stderr[-3000:]
    assert "oneDNN CPU kernels: on" in out.stdout
    run = tmp_path / "run"
    flags_text = (run / "flags.txt").read_text()
    assert "--steps=4" in flags_text and "--patch_size=16,16,16" in flags_text  # later flags win
    assert (run / "model.keras").is_file()
    summary = json.loads((run / "summary.json").read_text())
    assert summary["steps"] == 4 and len(summary["validation_dice_per_class"]) == 3
    config = json.loads((run / "config.json").read_text())
    assert config["num_classes"] == 3 and len(config["validation_cases"]) == 1
    assert (tmp_path / "cache" / "demo_data_3" / "dataset.json").is_file()
    assert "outputs in" in out.stdout


def test_bad_flags_fail_before_any_work(tmp_path):
    out = _run(tmp_path, *TINY, "--patch_size=30,32,32")
    assert out.returncode != 0 and "--patch_size (30, 32, 32) must be multiples of 4" in out.stderr
    out = _run(tmp_path, "--batch_size=0")
    assert out.returncode != 0 and "batch_size" in out.stderr
    assert not (tmp_path / "cache").exists()


def test_sample_patch_pads_and_centres_on_foreground(rng):
    image = rng.normal(size=(6, 40, 40, 1)).astype(np.float32)
    label = np.zeros((6, 40, 40), np.uint8)
    label[3, 35, 35] = 2
    img, lab = sample_patch(image, label, (16, 16, 16), rng, foreground=True)
    assert img.shape == (16, 16, 16, 1) and lab.shape == (16, 16, 16)
    assert lab.sum() == 2  # the only foreground voxel is inside the patch
    empty_slices = np.all(img == 0, axis=(1, 2, 3))
    assert empty_slices.sum() == 10  # depth 6 < 16: 10 zero-padded slices
    img, lab = sample_patch(image, label, (4, 8, 8), rng, foreground=False)
    assert img.shape == (4, 8, 8, 1)
