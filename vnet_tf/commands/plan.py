"""Plan a training run from a labelled dataset: write a flagfile that train.py runs as it is.

    vnet-plan DATA_DIR [--time_budget_minutes=M] [--output=plans/NAME.flags] [--memory_gb=8] [--layout=auto]

Reads every case once (vnet_tf.data.fingerprint), prints the fingerprint and each planned
setting with its reason (vnet_tf.training.plan: the rules), and writes the flagfile with the
reasons as comments. With --time_budget_minutes it measures training steps of candidate grids
and network widths on this machine (about two minutes) and plans a run that gets the steps it
needs within the budget (vnet_tf.training.time_plan). An existing output is kept unless
--overwrite is given.
"""

from __future__ import annotations

import datetime
import pathlib

from absl import flags

from vnet_tf.commands import cli
from vnet_tf.core.errors import UserError
from vnet_tf.core.folders import atomic_write_text
from vnet_tf.core.runtime import machine_description
from vnet_tf.data.cases import FOLDER_LAYOUTS, find_cases
from vnet_tf.data.fingerprint import fingerprint_dataset

flags.DEFINE_enum("layout", "auto", list(FOLDER_LAYOUTS), "dataset layout")
flags.DEFINE_string("output", None, "the flagfile to write (default: plans/<dataset folder name>.flags)")
flags.DEFINE_string("workdir", None, "the run's workdir in the flagfile (default: runs/<dataset folder name>)")
flags.DEFINE_float("memory_gb", 8.0, "budget for a training step's estimated working memory, GiB (sets the patch "
                   "size)")
flags.DEFINE_float("time_budget_minutes", 0.0, "plan for this much training time on this machine, measuring "
                   "step times (0: the memory plan with the recipe's 115-minute budget)")
flags.DEFINE_bool("overwrite", False, "replace an existing output file")
FLAGS = flags.FLAGS
GRID_CASES = 12  # labels the grid cost is measured on, spread over the dataset
POSITIONAL = {"DATA_DIR": "the labelled dataset folder"}


def flagfile_text(plan, fingerprint_lines, data_dir: str, machine: str = "") -> str:
    """The flagfile: a header, then each group of flags under its reason as a comment."""
    day = datetime.date.today().isoformat()
    lines = [f"# Planned by vnet-plan from {data_dir} on {day}.", *[f"# {line}" for line in fingerprint_lines]]
    if machine:
        lines.append(f"# step times measured on {machine}")
    for reason, values in plan.flag_groups:
        lines += ["", f"# {reason}", *[f"--{k}={v}" for k, v in values.items()]]
    return "\n".join(lines) + "\n"


def main(argv) -> int:
    data_dir, = cli.positionals(argv, *POSITIONAL)
    if not FLAGS.memory_gb > 0:
        raise UserError(f"--memory_gb: expected a positive budget in GiB, got {FLAGS.memory_gb}")
    if not FLAGS.time_budget_minutes >= 0:
        raise UserError(f"--time_budget_minutes: expected minutes >= 0 (0: no time plan), got {FLAGS.time_budget_minutes}")
    from vnet_tf.training.plan import plan_run  # pylint: disable=import-outside-toplevel  (imports TensorFlow)
    dataset = find_cases(data_dir, FLAGS.layout)
    output = pathlib.Path(FLAGS.output or f"plans/{dataset.root.name}.flags")
    if output.exists() and not FLAGS.overwrite:
        raise UserError(f"--output {output}: the file exists; pass --overwrite to replace it")
    fingerprint = fingerprint_dataset(dataset)
    timing = _timing(dataset, fingerprint, FLAGS.time_budget_minutes) if FLAGS.time_budget_minutes else None
    plan = plan_run(fingerprint, data_dir, dataset.layout, FLAGS.memory_gb, FLAGS.workdir, timing)
    output.parent.mkdir(parents=True, exist_ok=True)
    machine = machine_description() if timing is not None else ""
    atomic_write_text(output, flagfile_text(plan, fingerprint.lines(), data_dir, machine))
    print("\n".join(fingerprint.lines()))
    print("\nplanned:")
    for reason, values in plan.flag_groups:
        print(f"  {' '.join(f'--{k}={v}' for k, v in values.items()) or '(train.py defaults)'}\n      {reason}")
    print(f"\nwrote {output}; next: python train.py --flagfile={output}")
    return 0


def _timing(dataset, fingerprint, minutes: float):
    """The time plan's measurements on this machine: training steps (vnet_tf.training.step_timing)
    and the labels' Dice kept on a grid (vnet_tf.data.grid_cost, on GRID_CASES cases spread over the dataset)."""
    import numpy as np  # pylint: disable=import-outside-toplevel
    from vnet_tf.core.io import read_image  # pylint: disable=import-outside-toplevel
    from vnet_tf.core.settings import build  # pylint: disable=import-outside-toplevel
    from vnet_tf.data.grid_cost import grid_dice  # pylint: disable=import-outside-toplevel
    from vnet_tf.training.config import TrainConfig  # pylint: disable=import-outside-toplevel
    from vnet_tf.training.plan import Timing  # pylint: disable=import-outside-toplevel
    from vnet_tf.training.step_timing import seconds_per_step  # pylint: disable=import-outside-toplevel
    classes = len(fingerprint.class_voxels)
    cases = dataset.cases
    picked = [cases[int(i)] for i in np.unique(np.linspace(0, len(cases) - 1, min(GRID_CASES, len(cases))).round())]
    labels = [read_image(case.label) for case in picked]

    def dice(spacing):
        return float(np.mean([grid_dice(label, spacing, classes) for label in labels]))

    def seconds(values):
        config = build(TrainConfig, {**values, "data_dir": str(dataset.root), "workdir": "unused"})
        spacing = config.preprocess.target_spacing_zyx or "the scans'"
        print(f"timing a training step: patch {config.patch_size_zyx} at {spacing} mm, width {config.model.base_width} ...",
              end=" ", flush=True)
        measured = seconds_per_step(config, fingerprint.channels, classes)
        print(f"{measured:.3g} s", flush=True)
        return measured

    return Timing(minutes, seconds, dice)


def run() -> None:
    """The ``vnet-plan`` command."""
    cli.run(main)


if __name__ == "__main__":
    run()
