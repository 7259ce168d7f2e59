"""Training: data check -> cache -> tf.data patches -> (device) augmentation -> V-Net ->
Dice loss -> optimiser, with checkpoints that resume exactly, validation by sliding window,
TensorBoard logs, mixed precision and tf.distribute.

:func:`train` is what ``train.py`` calls; every setting is a field of
:class:`~vnet_tf.training.config.TrainConfig`. The parts: :mod:`~vnet_tf.training.build` (data,
model, optimiser, loss), :mod:`~vnet_tf.training.run` (the step loop, validation, checkpoints),
:mod:`~vnet_tf.training.step` (the compiled step).

Exact resume: batch ``i`` of the input pipeline depends only on ``(seed, i)``; the
checkpoint holds the model, the optimiser (including its step and loss scale), and the
random-generator states of the model (dropout) and of the device-side augmentation. A
rerun of the same command continues from the latest checkpoint, and with
``deterministic=True`` (TensorFlow op determinism) it ends with the weights of an
uninterrupted run. Host-side augmentation draws ahead of the training step (prefetch), so
its draws after a resume are fresh ones: exact resume needs ``augment_on="device"``.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
import time
from typing import Callable, Optional

import keras
import tensorflow as tf

from vnet_tf.core.errors import UserError
from vnet_tf.core.folders import CHECKPOINT_TEMPORARIES, remove_stale, writable_folder
from vnet_tf.core.lock import folder_lock
from vnet_tf.inference import run_folder
from vnet_tf.training.build import build_parts, prepare_data
from vnet_tf.training.config import TrainConfig
from vnet_tf.training.run import Run


def train(config: TrainConfig, log: Callable[[str], None] = print, progress: bool = True,
          on_end: Optional[Callable] = None, replay_flags: Optional[str] = None) -> dict:
    """Trains (or resumes) and writes into ``config.workdir``: ``config.json``,
    ``checkpoint.npz`` (the latest training state), ``best.npz`` (the weights of the best
    validation Dice; without validation, the final weights), ``tensorboard/`` and
    ``summary.json``; :mod:`vnet_tf.inference.run_folder` reads them. With ``weight_average``,
    validation and ``best.npz`` use the weights' moving average (:mod:`vnet_tf.model.averaging`),
    and ``checkpoint.npz`` holds both. Returns the summary;
    ``on_end(model, strategy)`` is called with the trained model (tests inspect replicas).

    With ``time_budget_minutes``, ``steps`` is an upper bound: the run (and its learning-rate
    schedule) ends when the budget, counted from this call and over resumed parts, is spent
    (:mod:`vnet_tf.training.budget`).

    A workdir holds one run: rerunning it with other settings is refused, and rerunning a
    finished run changes nothing and returns its summary (``"already_finished": True``).
    ``replay_flags`` (the command's flags as text) is written to ``flags.txt`` once those
    checks pass. The workdir is locked for the whole call (:mod:`vnet_tf.core.lock`): a second
    process training there is refused. Errors the user can fix are :class:`~vnet_tf.core.errors.UserError`.

    The parts, in order: :func:`_open_workdir` (checks), :func:`prepare_data` (data check and
    cache), :func:`_build` (model, optimiser, augmentation, loss inside the strategy's scope),
    then a :class:`Run`: :meth:`~Run.restore`, :meth:`~Run.start` (input pipeline,
    validation cases), :meth:`~Run.loop` (steps, validation, checkpoints) and
    :meth:`~Run.finish` (final models, summary)."""
    config.validate()
    clock_start = time.perf_counter()
    with folder_lock(writable_folder(config.workdir, "workdir"), "workdir"):
        return _train(config, clock_start, log, progress, on_end, replay_flags)


def _train(config: TrainConfig, clock_start: float, log: Callable[[str], None], progress: bool,
           on_end: Optional[Callable], replay_flags: Optional[str]) -> dict:
    """:func:`train` with the workdir locked."""
    workdir = _open_workdir(config, log)
    finished = _finished_summary(workdir, config, run_folder.state_meta(workdir))
    if finished is not None:  # the caller says so (and which setting continues it)
        return finished
    keras.utils.set_random_seed(config.seed)
    if config.deterministic:
        tf.config.experimental.enable_op_determinism()

    train_paths, val_paths, num_classes = prepare_data(config, log)
    if replay_flags is not None:
        run_folder.write_text(workdir, run_folder.FLAGS_FILE, replay_flags)
    if num_classes < 2:
        raise UserError(f"{config.data_dir}: every label is empty (background only); expected at least one "
                        f"foreground class")
    parts = build_parts(config, train_paths, val_paths, num_classes, log)
    run = Run(config, workdir, log, parts)
    run.restore(clock_start, bool(val_paths))
    run_folder.write_json(workdir, run_folder.CONFIG, parts.resolved)
    run.start(train_paths, val_paths, progress)
    run.loop()
    summary = run.finish()
    if on_end is not None:
        on_end(parts.model, parts.strategy)
    return summary


def _open_workdir(config: TrainConfig, log: Callable[[str], None]) -> pathlib.Path:
    """The run's folder, checked before any work: writable (and the cache's), cleared of a
    stopped run's temporaries, and holding no run with other settings."""
    workdir = pathlib.Path(config.workdir)
    writable_folder(config.cache_dir, "cache_dir")
    for stale in remove_stale(workdir, CHECKPOINT_TEMPORARIES):
        log(f"removed {stale.name}, a temporary file left by a stopped run")
    _check_same_run(workdir / run_folder.CONFIG, config.to_dict())
    return workdir


def _finished_summary(workdir: pathlib.Path, config: TrainConfig, meta: Optional[dict]) -> Optional[dict]:
    """The summary of the run in ``workdir`` where it has already done what ``config`` asks
    (its steps, or its time budget) and written its summary; else ``None``."""
    if not meta:
        return None
    try:
        summary = json.loads((workdir / run_folder.SUMMARY).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None  # killed after its last checkpoint: the run writes its final models and summary
    if not isinstance(summary, dict) or summary.get("steps") != meta["step"]:
        return None
    # A budget that ended the run ends it again unless it grew (a step more would not fit).
    spent = bool(summary.get("stopped_by_budget")) and 0 < config.time_budget_minutes <= (
        summary.get("time_budget_minutes") or 0)
    if meta["step"] < config.steps and not spent:
        return None
    return {**summary, "already_finished": True}


# Model fields a run resolves against its data and its precision, and recompute (memory, not
# results): not compared when a run resumes.
MODEL_RESOLVED = ("input_channels", "num_classes", "dtype_policy", "recompute")


def _check_same_run(config_file: pathlib.Path, settings: dict) -> None:
    """A workdir holds one run: resuming with other settings (apart from ``steps``,
    ``time_budget_minutes``, the workdir and cache folders, which may move, and
    ``model.recompute``, which changes memory, not results) is an error."""
    if not config_file.is_file() or not (config_file.parent / run_folder.CHECKPOINT).is_file():
        return
    try:
        previous = json.loads(config_file.read_text(encoding="utf-8"))
        old = dict(previous["train"])
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise UserError(f"{config_file}: expected the settings of the run in this workdir (JSON with 'train'), "
                        f"found a truncated or corrupt file ({type(err).__name__}: {err}); restore it, or use "
                        f"another workdir") from err
    new = dict(json.loads(json.dumps(settings)))
    old = _with_later_defaults(old, new, TrainConfig)
    if isinstance(old.get("inference"), dict):  # earlier versions wrote a copy of the run's patch size there
        old["inference"] = {k: v for k, v in old["inference"].items() if k != "patch_size_zyx"}
    for d in (old, new):  # the run's length, where its files live and its memory use may change
        for key in ("steps", "time_budget_minutes", "workdir", "cache_dir"):
            d.pop(key, None)
        if isinstance(d.get("model"), dict):  # (and what the data and the precision resolve)
            d["model"] = {k: v for k, v in d["model"].items() if k not in MODEL_RESOLVED}
    changed = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
    if changed:
        raise UserError(f"{config_file.parent} holds a run with other settings ({', '.join(changed)} differ); "
                        f"use another workdir, or the same settings to resume")


def _with_later_defaults(old: dict, new: dict, cls) -> dict:
    """``old`` (a run's settings as written) with the settings added to ``cls`` since then set
    to their defaults, which the run ran with; nested settings (``model``, ``augment``, ...)
    likewise. Only keys ``new`` has are filled."""
    filled = dict(old)
    for field in dataclasses.fields(cls):
        if field.name not in new:
            continue
        nested = field.default if dataclasses.is_dataclass(field.default) else None
        if nested is not None and isinstance(filled.get(field.name), dict) and isinstance(new[field.name], dict):
            filled[field.name] = _with_later_defaults(filled[field.name], new[field.name], type(nested))
        elif field.name not in filled and field.default is not dataclasses.MISSING and nested is None:
            filled[field.name] = json.loads(json.dumps(field.default))
    return filled
