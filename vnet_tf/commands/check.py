"""Check a dataset before training: every case read, every problem reported at once.

    python -m vnet_tf.commands.check DATA_DIR [--layout=msd] [--num_classes=3] [--channels=1]

What is checked: :mod:`vnet_tf.data.check`. Exit status 1 when any case has an error, 2 when
the folder cannot be read as a dataset.
"""

from __future__ import annotations


from absl import flags

from vnet_tf.commands import cli
from vnet_tf.data.cases import LAYOUTS, find_cases
from vnet_tf.data.check import check_dataset

flags.DEFINE_enum("layout", "auto", list(LAYOUTS), "dataset layout")
flags.DEFINE_string("image_glob", None, "with --layout glob, e.g. 'images/*.nii.gz'")
flags.DEFINE_string("label_glob", None, "with --layout glob, e.g. 'labels/*.nii.gz'")
flags.DEFINE_integer("num_classes", None, "declared classes, background included", lower_bound=2)
flags.DEFINE_integer("channels", None, "declared image channels", lower_bound=1)
FLAGS = flags.FLAGS
POSITIONAL = {"DATA_DIR": "the dataset folder"}


def main(argv) -> int:
    data_dir, = cli.positionals(argv, *POSITIONAL)
    dataset = find_cases(data_dir, FLAGS.layout, FLAGS.image_glob, FLAGS.label_glob)
    report = check_dataset(dataset, FLAGS.num_classes, FLAGS.channels)
    print(report.summary())
    return 0 if report.ok else 1


def run() -> None:
    """The ``vnet-check`` command."""
    cli.run(main)


if __name__ == "__main__":
    run()
