"""The run: its length, checkpoints, validation, precision and devices."""

from absl import flags

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
