"""Train a V-Net: python train.py [--flagfile=configs/demo.flags] [--flag=value ...].

With no --data_dir it trains on the embedded demo dataset (synthetic, MSD layout, written
once under --cache_dir). Later flags override the flagfile. The run writes its replayable
flags (flags.txt), config.json, model.keras and summary.json into --workdir.
"""

import vnet_tf  # noqa: F401  (first: turns oneDNN on before TensorFlow loads)

import os
import pathlib

from absl import app, flags

from vnet_tf.demo_data import write_demo_dataset
from vnet_tf.runtime import onednn_enabled
from vnet_tf.training import TrainConfig, train

FLAGS = flags.FLAGS
flags.DEFINE_string("data_dir", "", "dataset folder; empty = the embedded demo dataset")
flags.DEFINE_enum("layout", "auto", ["auto", "msd", "nnunet", "promise12"], "dataset layout")
flags.DEFINE_string("workdir", "runs/demo", "where the run writes its outputs")
flags.DEFINE_string("cache_dir", ".cache", "preprocessed-case cache (and the demo dataset)")
flags.DEFINE_list("target_spacing", [], "resample to this spacing in mm, z,y,x; empty = keep")
flags.DEFINE_list("patch_size", ["32", "32", "32"], "training patch, z,y,x voxels")
flags.DEFINE_integer("base_width", 8, "channels of the first stage", lower_bound=1)
flags.DEFINE_integer("depth", 4, "resolution levels", lower_bound=1)
flags.DEFINE_integer("kernel_size", 3, "odd conv kernel edge", lower_bound=1)
flags.DEFINE_enum("normalization", "instance", ["none", "batch", "instance", "group"], "layer norm")
flags.DEFINE_integer("batch_size", 2, "patches per step", lower_bound=1)
flags.DEFINE_integer("steps", 200, "training steps", lower_bound=1)
flags.DEFINE_float("learning_rate", 3e-3, "Adam learning rate", lower_bound=0.0)
flags.DEFINE_integer("seed", 0, "random seed")
flags.DEFINE_integer("demo_cases", 16, "cases in the demo dataset", lower_bound=2)


def _ints(name, values, count=3):
    try:
        parsed = [int(v) for v in values]
    except ValueError as err:
        raise app.UsageError(f"--{name} must be {count} integers, got {','.join(values)}") from err
    if len(parsed) != count or min(parsed) < 1:
        raise app.UsageError(f"--{name} must be {count} positive integers, got {','.join(values)}")
    return tuple(parsed)


def main(argv):
    del argv
    print(f"oneDNN CPU kernels: {'on' if onednn_enabled() else 'off'}")
    patch = _ints("patch_size", FLAGS.patch_size)
    divisor = 2 ** (FLAGS.depth - 1)
    if any(p % divisor for p in patch):
        raise app.UsageError(f"--patch_size {patch} must be multiples of {divisor} (2**(depth-1))")
    spacing = None
    if FLAGS.target_spacing:
        try:
            spacing = tuple(float(v) for v in FLAGS.target_spacing)
        except ValueError as err:
            raise app.UsageError(f"--target_spacing must be 3 numbers, got {FLAGS.target_spacing}") from err
    data_dir = FLAGS.data_dir or str(write_demo_dataset(
        pathlib.Path(FLAGS.cache_dir) / f"demo_data_{FLAGS.demo_cases}", FLAGS.demo_cases))
    if not os.path.isdir(data_dir):
        raise app.UsageError(f"--data_dir {data_dir}: no such folder")
    workdir = pathlib.Path(FLAGS.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "flags.txt").write_text(FLAGS.flags_into_string())
    config = TrainConfig(
        data_dir=data_dir, workdir=str(workdir), cache_dir=FLAGS.cache_dir, layout=FLAGS.layout,
        target_spacing_zyx=spacing, patch_size_zyx=patch, base_width=FLAGS.base_width,
        depth=FLAGS.depth, kernel_size=FLAGS.kernel_size, normalization=FLAGS.normalization,
        batch_size=FLAGS.batch_size, steps=FLAGS.steps, learning_rate=FLAGS.learning_rate,
        seed=FLAGS.seed)
    summary = train(config)
    dice = ", ".join(f"{d:.3f}" for d in summary["validation_dice_per_class"])
    print(f"done: {summary['steps']} steps in {summary['seconds']} s; validation Dice per class "
          f"(background first): [{dice}]; outputs in {workdir.resolve()}")


if __name__ == "__main__":
    app.run(main)
