"""Train a V-Net: python train.py [--flagfile=configs/X.flags] [--flag=value ...].

With no --data_dir it trains on the embedded demo dataset (synthetic, MSD layout, written
once under --cache_dir). Later flags override the flagfile. Rerunning the same command
resumes from the workdir's latest checkpoint. Outputs (in --workdir): flags.txt (replayable
with --flagfile), config.json, checkpoint.npz, best.npz, tensorboard/, summary.json
(docs/reference/workdir.md).
"""

import vnet_tf  # noqa: F401  (first: turns oneDNN on before TensorFlow loads)

import pathlib

from absl import app, flags

from vnet_tf.commands import cli, setting_flags
from vnet_tf.core.labels import class_label
from vnet_tf.core.settings import settings
from vnet_tf.training.config import TrainConfig  # no TensorFlow at import

FLAGS = flags.FLAGS
# train.py's flags by stage, in the order --helpfull and the flag reference list them: each
# stage's absl module name and its title.
FLAG_GROUPS = {
    f"{__name__}.data": "Data", f"{__name__}.model": "Model", f"{__name__}.loss": "Loss and optimiser",
    f"{__name__}.augmentation": "Augmentation", f"{__name__}.run": "The run",
}
FLAG_MODULES = tuple(FLAG_GROUPS)
SETTINGS = settings(TrainConfig)
setting_flags.define(SETTINGS, {module.rsplit(".", 1)[1]: module for module in FLAG_MODULES})
# Where each flag goes, and the settings with no flag and why: both from TrainConfig's fields.
FIELD_OF = {row.flag.name: row.path for row in SETTINGS if row.flag is not None}
NOT_FLAGS = {row.path: row.why for row in SETTINGS if row.flag is None}
# Flags that set no setting: the command's own behaviour.
COMMAND_ONLY = {"demo_cases": "the size of the embedded demo dataset, written when --data_dir is empty",
                "progress": "the progress bar"}
flags.DEFINE_integer("demo_cases", 16, "cases in the demo dataset", lower_bound=2, module_name=FLAG_MODULES[0])
flags.DEFINE_bool("progress", True, "show a progress bar", module_name=FLAG_MODULES[-1])


def build_config(data_dir: str) -> TrainConfig:
    """The TrainConfig of the flags, ``data_dir`` in place of --data_dir (the demo dataset's
    folder where that is empty); raises app.UsageError naming the flag."""
    config = setting_flags.config_from_flags(TrainConfig, SETTINGS, data_dir=data_dir)
    try:
        return config.validate()
    except ValueError as err:
        raise app.UsageError(f"invalid flag value: {setting_flags.flag_words(str(err), SETTINGS)}") from err


def demo_data_dir() -> pathlib.Path:
    """Where the embedded demo dataset is written (and read again by later runs)."""
    return pathlib.Path(FLAGS.cache_dir) / f"demo_data_{FLAGS.demo_cases}"


def next_command(workdir: pathlib.Path, data_dir: str) -> str:
    """What to type next: score the run's held-out fold (or, trained on every case, export it)."""
    if FLAGS.fold < 0:
        return f"next, export it for TF Serving: python export.py --workdir={workdir} --export_base=exports/{workdir.name}"
    return (f"next, score the held-out fold: python evaluate.py --model={workdir} --data_dir={data_dir} "
            f"--fold={FLAGS.fold} --num_folds={FLAGS.num_folds} --output_dir={workdir / 'eval'}")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    from vnet_tf.data.demo_data import write_demo_dataset  # pylint: disable=import-outside-toplevel
    from vnet_tf.core.folders import writable_folder  # pylint: disable=import-outside-toplevel
    from vnet_tf.core.runtime import onednn_enabled  # pylint: disable=import-outside-toplevel
    from vnet_tf.training.loop import train  # pylint: disable=import-outside-toplevel

    build_config(FLAGS.data_dir or "demo")  # every flag checked before any work
    if FLAGS.data_dir and not pathlib.Path(FLAGS.data_dir).is_dir():
        raise app.UsageError(f"--data_dir {FLAGS.data_dir}: no such folder")
    print(f"oneDNN CPU kernels: {'on' if onednn_enabled() else 'off'}")
    if not FLAGS.data_dir:  # the demo dataset is written there
        writable_folder(FLAGS.cache_dir, "--cache_dir")
    data_dir = FLAGS.data_dir or str(write_demo_dataset(demo_data_dir(), FLAGS.demo_cases))
    config = build_config(data_dir)
    workdir = pathlib.Path(FLAGS.workdir)
    summary = train(config, progress=FLAGS.progress, replay_flags=FLAGS.flags_into_string())
    if summary.get("already_finished"):
        more = (f"--time_budget_minutes over {FLAGS.time_budget_minutes:g}" if summary["stopped_by_budget"]
                else f"--steps over {summary['steps']}")
        print(f"nothing to do: the run in {workdir.resolve()} is finished (step {summary['steps']}); its outputs "
              f"are unchanged. To train it further, pass {more}.")
        return 0
    dice = summary["validation_dice_per_class"]
    from vnet_tf.data.cases import find_cases  # pylint: disable=import-outside-toplevel
    names = find_cases(data_dir, FLAGS.layout).labels or {}
    dice_text = "n/a" if dice is None else ", ".join(f"{class_label(k, names)} {d:.3f}" for k, d in enumerate(dice))
    print(f"done: step {summary['steps']} ({summary['steps_per_second']} steps/s this run, peak memory "
          f"{summary['peak_memory_mb']} MB); validation Dice per class: {dice_text}; "
          f"outputs in {workdir.resolve()}")
    print(next_command(workdir, data_dir))
    if summary["stopped_by_budget"]:
        print(f"the time budget ({FLAGS.time_budget_minutes:g} min, {summary['elapsed_seconds']:.0f} s used) "
              f"set the run's length: {summary['steps']} of at most {FLAGS.steps} steps; the same length without "
              f"a budget: --steps={summary['steps']} --time_budget_minutes=0")


def run() -> None:
    """The ``vnet-train`` command (and ``python train.py``)."""
    cli.run(main)


if __name__ == "__main__":
    run()
