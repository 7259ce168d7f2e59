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

from vnet_tf.commands import train_flags  # noqa: F401  (defines the flags, one module per stage)
from vnet_tf.commands import cli

FLAGS = flags.FLAGS
# The modules that define train.py's flags, in the order --helpfull and the flag reference list them.
FLAG_MODULES = tuple(f"vnet_tf.commands.train_flags.{name}" for name in train_flags.STAGES)
# Where each flag goes: the field of TrainConfig (dotted through its nested configs) whose
# default the flag's default must equal (tests/test_settings.py holds them equal, and checks
# that every field is here or in NOT_FLAGS).
FIELD_OF = {
    "data_dir": "data_dir", "layout": "layout", "workdir": "workdir", "cache_dir": "cache_dir",
    "num_classes": "num_classes", "target_spacing": "preprocess.target_spacing_zyx",
    "intensity_normalization": "preprocess.normalization", "clip_percentiles": "preprocess.clip_percentiles",
    "ct_statistics": "preprocess.ct_statistics",
    "patch_size": "patch_size_zyx", "num_folds": "num_folds", "fold": "fold",
    "max_validation_cases": "max_validation_cases",
    "variant": "model.variant", "base_width": "model.base_width", "depth": "model.depth",
    "kernel_size": "model.kernel_size", "convs_left": "model.convs_left", "convs_right": "model.convs_right",
    "activation": "model.activation", "normalization": "model.normalization", "dropout": "model.dropout",
    "recompute": "model.recompute", "architecture": "model.architecture",
    "loss": "loss", "include_background": "include_background", "dice_squared": "dice_squared",
    "batch_dice": "batch_dice", "deep_supervision": "deep_supervision",
    "optimizer": "optimizer.name", "learning_rate": "optimizer.learning_rate", "momentum": "optimizer.momentum",
    "nesterov": "optimizer.nesterov", "weight_decay": "optimizer.weight_decay", "lr_schedule": "optimizer.schedule",
    "lr_decay_steps": "optimizer.decay_steps", "lr_decay_factor": "optimizer.decay_factor",
    "poly_power": "optimizer.poly_power", "warmup_steps": "optimizer.warmup_steps", "clipnorm": "optimizer.clipnorm",
    "weight_average": "weight_average", "augment_on": "augment_on",
    "aug_elastic_p": "augment.elastic_probability", "aug_elastic_sigma": "augment.elastic_sigma",
    "aug_elastic_mesh": "augment.elastic_mesh", "aug_elastic_axes": "augment.elastic_axes",
    "aug_affine_p": "augment.affine_probability", "aug_rotation": "augment.rotation_degrees",
    "aug_scale": "augment.scale_range", "aug_histogram_p": "augment.histogram_probability",
    "aug_flip_axes": "augment.flip_axes", "aug_flip_p": "augment.flip_probability",
    "aug_gamma_p": "augment.gamma_probability", "aug_gamma_inverted_p": "augment.gamma_inverted_probability",
    "aug_gamma_retain_stats": "augment.gamma_retain_stats", "aug_lowres_p": "augment.lowres_probability",
    "aug_lowres_zoom": "augment.lowres_zoom", "aug_brightness_contrast_p": "augment.brightness_contrast_probability",
    "aug_noise_p": "augment.noise_probability", "aug_noise_std": "augment.noise_std",
    "aug_blur_p": "augment.blur_probability",
    "steps": "steps", "time_budget_minutes": "time_budget_minutes", "batch_size": "batch_size",
    "foreground_fraction": "foreground_fraction", "validation_every": "validation_every",
    "checkpoint_every": "checkpoint_every", "log_every": "log_every", "val_overlap": "inference.overlap",
    "mirror_axes": "inference.mirror_axes", "postprocess": "inference.postprocess", "seed": "seed",
    "deterministic": "deterministic", "mixed_precision": "mixed_precision", "strategy": "strategy",
}
# Flags that set no field: the command's own behaviour.
COMMAND_ONLY = {"demo_cases": "the size of the embedded demo dataset, written when --data_dir is empty",
                "progress": "the progress bar"}
# Fields with no flag, and why (the library's callers can set them).
NOT_FLAGS = {
    "model.input_channels": "read from the data", "model.num_classes": "read from the data (or --num_classes)",
    "model.dtype_policy": "set by --mixed_precision",
    "model.norm_groups": "group normalisation's groups; the library's default (8) in the commands",
    "inference.patch_size_zyx": "the run's --patch_size", "inference.batch_size": "evaluate.py --window_batch",
    "inference.blend": "Gaussian blending only", "inference.sigma_scale": "nnU-Net's 1/8 of the patch",
    "inference.min_size": "with --postprocess=min_size, not yet a flag",
    "preprocess.orientation": "LPS, the orientation the inference graph serves",
    "preprocess.image_interpolation": "linear: the inference graph resamples linearly only (another is refused)",
    "preprocess.label_interpolation": "nearest, as the inference graph maps labels back",
    "preprocess.crop_size_zyx": "a centre crop: the library's, for data larger than any patch",
    "preprocess.n4": "N4 bias correction; a run that used it cannot be exported",
    "class_balance": "patch centres drawn over the classes present (nnU-Net's); the library's switch",
    "augment.histogram_landmarks": "the paper's histogram matching: 11 quantile landmarks",
    "augment.anisotropic_scale": "per-axis zoom spread; the library's",
    "augment.label_interpolation": "nearest for labels (one-hot linear + argmax in the library)",
    "augment.fill_mode": "how resampling fills outside the volume; the library's",
    "augment.blur_sigma": "nnU-Net's range", "augment.brightness_range": "nnU-Net's range",
    "augment.contrast_range": "nnU-Net's range", "augment.gamma_range": "nnU-Net's range",
}


def _numbers(name, cast, count=None, positive=False):
    values = getattr(FLAGS, name)
    try:
        parsed = tuple(cast(v) for v in values)
    except ValueError as err:
        raise app.UsageError(f"--{name}: expected {cast.__name__} values, got {','.join(values)}") from err
    if count is not None and len(parsed) != count:
        raise app.UsageError(f"--{name}: expected {count} values, got {len(parsed)} ({','.join(values)})")
    if positive and any(v <= 0 for v in parsed):
        raise app.UsageError(f"--{name}: expected positive values, got {','.join(values)}")
    return parsed


def _optimizer_config():
    from vnet_tf.training.optim import OptimizerConfig  # pylint: disable=import-outside-toplevel
    return OptimizerConfig(
        name=FLAGS.optimizer, learning_rate=FLAGS.learning_rate, momentum=FLAGS.momentum, nesterov=FLAGS.nesterov,
        weight_decay=FLAGS.weight_decay, schedule=FLAGS.lr_schedule, decay_steps=FLAGS.lr_decay_steps,
        decay_factor=FLAGS.lr_decay_factor, poly_power=FLAGS.poly_power, warmup_steps=FLAGS.warmup_steps,
        clipnorm=FLAGS.clipnorm)


def _augment_config(lowres_zoom):
    from vnet_tf.augment.chain import AugmentConfig  # pylint: disable=import-outside-toplevel
    return AugmentConfig(
        histogram_probability=FLAGS.aug_histogram_p, elastic_probability=FLAGS.aug_elastic_p,
        elastic_mesh=_numbers("aug_elastic_mesh", int, 3, True), elastic_sigma=FLAGS.aug_elastic_sigma,
        elastic_axes=tuple(bool(v) for v in _numbers("aug_elastic_axes", int, 3)),
        affine_probability=FLAGS.aug_affine_p, rotation_degrees=_numbers("aug_rotation", float, 3),
        scale_range=_numbers("aug_scale", float, 2, True), noise_probability=FLAGS.aug_noise_p,
        noise_std=FLAGS.aug_noise_std, blur_probability=FLAGS.aug_blur_p,
        brightness_contrast_probability=FLAGS.aug_brightness_contrast_p,
        gamma_probability=FLAGS.aug_gamma_p, gamma_inverted_probability=FLAGS.aug_gamma_inverted_p,
        gamma_retain_stats=FLAGS.aug_gamma_retain_stats,
        lowres_probability=FLAGS.aug_lowres_p, lowres_zoom=lowres_zoom,
        flip_axes=_numbers("aug_flip_axes", int),
        flip_probability=FLAGS.aug_flip_p)


def build_config(data_dir: str):
    """The TrainConfig of the flags (raises app.UsageError naming the flag)."""
    from vnet_tf.inference.config import InferenceConfig  # pylint: disable=import-outside-toplevel
    from vnet_tf.model.vnet import VNetConfig  # pylint: disable=import-outside-toplevel
    from vnet_tf.data.preprocess import PreprocessConfig  # pylint: disable=import-outside-toplevel
    from vnet_tf.training.config import TrainConfig  # pylint: disable=import-outside-toplevel

    patch = _numbers("patch_size", int, 3, positive=True)
    lowres_zoom = _numbers("aug_lowres_zoom", float, 2, True)
    if max(lowres_zoom) > 1:
        raise app.UsageError(f"--aug_lowres_zoom: expected values in (0, 1] (a coarser grid), "
                             f"got {','.join(FLAGS.aug_lowres_zoom)}")
    divisor = 2 ** (FLAGS.depth - 1)
    if any(p % divisor for p in patch):
        raise app.UsageError(f"--patch_size {patch} must be multiples of {divisor} (2**(depth-1))")
    config = TrainConfig(
        data_dir=data_dir, workdir=FLAGS.workdir, cache_dir=FLAGS.cache_dir, layout=FLAGS.layout,
        num_classes=FLAGS.num_classes,
        preprocess=PreprocessConfig(
            target_spacing_zyx=_numbers("target_spacing", float, 3, True) if FLAGS.target_spacing else None,
            normalization=FLAGS.intensity_normalization,
            clip_percentiles=_numbers("clip_percentiles", float, 2) if FLAGS.clip_percentiles else None,
            ct_statistics=_numbers("ct_statistics", float, 4) if FLAGS.ct_statistics else None),
        model=VNetConfig(base_width=FLAGS.base_width, depth=FLAGS.depth, kernel_size=FLAGS.kernel_size,
                         convs_left=_numbers("convs_left", int) or None,
                         convs_right=_numbers("convs_right", int) or None,
                         activation=FLAGS.activation, normalization=FLAGS.normalization,
                         dropout=FLAGS.dropout, variant=FLAGS.variant, recompute=FLAGS.recompute,
                         architecture=FLAGS.architecture),
        loss=FLAGS.loss, include_background=FLAGS.include_background, dice_squared=FLAGS.dice_squared,
        batch_dice=FLAGS.batch_dice, deep_supervision=FLAGS.deep_supervision,
        optimizer=_optimizer_config(),
        weight_average=FLAGS.weight_average,
        augment=_augment_config(lowres_zoom),
        augment_on=FLAGS.augment_on, patch_size_zyx=patch, batch_size=FLAGS.batch_size,
        foreground_fraction=FLAGS.foreground_fraction, steps=FLAGS.steps,
        time_budget_minutes=FLAGS.time_budget_minutes,
        validation_every=FLAGS.validation_every, checkpoint_every=FLAGS.checkpoint_every, log_every=FLAGS.log_every,
        num_folds=FLAGS.num_folds, fold=FLAGS.fold, max_validation_cases=FLAGS.max_validation_cases,
        inference=InferenceConfig(overlap=FLAGS.val_overlap, mirror_axes=_numbers("mirror_axes", int),
                                  postprocess=FLAGS.postprocess),
        seed=FLAGS.seed, deterministic=FLAGS.deterministic, mixed_precision=FLAGS.mixed_precision,
        strategy=FLAGS.strategy)
    try:
        return config.validate()
    except ValueError as err:
        raise app.UsageError(f"invalid flag value: {err}") from err


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
    dice_text = "n/a" if dice is None else ", ".join(f"{cli.class_label(k, names)} {d:.3f}" for k, d in enumerate(dice))
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
