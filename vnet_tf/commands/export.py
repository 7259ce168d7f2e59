"""Export a training run as a SavedModel for TF Serving.

    python export.py --workdir=runs/hippocampus --export_base=exports/hippocampus [--version=N]
    python export.py --workdir=runs/fold0,runs/fold1,... --export_base=...   # one ensemble

Writes EXPORT_BASE/<version>/ (the next free integer by default) atomically, with the
signatures `serving_default` (the scan's volume + spacing + direction -> labels),
`predict_probabilities` and `predict_patch`, and a warm-up request in assets.extra/. See
docs/how-to/deploy.md.
"""

import vnet_tf  # noqa: F401  (first: turns oneDNN on before TensorFlow loads)

import pathlib
import sys

from absl import app, flags

from vnet_tf.commands import cli
from vnet_tf.inference.config import DEFAULT_MAX_VOXELS

FLAGS = flags.FLAGS
flags.DEFINE_list("workdir", [], "the training workdir to export; several, comma-separated, export as one "
                  "ensemble (probabilities averaged; equal preprocessing, patch size and classes needed)")
flags.DEFINE_string("export_base", "", "the model base folder TF Serving watches")
flags.DEFINE_integer("version", None, "version folder number (default: the next free one)", lower_bound=1)
flags.DEFINE_enum("which", "best", ["best", "final"], "best validation checkpoint or the latest one")
flags.DEFINE_list("mirror_axes", None, "override the run's test-time mirroring axes ('none' = off)")
flags.DEFINE_float("overlap", None, "override the run's sliding-window overlap", lower_bound=0.0, upper_bound=0.95)
flags.DEFINE_integer("max_voxels", DEFAULT_MAX_VOXELS, "the largest volume (voxels at the run's spacing) one request may "
                     "segment; larger requests are refused with INVALID_ARGUMENT instead of running out of memory",
                     lower_bound=1)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    for name in ("workdir", "export_base"):
        if not getattr(FLAGS, name):
            raise app.UsageError(f"--{name} is required")
    for workdir in FLAGS.workdir:
        if not pathlib.Path(workdir).is_dir():
            raise app.UsageError(f"--workdir {workdir}: no such folder")
    overrides = cli.inference_overrides(FLAGS.overlap, FLAGS.mirror_axes)
    from vnet_tf.serving.exporter import export_run  # pylint: disable=import-outside-toplevel
    try:
        with cli.output_folder_lock(FLAGS.export_base, "--export_base"):  # refused before a model loads
            target = export_run(FLAGS.workdir, FLAGS.export_base, FLAGS.version, FLAGS.which, overrides,
                                warn=lambda message: print(f"note: {message}", file=sys.stderr),
                                max_voxels=FLAGS.max_voxels)
    except (FileNotFoundError, FileExistsError, ValueError) as err:
        raise app.UsageError(str(err)) from err
    print(f"exported {','.join(FLAGS.workdir)} ({FLAGS.which}) to {target.resolve()}")


def run() -> None:
    """The ``vnet-export`` command (and ``python export.py``)."""
    cli.run(main)


if __name__ == "__main__":
    run()
