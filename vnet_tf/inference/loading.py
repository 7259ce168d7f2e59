"""What segments a scan, loaded from disk: a training workdir's model (or several, as an
ensemble) wrapped in :class:`vnet_tf.inference.segmenter.Segmenter`, or an exported SavedModel, which
holds that same graph. Either comes back as a :data:`vnet_tf.inference.segmentation.SegmentFunction`
with the run's settings; ``evaluate.py`` scores through it.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
import sys
from typing import Callable, Optional, Sequence

import tensorflow as tf

from vnet_tf.core.errors import UserError
from vnet_tf.inference.ensemble import MeanOfModels, Member, check_members
from vnet_tf.inference.segmenter import Segmenter
from vnet_tf.core.io import PathLike
from vnet_tf.inference.signatures import RUN_FILE, SIGNATURES
from vnet_tf.inference.run_folder import restore_model, run_configs

# Inference settings that act on the host, after the graph: a SavedModel's can be changed.
HOST_SETTINGS = ("postprocess", "min_size")


@dataclasses.dataclass
class Loaded:
    segment: Callable          # a SegmentFunction
    preprocess: object         # PreprocessConfig
    inference: object          # InferenceConfig (with the overrides)
    runs: list                 # the runs' settings (config.json, or the export's record)


def is_export(path: PathLike) -> bool:
    return (pathlib.Path(path) / "saved_model.pb").is_file()


def load_segment(paths: Sequence[PathLike], which: str = "best", overrides: Optional[dict] = None,
                 warn: Callable[[str], None] = lambda m: print(f"note: {m}", file=sys.stderr)) -> Loaded:
    """The segment function of one exported SavedModel, or of one workdir or several (an
    ensemble), with ``overrides`` of the run's inference settings. Raises ``ValueError`` /
    ``FileNotFoundError`` naming the folder."""
    paths, overrides = [str(p) for p in paths], dict(overrides or {})
    exported = [p for p in paths if is_export(p)]
    if exported:
        if len(paths) > 1:
            raise UserError(f"{exported[0]}: an exported SavedModel is scored alone; export the runs together as "
                            f"one ensemble, or give their training workdirs")
        graph_settings = sorted(set(overrides) - set(HOST_SETTINGS))
        if graph_settings:
            raise UserError(f"{paths[0]}: an exported SavedModel keeps the settings it was exported with; "
                            f"{', '.join(graph_settings)} cannot change them (export again with them, or give "
                            f"the training workdir)")
        segment, run = load_exported(paths[0])
        preprocess, inference = run_configs(run)
        return Loaded(segment, preprocess, dataclasses.replace(inference, **overrides).validate(), [run])
    model, preprocess, inference, runs = load_workdirs(paths, which, overrides, warn)
    segmenter = Segmenter(model, preprocess, inference, runs[0]["input_channels"], runs[0]["num_classes"])
    return Loaded(segmenter_segment(segmenter), preprocess, inference, runs)


def load_workdirs(paths: Sequence[PathLike], which: str = "best", overrides: Optional[dict] = None,
                  warn: Callable[[str], None] = lambda m: None):
    """``(model, preprocess, inference, runs)`` of one workdir, or of several as one ensemble
    (:class:`MeanOfModels`; they must share preprocessing, patch size and classes, the other
    inference settings are the first run's and ``warn`` is told which ones differed)."""
    restored = [restore_model(p, which) for p in paths]
    members = [Member(str(p), *run_configs(run), run["num_classes"]) for p, (_, run) in zip(paths, restored)]
    differing = check_members(members)
    if differing:
        warn(f"the ensemble's models differ in {', '.join(differing)}; using those of {paths[0]}")
    inference = dataclasses.replace(members[0].inference, **dict(overrides or {})).validate()
    models = [m for m, _ in restored]
    model = models[0] if len(models) == 1 else MeanOfModels(models)
    return model, members[0].preprocess, inference, [r for _, r in restored]


def load_exported(version_dir: PathLike):
    """``(segment, run)`` of an exported SavedModel: its ``serving_default`` and
    ``predict_probabilities`` signatures as a :data:`vnet_tf.inference.segmentation.SegmentFunction`,
    and the run's settings recorded at export."""
    version_dir = pathlib.Path(version_dir)
    run_file = version_dir / "assets.extra" / RUN_FILE
    if not run_file.is_file():
        raise FileNotFoundError(f"{run_file}: missing; was {version_dir} written by export.py?")
    try:
        run = json.loads(run_file.read_text())
        loaded = tf.saved_model.load(str(version_dir))
    except (ValueError, OSError, tf.errors.OpError) as err:
        raise UserError(f"{version_dir}: expected a SavedModel written by export.py; could not load it "
                        f"({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''})") from err
    missing = [name for name in SIGNATURES if name not in loaded.signatures]
    if missing:
        raise UserError(f"{version_dir}: expected the signatures {', '.join(SIGNATURES)}; "
                        f"{', '.join(missing)} missing (exported by an older version? export it again)")
    return saved_model_segment(loaded), run


def request_error(err: tf.errors.InvalidArgumentError) -> str:
    """The graph's own words for a refused input (``input volume: ...``), without
    TensorFlow's node and stack lines."""
    text = err.message
    if "assertion failed: [" in text:
        text = text.split("assertion failed: [", 1)[1].split("\n", 1)[0]
        text = text.rstrip("]").replace("] [", " ")
    return text.strip()


def _refusing(call):
    def run(*args, **kwargs):
        try:
            return call(*args, **kwargs)
        except tf.errors.InvalidArgumentError as err:
            raise UserError(request_error(err)) from None
    return run


def saved_model_segment(loaded):
    """A segment function over a loaded SavedModel's signatures."""
    @_refusing
    def segment(volume, spacing, direction, probabilities=False):
        name = "predict_probabilities" if probabilities else "serving_default"
        out = loaded.signatures[name](volume=tf.constant(volume, tf.float32), spacing=tf.constant(spacing, tf.float32),
                                      direction=tf.constant(direction, tf.float32))
        return {k: v.numpy() for k, v in out.items() if k != "postprocess"}
    return segment


def segmenter_segment(segmenter: Segmenter):
    """A segment function over a :class:`Segmenter` (a workdir's model, not exported); a
    refused input raises ``ValueError`` with the graph's message."""
    @_refusing
    def segment(volume, spacing, direction, probabilities=False):
        function = segmenter.segment if probabilities else segmenter.segment_labels
        out = function(tf.constant(volume, tf.float32), tf.constant(spacing, tf.float32),
                       tf.constant(direction, tf.float32))
        return {k: v.numpy() for k, v in out.items()}
    return segment
