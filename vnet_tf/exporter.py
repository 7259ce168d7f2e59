"""Write a training run as a versioned SavedModel for TF Serving.

``export_run(workdir, export_base)`` restores the run's weights (checking that every
variable was restored), wraps them in :class:`vnet_tf.serving.VNetServing`, saves into a
temporary folder beside ``export_base/<version>``, adds the warm-up request, and renames
the folder into place only when complete: a server watching ``export_base`` never sees a
half-written version. Several runs export as one ensemble (their probabilities averaged).
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import re
import shutil
import tempfile
from typing import Callable, Optional, Sequence, Union

import numpy as np
import tensorflow as tf

from vnet_tf import averaging
from vnet_tf.checkpoint import restore_checkpoint
from vnet_tf.ensemble import MeanOfModels, Member, check_members, training_cases
from vnet_tf.io import PathLike
from vnet_tf.model import build_vnet
from vnet_tf.serving import VNetServing
from vnet_tf.training import BEST, CHECKPOINT, run_configs, run_model_config

WARMUP_FILE = "tf_serving_warmup_requests"
RUN_FILE = "vnet_tf_run.json"


def next_version(export_base: pathlib.Path) -> int:
    """1 + the largest integer-named folder in ``export_base`` (1 when there is none)."""
    versions = [int(p.name) for p in export_base.iterdir() if p.is_dir() and re.fullmatch(r"\d+", p.name)] \
        if export_base.is_dir() else []
    return max(versions, default=0) + 1


def restore_model(workdir: PathLike, which: str = "best"):
    """The run's model with its weights from ``best.npz`` or ``checkpoint.npz`` (the weight
    average, where the run kept one); raises when any variable is not restored. Returns
    ``(model, run_config_dict)``."""
    workdir = pathlib.Path(workdir)
    config_file = workdir / "config.json"
    if not config_file.is_file():
        raise FileNotFoundError(f"--workdir {workdir}: no config.json; is it a training workdir?")
    run = json.loads(config_file.read_text())
    model = build_vnet(run_model_config(run))  # served in float32 whatever the training precision
    path = workdir / (BEST if which == "best" else CHECKPOINT)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such checkpoint (has the run validated / finished?)")
    # A run with a weight average: its final model is the average (best.npz holds it already).
    group = averaging.GROUP if which != "best" and run["train"].get("weight_average") else "model"
    _, count = restore_checkpoint(path, {group: model.variables}, only_groups=True)
    if count != len(model.variables):
        raise ValueError(f"{path}: restored {count} of {len(model.variables)} variables")
    return model, run


def warmup_record(volume: np.ndarray) -> bytes:
    """A serialized ``PredictionLog`` with one ``serving_default`` request for ``volume``."""
    from tensorflow_serving.apis import model_pb2, predict_pb2, prediction_log_pb2  # pylint: disable=import-outside-toplevel
    request = predict_pb2.PredictRequest(model_spec=model_pb2.ModelSpec(signature_name="serving_default"))
    request.inputs["volume"].CopyFrom(tf.make_tensor_proto(volume.astype(np.float32)))
    request.inputs["spacing"].CopyFrom(tf.make_tensor_proto(np.zeros((0,), np.float32)))
    log = prediction_log_pb2.PredictionLog(predict_log=prediction_log_pb2.PredictLog(request=request))
    return log.SerializeToString()


def export_run(workdir: Union[PathLike, Sequence[PathLike]], export_base: PathLike, version: Optional[int] = None,
               which: str = "best", inference_overrides: Optional[dict] = None,
               warn: Callable[[str], None] = lambda message: None) -> pathlib.Path:
    """Exports the run in ``workdir`` to ``export_base/<version>``; returns that folder.
    Several workdirs are exported as one ensemble: the served probabilities are the mean of
    the runs' (they must share preprocessing, patch size and classes; the other inference
    settings are the first run's, and ``warn`` is told which ones differed)."""
    export_base = pathlib.Path(export_base)
    workdirs = [workdir] if isinstance(workdir, (str, os.PathLike)) else list(workdir)
    restored = [restore_model(w, which) for w in workdirs]
    members = [Member(str(w), *run_configs(r), r["num_classes"]) for w, (_, r) in zip(workdirs, restored)]
    differing = check_members(members)
    if differing:
        warn(f"the ensemble's runs differ in {', '.join(differing)}; exporting those of {workdirs[0]}")
    run = dict(restored[0][1])
    run["train_cases"] = training_cases([r for _, r in restored])
    model = restored[0][0] if len(restored) == 1 else MeanOfModels([m for m, _ in restored])
    preprocess, inference = members[0].preprocess, members[0].inference
    if inference_overrides:
        inference = dataclasses.replace(inference, **inference_overrides).validate()
    module = VNetServing(model, preprocess, inference, run["input_channels"], run["num_classes"])
    export_base.mkdir(parents=True, exist_ok=True)
    version = next_version(export_base) if version is None else int(version)
    if version < 1:
        raise ValueError(f"--version must be a positive integer, got {version}")
    target = export_base / str(version)
    if target.exists():
        raise FileExistsError(f"{target} exists; pick another --version or leave it out for the next free one")
    resolved = [str(pathlib.Path(w).resolve()) for w in workdirs]
    workdirs_json = resolved[0] if len(resolved) == 1 else resolved
    tmp = pathlib.Path(tempfile.mkdtemp(prefix=f".tmp-{version}-", dir=export_base))
    try:
        tf.saved_model.save(module, str(tmp / "model"), signatures={
            "serving_default": module.serve, "predict_patch": module.predict_patch})
        assets = tmp / "model" / "assets.extra"
        assets.mkdir()
        example = np.zeros(tuple(inference.patch_size_zyx) + (run["input_channels"],), np.float32)
        with tf.io.TFRecordWriter(str(assets / WARMUP_FILE)) as writer:
            writer.write(warmup_record(example[..., 0] if run["input_channels"] == 1 else example))
        (tmp / "model" / "assets.extra" / RUN_FILE).write_text(json.dumps(
            {"workdir": workdirs_json, "which": which, "num_classes": run["num_classes"],
             "input_channels": run["input_channels"], "train_cases": run.get("train_cases", []),
             "train": {"preprocess": preprocess.to_dict(), "inference": inference.to_dict(),
                       "patch_size_zyx": list(inference.patch_size_zyx)}}, indent=2))
        os.rename(tmp / "model", target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def load_exported(version_dir: PathLike):
    """``(predictor, run)`` of an exported SavedModel: its ``predict_patch`` signature as a
    sliding-window predictor and the run's settings recorded at export (so evaluate.py
    preprocesses and tiles exactly as the library does)."""
    version_dir = pathlib.Path(version_dir)
    run_file = version_dir / "assets.extra" / RUN_FILE
    if not run_file.is_file():
        raise FileNotFoundError(f"{run_file}: missing; was {version_dir} written by export.py?")
    run = json.loads(run_file.read_text())
    signature = tf.saved_model.load(str(version_dir)).signatures["predict_patch"]

    def predict(batch):
        return signature(patches=tf.constant(batch, tf.float32))["probabilities"].numpy()

    return predict, run
