"""Write a training run as a versioned SavedModel for TF Serving.

``export_run(workdir, export_base)`` restores the run's weights (checking that every
variable was restored), wraps them in :class:`vnet_tf.inference.signatures.VNetServing`, saves into a
temporary folder beside ``export_base/<version>``, adds the warm-up request, and renames
the folder into place only when complete: a server watching ``export_base`` never sees a
half-written version. Several runs export as one ensemble (their probabilities averaged).
"""

from __future__ import annotations

import json
import os
import pathlib
import re
import shutil
import tempfile
from typing import Callable, Optional, Sequence, Union

import numpy as np
import tensorflow as tf

from vnet_tf.core.errors import UserError
from vnet_tf.core.folders import EXPORT_TEMPORARIES, remove_stale, writable_folder
from vnet_tf.core.lock import folder_lock
from vnet_tf.inference.ensemble import training_cases
from vnet_tf.inference.config import DEFAULT_MAX_VOXELS
from vnet_tf.inference.segmenter import Segmenter
from vnet_tf.core.io import PathLike
from vnet_tf.inference.loading import load_workdirs
from vnet_tf.inference.signatures import RUN_FILE, VNetServing

WARMUP_FILE = "tf_serving_warmup_requests"


def next_version(export_base: pathlib.Path) -> int:
    """1 + the largest integer-named folder in ``export_base`` (1 when there is none)."""
    versions = [int(p.name) for p in export_base.iterdir() if p.is_dir() and re.fullmatch(r"\d+", p.name)] \
        if export_base.is_dir() else []
    return max(versions, default=0) + 1


def warmup_record(volume: np.ndarray, spacing_zyx) -> bytes:
    """A serialized ``PredictionLog`` with one ``serving_default`` request for ``volume``
    (identity direction)."""
    from tensorflow_serving.apis import model_pb2, predict_pb2, prediction_log_pb2  # pylint: disable=import-outside-toplevel
    request = predict_pb2.PredictRequest(model_spec=model_pb2.ModelSpec(signature_name="serving_default"))
    request.inputs["volume"].CopyFrom(tf.make_tensor_proto(volume.astype(np.float32)))
    request.inputs["spacing"].CopyFrom(tf.make_tensor_proto(np.asarray(spacing_zyx, np.float32)))
    request.inputs["direction"].CopyFrom(tf.make_tensor_proto(np.eye(3, dtype=np.float32).ravel()))
    log = prediction_log_pb2.PredictionLog(predict_log=prediction_log_pb2.PredictLog(request=request))
    return log.SerializeToString()


def export_run(workdir: Union[PathLike, Sequence[PathLike]], export_base: PathLike, version: Optional[int] = None,
               which: str = "best", inference_overrides: Optional[dict] = None,
               warn: Callable[[str], None] = lambda message: None,
               max_voxels: int = DEFAULT_MAX_VOXELS) -> pathlib.Path:
    """Exports the run in ``workdir`` to ``export_base/<version>``; returns that folder.
    Several workdirs are exported as one ensemble: the served probabilities are the mean of
    the runs' (they must share preprocessing, patch size and classes; the other inference
    settings are the first run's, and ``warn`` is told which ones differed)."""
    export_base = pathlib.Path(export_base)
    workdirs = [workdir] if isinstance(workdir, (str, os.PathLike)) else list(workdir)
    model, preprocess, inference, runs = load_workdirs(workdirs, which, inference_overrides, warn)
    run = dict(runs[0])
    run["train_cases"] = training_cases(runs)
    run["weights"] = [dict(r["weights"], workdir=str(pathlib.Path(w).resolve())) for w, r in zip(workdirs, runs)]
    if preprocess.n4:
        raise UserError(f"{workdirs[0]}: the run corrects the bias field (N4) before inference, which the "
                        f"serving graph cannot do; evaluate the training workdir itself instead")
    module = VNetServing(Segmenter(model, preprocess, inference, run["input_channels"], run["num_classes"],
                                   max_voxels))
    writable_folder(export_base, "export_base")
    with folder_lock(export_base, "export_base"):
        remove_stale(export_base, EXPORT_TEMPORARIES)
        return _save_version(module, export_base, version, workdirs, which, run, preprocess, inference, max_voxels)


def _save_version(module: VNetServing, export_base: pathlib.Path, version: Optional[int], workdirs, which: str,
                  run: dict, preprocess, inference, max_voxels: int) -> pathlib.Path:
    """:func:`export_run`'s writing, with ``export_base`` locked: the version chosen, the
    SavedModel and its assets written to a temporary folder, renamed into place."""
    version = next_version(export_base) if version is None else int(version)
    if version < 1:
        raise UserError(f"version must be a positive integer, got {version}")
    target = export_base / str(version)
    if target.exists():
        raise UserError(f"{target} exists; pick another version or leave it out for the next free one")
    resolved = [str(pathlib.Path(w).resolve()) for w in workdirs]
    weights = run["weights"][0] if len(run["weights"]) == 1 else run["weights"]
    workdirs_json = resolved[0] if len(resolved) == 1 else resolved
    tmp = pathlib.Path(tempfile.mkdtemp(prefix=f".tmp-{version}-", dir=export_base))
    try:
        tf.saved_model.save(module, str(tmp / "model"), signatures=module.signatures())
        assets = tmp / "model" / "assets.extra"
        assets.mkdir()
        example = np.zeros(tuple(inference.patch_size_zyx) + (run["input_channels"],), np.float32)
        with tf.io.TFRecordWriter(str(assets / WARMUP_FILE)) as writer:
            spacing = preprocess.target_spacing_zyx or (1.0, 1.0, 1.0)
            writer.write(warmup_record(example[..., 0] if run["input_channels"] == 1 else example, spacing))
        (tmp / "model" / "assets.extra" / RUN_FILE).write_text(json.dumps(
            {"workdir": workdirs_json, "which": which, "weights": weights, "num_classes": run["num_classes"],
             "input_channels": run["input_channels"], "train_cases": run.get("train_cases", []),
             "max_voxels": int(max_voxels),
             "train": {"preprocess": preprocess.to_dict(), "inference": inference.to_dict(),
                       "patch_size_zyx": list(inference.patch_size_zyx)}}, indent=2))
        os.rename(tmp / "model", target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target
