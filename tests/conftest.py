"""Shared fixtures. Importing vnet_tf first turns oneDNN on before TensorFlow loads."""

import os
import pathlib

import vnet_tf  # noqa: F401  (must come before keras / tensorflow)

import numpy as np
import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
HIPPOCAMPUS = SHARED_DATA / "Task04_Hippocampus"


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


@pytest.fixture
def hippocampus_dir():
    if not (HIPPOCAMPUS / "dataset.json").is_file():
        pytest.skip(f"MSD hippocampus data not found at {HIPPOCAMPUS} (../shared/data beside the repo)")
    return HIPPOCAMPUS


def subprocess_env(**extra):
    """Environment for child Python processes that import this repo."""
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    env.update(extra)
    return env
