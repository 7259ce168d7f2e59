"""Train a V-Net: python train.py [--flagfile=configs/X.flags] [--flag=value ...].

With no --data_dir it trains on the embedded demo dataset (synthetic, MSD layout, written
once under --cache_dir). Later flags override the flagfile. Rerunning the same command
resumes from the workdir's latest checkpoint. Outputs (in --workdir): flags.txt (replayable
with --flagfile), config.json, checkpoint.npz, best.npz / best.keras, model.keras,
tensorboard/, summary.json.
"""

import vnet_tf  # noqa: F401  (first: turns oneDNN on before TensorFlow loads)

import pathlib

from absl import app, flags

from vnet_tf.core import cli

FLAGS = flags.FLAGS
# data
flags.DEFINE_string("data_dir", "", "dataset folder; empty = the embedded demo dataset")
flags.DEFINE_enum("layout", "auto", ["auto", "msd", "nnunet", "promise12"], "dataset layout")
flags.DEFINE_string("workdir", "runs/demo", "where the run writes its outputs")
flags.DEFINE_string("cache_dir", ".cache", "preprocessed-case cache (and the demo dataset)")
flags.DEFINE_integer("demo_cases", 16, "cases in the demo dataset", lower_bound=2)
flags.DEFINE_integer("num_classes", 0, "classes, background included; 0 = those dataset.json declares, else "
                     "the label values found, which must then be 0..K-1 without gaps", lower_bound=0)
flags.DEFINE_list("target_spacing", [], "resample to this spacing in mm, z,y,x; empty = keep")
flags.DEFINE_enum("intensity_normalization", "zscore", ["none", "zscore", "zscore_foreground", "rescale"],
                  "per-case intensity normalisation")
flags.DEFINE_list("clip_percentiles", [], "clip intensities to these percentiles first, e.g. 0.5,99.5")
flags.DEFINE_list("patch_size", ["32", "32", "32"], "training patch, z,y,x voxels")
flags.DEFINE_integer("num_folds", 5, "cross-validation folds (case-id hash)", lower_bound=2)
flags.DEFINE_integer("fold", 0, "the validation fold; -1 = train on every case, no validation "
                     "(the final model; the last weights are also best.keras)", lower_bound=-1)
flags.DEFINE_integer("max_validation_cases", 0, "validate on at most this many cases (0 = all)", lower_bound=0)
# model
flags.DEFINE_enum("variant", "paper", ["paper", "caffe"], "V-Net layout")
flags.DEFINE_integer("base_width", 8, "channels of the first stage", lower_bound=1)
flags.DEFINE_integer("depth", 4, "resolution levels", lower_bound=1)
flags.DEFINE_integer("kernel_size", 3, "odd conv kernel edge", lower_bound=1)
flags.DEFINE_list("convs_left", [], "convs per left stage (empty = the variant's default)")
flags.DEFINE_list("convs_right", [], "convs per right stage (empty = the variant's default)")
flags.DEFINE_enum("activation", "prelu", ["prelu", "relu", "elu"], "activation")
flags.DEFINE_enum("normalization", "instance", ["none", "batch", "instance", "group"], "layer normalisation")
flags.DEFINE_float("dropout", 0.0, "channel dropout after every stage", lower_bound=0.0, upper_bound=0.99)
# loss and optimiser
flags.DEFINE_enum("loss", "dice_ce", ["dice", "dice_ce"], "the paper's Dice loss, or Dice + cross-entropy")
flags.DEFINE_bool("include_background", False, "count the background class in the Dice loss")
flags.DEFINE_bool("dice_squared", True, "the paper's sum p^2 + sum g^2 Dice denominator (false: sum p + sum g)")
flags.DEFINE_bool("batch_dice", False, "one Dice over the whole batch (nnU-Net) instead of one per sample")
flags.DEFINE_integer("deep_supervision", 0, "softmax heads on right stages 1..N, trained only (0 = off)",
                     lower_bound=0)
flags.DEFINE_enum("optimizer", "adam", ["sgd", "adam", "adamw"], "optimiser")
flags.DEFINE_float("learning_rate", 3e-3, "initial learning rate", lower_bound=0.0)
flags.DEFINE_float("momentum", 0.99, "SGD momentum", lower_bound=0.0)
flags.DEFINE_bool("nesterov", False, "Nesterov momentum (SGD)")
flags.DEFINE_float("weight_decay", 0.0, "weight decay", lower_bound=0.0)
flags.DEFINE_enum("lr_schedule", "constant", ["constant", "step", "poly", "cosine"], "learning-rate schedule")
flags.DEFINE_integer("lr_decay_steps", 25000, "step schedule: decay every this many steps", lower_bound=0)
flags.DEFINE_float("lr_decay_factor", 0.1, "step schedule: multiply by this")
flags.DEFINE_float("poly_power", 0.9, "poly schedule power")
flags.DEFINE_integer("warmup_steps", 0, "linear warm-up steps", lower_bound=0)
flags.DEFINE_float("clipnorm", 0.0, "clip each gradient to this norm (0 = off)", lower_bound=0.0)
flags.DEFINE_float("weight_average", 0.0, "momentum of a moving average of the weights, used for validation "
                   "and the saved models (0 = off, e.g. 0.999)")
# augmentation
flags.DEFINE_enum("augment_on", "device", ["device", "host"], "augment inside the training step or in tf.data")
flags.DEFINE_float("aug_elastic_p", 0.0, "B-spline elastic deformation probability", lower_bound=0.0, upper_bound=1.0)
flags.DEFINE_float("aug_elastic_sigma", 15.0, "control-point displacement sigma, voxels", lower_bound=0.0)
flags.DEFINE_list("aug_elastic_mesh", ["2", "2", "2"], "B-spline mesh cells z,y,x")
flags.DEFINE_list("aug_elastic_axes", ["1", "1", "1"], "displaced components z,y,x (0 = off)")
flags.DEFINE_float("aug_affine_p", 0.0, "random rotation/scaling probability", lower_bound=0.0, upper_bound=1.0)
flags.DEFINE_list("aug_rotation", ["15", "15", "15"], "max rotation degrees about z,y,x")
flags.DEFINE_list("aug_scale", ["0.85", "1.15"], "zoom range")
flags.DEFINE_float("aug_histogram_p", 0.0, "histogram matching to another training volume, probability", lower_bound=0.0, upper_bound=1.0)
flags.DEFINE_list("aug_flip_axes", [], "axes to mirror (0=z,1=y,2=x)")
flags.DEFINE_float("aug_flip_p", 0.5, "mirror probability per axis", lower_bound=0.0, upper_bound=1.0)
flags.DEFINE_float("aug_gamma_p", 0.0, "gamma probability", lower_bound=0.0, upper_bound=1.0)
flags.DEFINE_float("aug_gamma_inverted_p", 0.0, "gamma on the inverted intensities, probability (nnU-Net: 0.1)",
                   lower_bound=0.0, upper_bound=1.0)
flags.DEFINE_bool("aug_gamma_retain_stats", False, "both gamma transforms restore each sample's mean and std "
                  "(nnU-Net does)")
flags.DEFINE_float("aug_lowres_p", 0.0, "simulated low resolution probability (nnU-Net: 0.25)",
                   lower_bound=0.0, upper_bound=1.0)
flags.DEFINE_list("aug_lowres_zoom", ["0.5", "1"], "simulated low resolution: grid zoom range, within (0, 1]")
flags.DEFINE_float("aug_brightness_contrast_p", 0.0, "brightness/contrast probability", lower_bound=0.0, upper_bound=1.0)
flags.DEFINE_float("aug_noise_p", 0.0, "Gaussian noise probability", lower_bound=0.0, upper_bound=1.0)
flags.DEFINE_float("aug_noise_std", 0.1, "max noise std", lower_bound=0.0)
flags.DEFINE_float("aug_blur_p", 0.0, "Gaussian blur probability", lower_bound=0.0, upper_bound=1.0)
# schedule of the run
flags.DEFINE_integer("steps", 200, "training steps", lower_bound=1)
flags.DEFINE_float("time_budget_minutes", 0.0, "stop training when this much wall time (over resumes) is "
                   "spent, the schedule planned to end then; --steps becomes an upper bound (0 = off)",
                   lower_bound=0.0)
flags.DEFINE_integer("batch_size", 2, "patches per step (global, split over replicas)", lower_bound=1)
flags.DEFINE_float("foreground_fraction", 1 / 3, "patches centred on foreground", lower_bound=0.0, upper_bound=1.0)
flags.DEFINE_integer("validation_every", 100, "validate every this many steps", lower_bound=1)
flags.DEFINE_integer("checkpoint_every", 50, "checkpoint every this many steps", lower_bound=1)
flags.DEFINE_integer("log_every", 10, "TensorBoard's steps/s and patches/s every this many steps", lower_bound=1)
flags.DEFINE_float("val_overlap", 0.25, "sliding-window overlap at validation", lower_bound=0.0, upper_bound=0.95)
flags.DEFINE_list("mirror_axes", [], "test-time mirroring axes, stored for evaluate.py")
flags.DEFINE_enum("postprocess", "none", ["none", "largest", "min_size"], "post-processing, stored for evaluate.py")
flags.DEFINE_integer("seed", 0, "random seed")
flags.DEFINE_bool("deterministic", False, "deterministic ops: the same weights on every run and after a resume")
flags.DEFINE_enum("mixed_precision", "none", ["none", "mixed_float16", "mixed_bfloat16", "auto"],
                  "mixed precision; auto = mixed_bfloat16 on a CPU with native bfloat16 (AVX512-BF16 or AMX) "
                  "and no GPU, else none")
flags.DEFINE_enum("strategy", "default", ["default", "mirrored", "multi_worker"], "tf.distribute strategy")
flags.DEFINE_bool("progress", True, "show a progress bar")

# Where each flag goes: the field of TrainConfig (dotted through its nested configs) whose
# default the flag's default must equal (tests/test_settings.py holds them equal, and checks
# that every field is here or in NOT_FLAGS).
FIELD_OF = {
    "data_dir": "data_dir", "layout": "layout", "workdir": "workdir", "cache_dir": "cache_dir",
    "num_classes": "num_classes", "target_spacing": "preprocess.target_spacing_zyx",
    "intensity_normalization": "preprocess.normalization", "clip_percentiles": "preprocess.clip_percentiles",
    "patch_size": "patch_size_zyx", "num_folds": "num_folds", "fold": "fold",
    "max_validation_cases": "max_validation_cases",
    "variant": "model.variant", "base_width": "model.base_width", "depth": "model.depth",
    "kernel_size": "model.kernel_size", "convs_left": "model.convs_left", "convs_right": "model.convs_right",
    "activation": "model.activation", "normalization": "model.normalization", "dropout": "model.dropout",
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
    "preprocess.image_interpolation": "linear: the inference graph resamples linearly only",
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
    from vnet_tf.inference.segmenter import InferenceConfig  # pylint: disable=import-outside-toplevel
    from vnet_tf.model.vnet import VNetConfig  # pylint: disable=import-outside-toplevel
    from vnet_tf.data.preprocess import PreprocessConfig  # pylint: disable=import-outside-toplevel
    from vnet_tf.training.loop import TrainConfig  # pylint: disable=import-outside-toplevel

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
            clip_percentiles=_numbers("clip_percentiles", float, 2) if FLAGS.clip_percentiles else None),
        model=VNetConfig(base_width=FLAGS.base_width, depth=FLAGS.depth, kernel_size=FLAGS.kernel_size,
                         convs_left=_numbers("convs_left", int) or None,
                         convs_right=_numbers("convs_right", int) or None,
                         activation=FLAGS.activation, normalization=FLAGS.normalization,
                         dropout=FLAGS.dropout, variant=FLAGS.variant),
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
    dice_text = "n/a" if dice is None else "[" + ", ".join(f"{d:.3f}" for d in dice) + "]"
    print(f"done: step {summary['steps']} ({summary['steps_per_second']} steps/s this run, peak memory "
          f"{summary['peak_memory_mb']} MB); validation Dice per class (background first): {dice_text}; "
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
