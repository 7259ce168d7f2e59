"""A training workdir, its one reader and writer: training writes it through :func:`write_json`,
:func:`write_text`, :func:`save_state` and :func:`save_best`, and resumes with
:func:`restore_state`; evaluation and export read its settings (``config.json``) and weights
(``best.npz`` / ``checkpoint.npz``, the one format the weights are stored in) through
:func:`read_run` and :func:`restore_model`, with errors that name the file.

``which``: ``best`` (best validation Dice), ``final`` (the latest checkpoint; the weights'
moving average where the run kept one) or ``final_raw`` (a run with a weight average: its
latest training weights).
"""

from __future__ import annotations

import json
import pathlib
from typing import Tuple

from vnet_tf.core.errors import UserError
from vnet_tf.model import averaging
from vnet_tf.core.folders import atomic_write_text
from vnet_tf.model.checkpoint import read_meta, restore_checkpoint, save_checkpoint
from vnet_tf.inference.config import InferenceConfig
from vnet_tf.core.io import PathLike
from vnet_tf.model.networks import build_network
from vnet_tf.model.config import VNetConfig
from vnet_tf.data.preprocess import PreprocessConfig

CONFIG, CHECKPOINT, BEST = "config.json", "checkpoint.npz", "best.npz"
FLAGS_FILE, SUMMARY = "flags.txt", "summary.json"
WHICH = ("best", "final", "final_raw")


def write_text(workdir: PathLike, name: str, text: str) -> None:
    """Writes ``name`` (e.g. :data:`FLAGS_FILE`) atomically."""
    atomic_write_text(pathlib.Path(workdir) / name, text)


def write_json(workdir: PathLike, name: str, data: dict) -> None:
    """Writes ``name`` (:data:`CONFIG`, :data:`SUMMARY`) as indented JSON, atomically."""
    write_text(workdir, name, json.dumps(data, indent=2))


def save_state(workdir: PathLike, groups: dict, meta: dict) -> None:
    """The latest training state, ``checkpoint.npz``: every variable group and ``meta``."""
    save_checkpoint(pathlib.Path(workdir) / CHECKPOINT, groups, meta)


def state_meta(workdir: PathLike):
    """The latest checkpoint's record (step, best score, timings), or ``None`` without one."""
    return read_meta(pathlib.Path(workdir) / CHECKPOINT)


def restore_state(workdir: PathLike, groups: dict):
    """``(meta, count)``: the latest checkpoint restored into ``groups``, or ``None`` without one."""
    path = pathlib.Path(workdir) / CHECKPOINT
    return restore_checkpoint(path, groups) if path.is_file() else None


def save_best(workdir: PathLike, model_variables, step: int, score: float) -> None:
    """``best.npz``: the model's weights (as they are now: the average where one is applied)."""
    save_checkpoint(pathlib.Path(workdir) / BEST, {"model": model_variables}, {"step": step, "best_score": score})


def read_run(workdir: PathLike) -> dict:
    """The run's ``config.json`` as a dict, with ``model``, ``num_classes`` and ``input_channels``
    (the model as the run resolved it against its data; runs before this layout wrote them
    beside ``train``); ``FileNotFoundError`` / ``ValueError`` naming it."""
    path = pathlib.Path(workdir) / CONFIG
    if not path.is_file():
        raise FileNotFoundError(f"{workdir}: no {CONFIG}; is it a training workdir?")
    try:
        run = json.loads(path.read_text())
        model = run["train"]["model"]
        if "model" not in run:  # each setting once: the model as the run resolved it, in its settings
            run.update(model=model, num_classes=model["num_classes"], input_channels=model["input_channels"])
        run["model"], run["num_classes"], run["input_channels"]  # pylint: disable=pointless-statement
    except (ValueError, KeyError, TypeError) as err:
        raise UserError(f"{path}: expected a training run's settings (JSON with train, and its model); "
                        f"found {type(err).__name__}: {err}") from err
    return run


def run_model_config(run: dict) -> VNetConfig:
    """The model settings of a run (its config.json as a dict) for inference: float32 whatever
    the training precision (the weights are float32 either way), and no recomputation (a
    training-memory setting that would only add gradient wrappers to the served graph)."""
    fields = dict(run["model"])
    for key in ("convs_left", "convs_right"):
        if fields.get(key) is not None:
            fields[key] = tuple(fields[key])
    fields["dtype_policy"] = None
    fields["recompute"] = False
    return VNetConfig(**fields)


def run_configs(run: dict) -> Tuple[PreprocessConfig, InferenceConfig]:
    """The preprocessing and inference settings a run was trained with."""
    train_cfg = run["train"]
    pre = dict(train_cfg["preprocess"])
    for key in ("target_spacing_zyx", "clip_percentiles", "ct_statistics", "crop_size_zyx"):
        if pre.get(key) is not None:
            pre[key] = tuple(pre[key])
    inf = dict(train_cfg["inference"])
    inf["patch_size_zyx"] = tuple(train_cfg["patch_size_zyx"])
    inf["mirror_axes"] = tuple(inf["mirror_axes"])
    return PreprocessConfig(**pre), InferenceConfig(**inf)


def restore_model(workdir: PathLike, which: str = "best"):
    """``(model, run)``: the run's model (float32) with the weights ``which`` names, and the
    run's record with ``weights`` added (``which``, the file and its training step); raises
    when a file is missing or unreadable, or a variable is not restored."""
    if which not in WHICH:
        raise UserError(f"which must be one of {WHICH}, got {which!r}")
    workdir = pathlib.Path(workdir)
    run = read_run(workdir)
    averaged = bool(run["train"].get("weight_average"))
    if which == "final_raw" and not averaged:
        raise UserError(f"{workdir}: which='final_raw' needs a run trained with a weight average "
                        f"(weight_average > 0); this one kept none, so its final model is 'final'")
    model = build_network(run_model_config(run)).model
    path = workdir / (BEST if which == "best" else CHECKPOINT)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such checkpoint (has the run validated / finished?)")
    # best.npz holds the average already; checkpoint.npz holds both.
    group = averaging.GROUP if which == "final" and averaged else "model"
    meta, count = restore_checkpoint(path, {group: model.variables}, only_groups=True)
    if count != len(model.variables):
        raise UserError(f"{path}: restored {count} of {len(model.variables)} variables")
    run["weights"] = {"which": which, "file": path.name, "step": meta.get("step")}
    return model, run
