"""The package installs with its command-line programs: pyproject.toml's dependencies are
requirements.txt's, and ``pip install`` of a copy of the project gives working ``vnet-*``
commands that import the installed package, not this checkout."""

import os
import pathlib
import shutil
import subprocess
import sys
import tomllib

import pytest

from conftest import REPO


def _pyproject():
    with open(REPO / "pyproject.toml", "rb") as f:
        return tomllib.load(f)


def test_the_dependencies_are_the_requirements():
    lines = (REPO / "requirements.txt").read_text(encoding="utf-8").splitlines()
    requirements = [line.strip() for line in lines if line.strip() and not line.startswith("#")]
    assert _pyproject()["project"]["dependencies"] == requirements


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    pytest.importorskip("setuptools", reason="setuptools builds the package (pip install --no-build-isolation)")
    root = tmp_path_factory.mktemp("package")
    source, target = root / "source", root / "site"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, source / name)
    shutil.copytree(REPO / "vnet_tf", source / "vnet_tf", ignore=shutil.ignore_patterns("__pycache__"))
    out = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
                          "--target", str(target), str(source)], capture_output=True, text=True, encoding="utf-8")
    assert out.returncode == 0, out.stderr[-3000:]
    env = {**os.environ, "PYTHONPATH": str(target)}
    return target, env, root


def test_every_console_script_is_installed_and_runs(installed):
    target, env, root = installed
    scripts = _pyproject()["project"]["scripts"]
    assert sorted(p.name for p in (target / "bin").iterdir()) == sorted(scripts)
    where = subprocess.run([sys.executable, "-c", "import vnet_tf.commands.train as m; print(m.__file__)"],
                           cwd=root, env=env, capture_output=True, text=True, encoding="utf-8")
    assert pathlib.Path(where.stdout.strip()).is_relative_to(target), where.stdout + where.stderr
    helped = subprocess.run([target / "bin" / "vnet-train", "--helpfull"], cwd=root, env=env,
                            capture_output=True, text=True, encoding="utf-8")
    assert "--time_budget_minutes" in helped.stdout, helped.stderr[-2000:]  # (absl exits 1 after help)
    # --helpfull lists train's flags by stage (absl orders the stages' modules by name)
    text = helped.stdout
    headings = sorted((text.index(f"vnet_tf.commands.train.{stage}:"), stage)
                      for stage in ("data", "model", "loss", "augmentation", "run"))
    for flag, stage in (("--data_dir", "data"), ("--base_width", "model"), ("--learning_rate", "loss"),
                        ("--aug_elastic_p", "augmentation"), ("--steps", "run")):
        position = text.index(f"  {flag}")
        assert max((h for h in headings if h[0] < position), default=(0, None))[1] == stage, flag
    checked = subprocess.run([target / "bin" / "vnet-check", str(root / "no_such_dataset")], cwd=root, env=env,
                             capture_output=True, text=True, encoding="utf-8")
    assert checked.returncode == 2 and checked.stderr.startswith("error:"), checked.stderr[-2000:]
    refused = subprocess.run([target / "bin" / "vnet-evaluate", "--model=nowhere"], cwd=root, env=env,
                             capture_output=True, text=True, encoding="utf-8")
    assert refused.returncode == 2 and "error:" in refused.stderr and "Traceback" not in refused.stderr
