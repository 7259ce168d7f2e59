"""Plan a training run from a labelled dataset: write a flagfile that train.py runs as it is.

    vnet-plan DATA_DIR [--output=plans/NAME.flags] [--memory_gb=8] [--layout=auto]

Reads every case once (vnet_tf.data.fingerprint), prints the fingerprint and each planned
setting with its reason (vnet_tf.training.plan: the rules), and writes the flagfile with the
reasons as comments. An existing output is kept unless --overwrite is given.
"""

from __future__ import annotations

import datetime
import pathlib

from absl import flags

from vnet_tf.commands import cli
from vnet_tf.core.errors import UserError
from vnet_tf.core.folders import atomic_write_text
from vnet_tf.data.cases import FOLDER_LAYOUTS, find_cases
from vnet_tf.data.fingerprint import fingerprint_dataset

flags.DEFINE_enum("layout", "auto", list(FOLDER_LAYOUTS), "dataset layout")
flags.DEFINE_string("output", None, "the flagfile to write (default: plans/<dataset folder name>.flags)")
flags.DEFINE_string("workdir", None, "the run's workdir in the flagfile (default: runs/<dataset folder name>)")
flags.DEFINE_float("memory_gb", 8.0, "budget for a training step's estimated working memory, GiB (sets the patch "
                   "size)")
flags.DEFINE_bool("overwrite", False, "replace an existing output file")
FLAGS = flags.FLAGS
POSITIONAL = {"DATA_DIR": "the labelled dataset folder"}


def flagfile_text(plan, fingerprint_lines, data_dir: str) -> str:
    """The flagfile: a header, then each group of flags under its reason as a comment."""
    day = datetime.date.today().isoformat()
    lines = [f"# Planned by vnet-plan from {data_dir} on {day}.", *[f"# {line}" for line in fingerprint_lines]]
    for reason, values in plan.flag_groups:
        lines += ["", f"# {reason}", *[f"--{k}={v}" for k, v in values.items()]]
    return "\n".join(lines) + "\n"


def main(argv) -> int:
    data_dir, = cli.positionals(argv, *POSITIONAL)
    if not FLAGS.memory_gb > 0:
        raise UserError(f"--memory_gb: expected a positive budget in GiB, got {FLAGS.memory_gb}")
    from vnet_tf.training.plan import plan_run  # pylint: disable=import-outside-toplevel  (imports TensorFlow)
    dataset = find_cases(data_dir, FLAGS.layout)
    output = pathlib.Path(FLAGS.output or f"plans/{dataset.root.name}.flags")
    if output.exists() and not FLAGS.overwrite:
        raise UserError(f"--output {output}: the file exists; pass --overwrite to replace it")
    fingerprint = fingerprint_dataset(dataset)
    plan = plan_run(fingerprint, data_dir, dataset.layout, FLAGS.memory_gb, FLAGS.workdir)
    output.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(output, flagfile_text(plan, fingerprint.lines(), data_dir))
    print("\n".join(fingerprint.lines()))
    print("\nplanned:")
    for reason, values in plan.flag_groups:
        print(f"  {' '.join(f'--{k}={v}' for k, v in values.items()) or '(train.py defaults)'}\n      {reason}")
    print(f"\nwrote {output}; next: python train.py --flagfile={output}")
    return 0


def run() -> None:
    """The ``vnet-plan`` command."""
    cli.run(main)


if __name__ == "__main__":
    run()
