"""Check a dataset before training: every case read, every problem reported at once.

    python -m vnet_tf.commands.check DATA_DIR [--layout msd] [--num_classes 3] [--channels 1]

What is checked: :mod:`vnet_tf.data.check`. Exit status 1 when any case has an error, 2 when
the folder cannot be read as a dataset.
"""

from __future__ import annotations

import argparse
import sys
from typing import Optional, Sequence

from vnet_tf.core.errors import describe
from vnet_tf.data.cases import LAYOUTS, find_cases
from vnet_tf.data.check import __doc__ as check_doc
from vnet_tf.data.check import check_dataset


def build_parser() -> argparse.ArgumentParser:
    """The command line of ``python -m vnet_tf.commands.check``."""
    parser = argparse.ArgumentParser(prog="python -m vnet_tf.commands.check", description=check_doc,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("data_dir", help="the dataset folder")
    parser.add_argument("--layout", default="auto", choices=LAYOUTS, help="dataset layout")
    parser.add_argument("--image_glob", help="with --layout glob, e.g. 'images/*.nii.gz'")
    parser.add_argument("--label_glob", help="with --layout glob, e.g. 'labels/*.nii.gz'")
    parser.add_argument("--num_classes", type=int, help="declared classes, background included")
    parser.add_argument("--channels", type=int, help="declared image channels")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        dataset = find_cases(args.data_dir, args.layout, args.image_glob, args.label_glob)
        report = check_dataset(dataset, args.num_classes, args.channels)
    except (ValueError, OSError) as err:
        if describe(err) is None:
            raise
        print(f"error: {describe(err)}", file=sys.stderr)
        return 2
    print(report.summary())
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
