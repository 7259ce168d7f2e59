"""Shared fixtures. Importing vnet_tf first turns oneDNN on before TensorFlow loads."""

import importlib.util
import os
import pathlib
import sys

# pytest.ini runs two workers on the reference machine's two cores: one TensorFlow compute
# thread each (and in the processes they start) keeps them from contending for both cores
# (the suite took 0.91x the time). Set before TensorFlow loads; a value in the environment wins.
os.environ.setdefault("TF_NUM_INTRAOP_THREADS", "1")

import vnet_tf  # noqa: F401,E402  (must come before keras / tensorflow)

import numpy as np
import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
HIPPOCAMPUS = SHARED_DATA / "Task04_Hippocampus"
LEFT_ATRIUM = SHARED_DATA / "LA2018"


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


@pytest.fixture
def hippocampus_dir():
    if not (HIPPOCAMPUS / "dataset.json").is_file():
        pytest.skip(f"MSD hippocampus data not found at {HIPPOCAMPUS} (../shared/data beside the repo)")
    return HIPPOCAMPUS


@pytest.fixture
def left_atrium_dir():
    if not (LEFT_ATRIUM / "dataset.json").is_file():
        pytest.skip(f"LA2018 left-atrium data not found at {LEFT_ATRIUM} (../shared/data beside the repo)")
    return LEFT_ATRIUM


def load_bench(name):
    """The module of ``bench/<name>.py`` (bench scripts are not a package)."""
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, REPO / "bench" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def subprocess_env(**extra):
    """Environment for child Python processes that import this repo."""
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    env.update(extra)
    return env


# A tiny training run on the embedded demo data, shared by the train / evaluate / export tests.
TINY_TRAIN = ["--demo_cases=6", "--patch_size=16,16,16", "--depth=3", "--base_width=4",
              "--batch_size=2", "--num_folds=3", "--fold=0", "--progress=false"]


def run_command(command, *args):
    """``python <command>.py *args`` run in this process (tests/commands_in_process.py), as a
    CompletedProcess: for the tests where a separate process is not the point."""
    import subprocess
    from commands_in_process import run_case
    result = run_case(command, args)
    return subprocess.CompletedProcess([f"{command}.py", *map(str, args)], result["code"], result["stdout"],
                                       result["stderr"])


def run_train(workdir, cache_dir, *args):
    return run_command("train", "--flagfile=configs/demo.flags", *TINY_TRAIN, *args, f"--workdir={workdir}",
                       f"--cache_dir={cache_dir}")


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory, worker_id):
    """A finished 40-step demo run with augmentation and validation: (workdir, completed process).
    Trained once per test session: pytest-xdist's workers share it through their common
    temporary folder, the first to ask training it under a lock while the others wait. Tests
    read it and write their outputs elsewhere."""
    import fcntl
    import json
    import shutil
    import subprocess
    shared = tmp_path_factory.getbasetemp() if worker_id == "master" else tmp_path_factory.getbasetemp().parent
    root, record = shared / "tiny_run", shared / "tiny_run.json"
    with open(shared / "tiny_run.lock", "w", encoding="utf-8") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not record.is_file():
            shutil.rmtree(root, ignore_errors=True)  # what a failed attempt left
            out = run_train(root / "run", root / "cache", "--steps=40", "--validation_every=20",
                            "--checkpoint_every=10", "--aug_elastic_p=0.3", "--aug_elastic_sigma=2",
                            "--aug_flip_axes=2", "--aug_gamma_p=0.2", "--learning_rate=0.01")
            assert out.returncode == 0, out.stderr[-4000:]
            record.write_text(json.dumps({"args": out.args, "stdout": out.stdout, "stderr": out.stderr}))
    done = json.loads(record.read_text())
    return root / "run", subprocess.CompletedProcess(done["args"], 0, done["stdout"], done["stderr"])


def train_config(*args):
    """The TrainConfig that ``train.py *args`` builds, in this process: the flags parsed (with
    the other commands' flags parked) and reset again, nothing run."""
    from absl import flags
    from commands_in_process import flags_of
    with flags_of("train") as train:
        from vnet_tf.commands import cli
        flags.FLAGS.unparse_flags()
        try:
            flags.FLAGS(cli.expand_flagfiles(["train.py", *map(str, args)])[0])
            return train.build_config(flags.FLAGS.data_dir or ".")
        finally:
            flags.FLAGS.unparse_flags()


def command_flag_values(command, *args):
    """``{flag: value}`` of ``command``'s own flags as ``command *args`` parses them (nothing run),
    and its positional arguments."""
    from absl import flags
    from commands_in_process import flags_of
    with flags_of(command) as module:
        flags.FLAGS.unparse_flags()
        try:
            positional = flags.FLAGS([command, *map(str, args)])[1:]
            return {f.name: f.value for f in flags.FLAGS.get_flags_for_module(module.__name__)}, positional
        finally:
            flags.FLAGS.unparse_flags()


def flagfile_config(name, monkeypatch, *extra):
    """The TrainConfig that train.py builds from ``configs/<name>`` (+ ``extra`` flags)."""
    monkeypatch.chdir(REPO)
    monkeypatch.syspath_prepend(str(REPO))
    return train_config(f"--flagfile=configs/{name}", *extra)


# The longest tests (13-70 s each on the reference machine), longest first, run before the
# rest, so that the two workers of pytest.ini start on them together and the short ones fill
# in at the end; in collection order they could fall to one worker last and leave the other idle.
SLOW = ("test_the_saved_model_gives_evaluates_labels_and_probabilities", "test_kill_and_resume_gives_identical_weights",
        "test_multi_worker_strategy_two_processes", "test_short_hippocampus_recipe",
        "test_time_budget_ends_the_run_and_its_schedule", "test_segmenting_a_large_scan_holds_less_than_its_class_sums",
        "test_mirrored_strategy_over_two_logical_cpus", "test_an_ensemble_and_an_export_give_the_workdirs_labels",
        "test_tiny_vnet_learns_a_sphere")


def pytest_collection_modifyitems(config, items):  # pylint: disable=unused-argument
    for item in items:
        if item.originalname in SLOW:
            item.add_marker(pytest.mark.slow)
    # Longest first (SLOW's order); the sort is stable, so the rest keep their order.
    items.sort(key=lambda item: SLOW.index(item.originalname) if item.originalname in SLOW else len(SLOW))
