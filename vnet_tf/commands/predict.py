"""Segment new scans, no labels needed.

    python predict.py --model=runs/hippocampus --input=SCANS --output_dir=OUT
    python predict.py --model=RUN_A,RUN_B --input=a.nii.gz,b.nii.gz --output_dir=OUT   # an ensemble
    python predict.py --model=exports/vnet/1 --input=DICOM_SERIES_FOLDER --output_dir=OUT

--model is a training workdir, several (an ensemble) or an exported SavedModel version folder,
run through the same inference graph as evaluate.py. --input is a folder of scans (volume files,
and sub-folders of DICOM files, one series each) or a comma-separated list of files / DICOM
folders; a model with several input channels takes nnU-Net's <case>_0000, <case>_0001, ...
files. Writes OUT/<case>.nii.gz (or the scan's own format with --output_format=same) on each
scan's own grid, skipping scans already there unless --overwrite. A scan that cannot be read
or segmented is reported by name and the others go on; the exit status is then 1.
"""

import vnet_tf  # noqa: F401  (first: turns oneDNN on before TensorFlow loads)

import pathlib
import sys

from absl import app, flags

from vnet_tf.commands import cli
from vnet_tf.inference.segmentation import POSTPROCESS_MODES

FLAGS = flags.FLAGS
flags.DEFINE_list("model", [], "a training workdir, several (comma-separated: an ensemble), or an exported "
                  "SavedModel version folder (EXPORT_BASE/N)")
flags.DEFINE_enum("which", "best", ["best", "final", "final_raw"], "which model of the workdir")
flags.DEFINE_list("input", [], "a folder of scans, or comma-separated scan files / DICOM series folders")
flags.DEFINE_string("output_dir", "", "where the label maps go")
flags.DEFINE_string("output_format", ".nii.gz", "suffix of the label maps (.nii.gz, .nii, .mha, .nrrd), or "
                    "'same': each scan's own format")
flags.DEFINE_bool("probabilities", False, "also write <case>_probabilities.nii.gz (float32, one component per class)")
flags.DEFINE_bool("overwrite", False, "predict scans whose label map is already in --output_dir again")
flags.DEFINE_float("overlap", None, "sliding-window overlap (default: the run's)")
flags.DEFINE_list("mirror_axes", None, "test-time mirroring axes 0=z,1=y,2=x (default: the run's); 'none' = off")
flags.DEFINE_enum("postprocess", None, list(POSTPROCESS_MODES), "post-processing (default: the run's)")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    for name in ("model", "input", "output_dir"):
        if not getattr(FLAGS, name):
            raise app.UsageError(f"--{name} is required")
    from vnet_tf.core.folders import writable_folder  # pylint: disable=import-outside-toplevel
    from vnet_tf.inference import prediction  # pylint: disable=import-outside-toplevel
    suffix = prediction.check_suffix("" if FLAGS.output_format == "same" else FLAGS.output_format)
    writable_folder(FLAGS.output_dir, "--output_dir")  # before any model is loaded
    for source in FLAGS.model:
        if not pathlib.Path(source).is_dir():
            raise app.UsageError(f"--model {source}: no such folder")
    with cli.output_folder_lock(FLAGS.output_dir, "--output_dir"):  # refused before a model loads
        return _predict(suffix)


def _predict(suffix: str) -> int:
    from vnet_tf.inference import prediction  # pylint: disable=import-outside-toplevel
    from vnet_tf.inference.loading import load_segment  # pylint: disable=import-outside-toplevel
    loaded = load_segment(FLAGS.model, FLAGS.which,
                          cli.inference_overrides(FLAGS.overlap, FLAGS.mirror_axes, FLAGS.postprocess))
    scans = prediction.find_scans(FLAGS.input, loaded.runs[0]["input_channels"])
    print(f"{len(scans)} scan(s) to segment into {pathlib.Path(FLAGS.output_dir).resolve()}")
    report = prediction.predict_scans(scans, loaded.segment, FLAGS.output_dir,
                                      postprocess=loaded.inference.postprocess, min_size=loaded.inference.min_size,
                                      n4=loaded.preprocess.n4, suffix=suffix, probabilities=FLAGS.probabilities,
                                      overwrite=FLAGS.overwrite)
    print(f"{len(report.written)} written, {len(report.skipped)} already there (--overwrite predicts them again), "
          f"{len(report.failed)} failed")
    if report.failed:
        print("failed:\n" + "\n".join(f"  {line}" for line in report.failed), file=sys.stderr)
        return 1
    return 0


def run() -> None:
    """The ``vnet-predict`` command (and ``python predict.py``)."""
    cli.run(main)


if __name__ == "__main__":
    run()
