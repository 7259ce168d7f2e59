"""train.py / vnet_tf.training.loop: workdir outputs, exact resume after SIGKILL, strategies,
flag checks, mixed precision."""

import dataclasses
import json
import shutil
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

from helpers import tiny_train_config
from conftest import REPO, run_command, run_train, subprocess_env
from vnet_tf.model.checkpoint import read_meta


def test_run_writes_every_workdir_item(tiny_run):
    run, out = tiny_run
    assert "oneDNN CPU kernels: on" in out.stdout and "outputs in" in out.stdout
    for name in ("flags.txt", "config.json", "checkpoint.npz", "best.npz", "summary.json"):
        assert (run / name).is_file(), name
    assert not list(run.glob("*.keras"))  # the weights in one format
    flags_text = (run / "flags.txt").read_text()
    assert "--steps=40" in flags_text and "--patch_size=16,16,16" in flags_text  # later flags win
    config = json.loads((run / "config.json").read_text())
    assert config["train"]["model"]["num_classes"] == 3 and config["validation_cases"] and config["train_cases"]
    # Each setting once: no resolved model beside the settings, one patch size.
    assert "model" not in config and "patch_size_zyx" not in config["train"]["inference"]
    assert not set(config["validation_cases"]) & set(config["train_cases"])
    summary = json.loads((run / "summary.json").read_text())
    assert summary["steps"] == 40 and len(summary["validation_dice_per_class"]) == 3
    losses = summary["loss_history"]
    assert np.mean(losses[-10:]) < np.mean(losses[:10]), losses
    assert read_meta(run / "checkpoint.npz")["step"] == 40
    events = list((run / "tensorboard").glob("events.out.tfevents.*"))
    assert events
    import tensorflow as tf
    tags = set()
    for event in tf.compat.v1.train.summary_iterator(str(events[0])):
        tags.update(v.tag for v in event.summary.value)
    for tag in ("train/loss", "train/learning_rate", "train/steps_per_second", "validation/dice_class_1",
                "validation/mid_slice_image_reference_prediction"):
        assert tag in tags, (tag, tags)


def _weights(path):
    with np.load(path) as data:
        return {k: data[k] for k in data.files if k != "__meta__"}


def test_kill_and_resume_gives_identical_weights(tmp_path):
    """With every part of the state a checkpoint carries: the optimiser, the random augmentation
    and dropout, the weight average and the deep-supervision heads."""
    args = ["--steps=16", "--checkpoint_every=4", "--validation_every=100", "--deterministic",
            "--aug_elastic_p=0.5", "--aug_elastic_sigma=2", "--aug_noise_p=0.5", "--aug_flip_axes=0,1,2",
            "--aug_lowres_p=0.5", "--aug_gamma_inverted_p=0.5", "--aug_gamma_retain_stats",
            "--dropout=0.1", "--weight_average=0.9", "--deep_supervision=1"]
    cache = tmp_path / "cache"
    whole = run_train(tmp_path / "whole", cache, *args)
    assert whole.returncode == 0, whole.stderr[-3000:]

    cmd = [sys.executable, "train.py", "--flagfile=configs/demo.flags", "--demo_cases=6", "--patch_size=16,16,16",
           "--depth=3", "--base_width=4", "--batch_size=2", "--num_folds=3", "--progress=false", *args,
           f"--workdir={tmp_path / 'killed'}", f"--cache_dir={cache}"]
    proc = subprocess.Popen(cmd, cwd=REPO, env=subprocess_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    lock, checkpoint = tmp_path / "killed" / ".lock", tmp_path / "killed" / "checkpoint.npz"
    deadline = time.time() + 300
    while not (lock.is_file() and f'"pid": {proc.pid}' in lock.read_text()) and proc.poll() is None \
            and time.time() < deadline:
        time.sleep(0.05)
    # A second train.py on the workdir while the first holds it: refused, naming the holder.
    second = run_train(tmp_path / "killed", cache, *args)
    assert second.returncode == 2 and f"in use by another process: pid {proc.pid} on host" in second.stderr, \
        second.stderr[-3000:]
    while not checkpoint.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)  # its lock goes with it: the resume below takes the workdir over
    proc.wait()
    killed_at = read_meta(checkpoint)["step"]
    assert killed_at < 16, "the run finished before it could be killed"
    resumed = run_train(tmp_path / "killed", cache, *args)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resumed from" in resumed.stdout and f"at step {killed_at}" in resumed.stdout
    a, b = _weights(tmp_path / "whole" / "checkpoint.npz"), _weights(checkpoint)
    assert a.keys() == b.keys()
    groups = {key.split("/")[0] for key in a}
    assert {"model", "optimizer", "augmentation", "weight_average", "weight_average_updates",
            "deep_supervision"} <= groups, groups
    for key in a:
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)
    assert read_meta(checkpoint)["step"] == 16


def test_run_written_before_a_setting_existed_resumes_with_its_default(tiny_run, tmp_path):
    """A copy of the shared 40-step run whose config.json is in the earlier layout and lacks
    settings added later resumes with their defaults and is read for evaluation; a setting given
    now that differs from the run's is refused."""
    run, done = tiny_run
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    config_file = copy / "config.json"
    written = json.loads(config_file.read_text())
    for key in ("dice_squared", "batch_dice", "deep_supervision"):  # added in a later version
        del written["train"][key]
    # The earlier layout: the resolved model beside the settings, placeholders in them, and a
    # stale copy of the patch size in the inference settings.
    model = written["train"]["model"]
    written.update(model=dict(model), num_classes=model["num_classes"], input_channels=model["input_channels"])
    written["train"]["model"] = {**model, "num_classes": 2, "architecture": None}
    del written["train"]["model"]["architecture"], written["model"]["architecture"]  # added later, nested
    written["train"]["inference"]["patch_size_zyx"] = [32, 32, 32]
    config_file.write_text(json.dumps(written))
    from vnet_tf.inference.run_folder import read_run, run_model_config
    assert run_model_config(read_run(copy)) == run_model_config(read_run(run))  # what evaluate.py builds
    argv = [a for a in done.args[1:] if not a.startswith(("--workdir=", "--steps="))] + [f"--workdir={copy}"]
    resumed = run_command("train", *argv, "--steps=41")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    summary = json.loads((copy / "summary.json").read_text())
    assert summary["resumed_from_step"] == 40 and summary["steps"] == 41
    refused = run_command("train", *argv, "--steps=42", "--batch_dice")
    assert refused.returncode == 2 and "batch_dice differ" in refused.stderr, refused.stderr[-3000:]


@pytest.mark.parametrize("args, message", [
    (["--patch_size=30,32,32"], "--patch_size (30, 32, 32) must be multiples of 4"),
    (["--batch_size=0"], "batch_size"),
    (["--aug_elastic_p=1.5"], "aug_elastic_p"),
    (["--loss=focal"], "loss"),
    (["--aug_scale=1.2"], "--aug_scale: expected 2 values"),
    (["--aug_lowres_zoom=0.5,2"], "--aug_lowres_zoom must lie in (0, 1]"),
    (["--fold=7"], "fold"),
    (["--fold=-2"], "--fold"),
    (["--deep_supervision=2"], "deep_supervision must be in [0, 1]"),
    (["--time_budget_minutes=-1"], "time_budget_minutes"),
    (["--weight_average=1"], "weight_average must be in [0, 1)"),
])
def test_bad_flags_are_refused_naming_the_flag(monkeypatch, args, message):
    """In process: the flags parsed and checked as train.py's main does before any work."""
    from absl import app, flags
    from conftest import TINY_TRAIN, flagfile_config
    with pytest.raises((flags.Error, app.UsageError)) as err:
        flagfile_config("demo.flags", monkeypatch, *TINY_TRAIN, *args)
    assert message in str(err.value)


def test_fold_minus_one_trains_on_every_case_without_validation(tmp_path):
    from vnet_tf.training.loop import train
    summary = train(tiny_train_config(tmp_path, fold=-1, steps=2), log=lambda s: None, progress=False)
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["validation_cases"] == [] and len(config["train_cases"]) == 6
    assert summary["steps"] == 2 and summary["validation_dice_per_class"] is None
    from vnet_tf.model.checkpoint import read_meta as meta_of
    assert meta_of(tmp_path / "run" / "best.npz")["step"] == 2  # without validation, the final weights


@pytest.mark.parametrize("policy", ["mixed_float16", "mixed_bfloat16", "auto"])
def test_mixed_precision_losses_are_finite(tmp_path, policy):
    from vnet_tf.core.runtime import resolve_mixed_precision
    from vnet_tf.training.loop import train
    config = tiny_train_config(tmp_path, mixed_precision=policy)
    if policy == "auto":  # with recomputation, which makes auto train in float32 on any CPU
        config = dataclasses.replace(config, model=dataclasses.replace(config.model, recompute=True))
    summary = train(config, log=lambda s: None, progress=False)
    assert np.all(np.isfinite(summary["loss_history"])) and len(summary["loss_history"]) == 3
    # The model runs under the resolved policy; auto follows this machine's CPU.
    resolved = json.loads((tmp_path / "run" / "config.json").read_text())
    expected = "none" if policy == "auto" else resolve_mixed_precision(policy)
    assert resolved["train"]["model"]["dtype_policy"] == (None if expected == "none" else expected)
    assert resolved["train"]["mixed_precision"] == policy
    # evaluate.py scores the weights in float32, as export.py serves them (every variable restored).
    from vnet_tf.inference.run_folder import restore_model
    scored, _ = restore_model(tmp_path / "run", "final")
    assert scored.get_layer("left0_conv0").dtype_policy.name == "float32"
    with np.load(tmp_path / "run" / "checkpoint.npz") as data:
        stored = [data[k] for k in sorted(k for k in data.files if k.startswith("model/"))]
    assert len(stored) == len(scored.variables)
    for variable, value in zip(scored.variables, stored):
        np.testing.assert_array_equal(variable.numpy(), value)


def test_mirrored_strategy_over_two_logical_cpus(tmp_path):
    code = f"""
import vnet_tf, sys, dataclasses
import tensorflow as tf
cpu = tf.config.list_physical_devices('CPU')[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
sys.path.insert(0, {str(REPO / 'tests')!r})
import numpy as np, pathlib
from helpers import tiny_train_config
from vnet_tf.training.loop import train
result = {{}}
def check(model, strategy):
    result['replicas'] = strategy.num_replicas_in_sync
    for v in model.trainable_variables:
        copies = [np.asarray(c) for c in v.value.values]
        assert len(copies) == 2 and all(np.array_equal(copies[0], c) for c in copies[1:]), v.path
summary = train(tiny_train_config(pathlib.Path({str(tmp_path)!r}), strategy='mirrored', batch_size=4),
                log=lambda s: None, progress=False, on_end=check)
print('replicas', result['replicas'], 'finite', bool(np.all(np.isfinite(summary['loss_history']))))
"""
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=subprocess_env(), capture_output=True,
                         text=True, encoding="utf-8", timeout=600)
    assert out.returncode == 0, out.stderr[-4000:]
    assert "replicas 2 finite True" in out.stdout


def _free_ports(n):
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def test_multi_worker_strategy_two_processes(tmp_path):
    ports = _free_ports(2)
    cluster = {"worker": [f"127.0.0.1:{p}" for p in ports]}
    procs = []
    for index in range(2):
        env = subprocess_env(TF_CONFIG=json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}}))
        cmd = [sys.executable, "train.py", "--flagfile=configs/demo.flags", "--demo_cases=6", "--patch_size=16,16,16",
               "--depth=3", "--base_width=4", "--batch_size=4", "--num_folds=3", "--progress=false", "--steps=3",
               "--checkpoint_every=100", "--validation_every=100", "--strategy=multi_worker",
               f"--workdir={tmp_path / f'worker{index}'}", f"--cache_dir={tmp_path / f'cache{index}'}"]
        procs.append(subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, encoding="utf-8"))
    outs = [p.communicate(timeout=600) for p in procs]
    for p, (stdout, stderr) in zip(procs, outs):
        assert p.returncode == 0, stderr[-4000:]
        # The command's own lines only: TensorFlow's start-up lines are filtered (--debug shows them).
        assert "cuInit" not in stderr and "absl::InitializeLog" not in stderr, stderr[-2000:]
    a = _weights(tmp_path / "worker0" / "checkpoint.npz")
    b = _weights(tmp_path / "worker1" / "checkpoint.npz")
    model_keys = [k for k in a if k.startswith("model/")]
    assert model_keys
    for key in model_keys:
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)


def test_shipped_flagfiles_parse_and_validate(monkeypatch):
    """Every flagfile in configs/ passes the flag checks (train.py --helpshort is not enough:
    build the config without running)."""
    from conftest import flagfile_config
    names = sorted(path.name for path in (REPO / "configs").glob("*.flags"))
    assert {"demo.flags", "hippocampus.flags", "la2018.flags", "la2018_paper.flags"} <= set(names), names
    for name in names:
        config = flagfile_config(name, monkeypatch, "--data_dir=.")
        got = (config.steps, config.patch_size_zyx, config.deep_supervision, config.batch_dice,
               config.time_budget_minutes)
        if name == "hippocampus_ds.flags":  # the nested --flagfile applies, then its overrides
            assert got == (4000, (40, 56, 40), 2, True, 0.0), got
        if name == "hippocampus.flags":  # the recipe's length is its 2-hour budget
            assert got == (20000, (40, 56, 40), 0, False, 115.0), got
