"""Plan a training run from a labelled dataset: write a flagfile that train.py runs as it is.

    vnet-plan DATA_DIR [--output plans/NAME.flags] [--memory_gb 8] [--layout auto]

Reads every case once (vnet_tf.data.fingerprint), prints the fingerprint and each planned
setting with its reason (vnet_tf.training.plan: the rules), and writes the flagfile with the
reasons as comments. An existing output is kept unless --overwrite is given.
"""

from __future__ import annotations

import argparse
import datetime
import pathlib
import sys
from typing import Optional, Sequence

from vnet_tf.core.errors import describe
from vnet_tf.core.folders import atomic_write_text
from vnet_tf.data.cases import LAYOUTS, find_cases
from vnet_tf.data.fingerprint import fingerprint_dataset


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vnet-plan", description=__doc__.splitlines()[0])
    parser.add_argument("data_dir", help="the labelled dataset folder")
    parser.add_argument("--layout", default="auto", choices=[l for l in LAYOUTS if l != "glob"], help="dataset layout")
    parser.add_argument("--output", help="the flagfile to write (default: plans/<dataset folder name>.flags)")
    parser.add_argument("--workdir", help="the run's workdir in the flagfile (default: runs/<dataset folder name>)")
    parser.add_argument("--memory_gb", type=float, default=8.0,
                        help="budget for a training step's estimated working memory, GiB (sets the patch size)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    return parser


def flagfile_text(plan, fingerprint_lines, data_dir: str) -> str:
    """The flagfile: a header, then each group of flags under its reason as a comment."""
    day = datetime.date.today().isoformat()
    lines = [f"# Planned by vnet-plan from {data_dir} on {day}.", *[f"# {line}" for line in fingerprint_lines]]
    for reason, values in plan.flag_groups:
        lines += ["", f"# {reason}", *[f"--{k}={v}" for k, v in values.items()]]
    return "\n".join(lines) + "\n"


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.memory_gb <= 0:
        parser.exit(2, f"error: --memory_gb: expected a positive budget in GiB, got {args.memory_gb}\n")
    from vnet_tf.training.plan import plan_run  # pylint: disable=import-outside-toplevel  (imports TensorFlow)
    try:
        dataset = find_cases(args.data_dir, args.layout)
        output = pathlib.Path(args.output or f"plans/{dataset.root.name}.flags")
        if output.exists() and not args.overwrite:
            parser.exit(2, f"error: --output {output}: the file exists; pass --overwrite to replace it\n")
        fingerprint = fingerprint_dataset(dataset)
        plan = plan_run(fingerprint, args.data_dir, dataset.layout, args.memory_gb, args.workdir)
        output.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(output, flagfile_text(plan, fingerprint.lines(), args.data_dir))
    except (ValueError, OSError) as err:
        if describe(err) is None:
            raise
        parser.exit(2, f"error: {describe(err)}\n")
    print("\n".join(fingerprint.lines()))
    print("\nplanned:")
    for reason, values in plan.flag_groups:
        print(f"  {' '.join(f'--{k}={v}' for k, v in values.items()) or '(train.py defaults)'}\n      {reason}")
    print(f"\nwrote {output}; next: python train.py --flagfile={output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
