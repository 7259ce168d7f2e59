"""Data: where the cases are, how they are preprocessed, and the folds."""

from absl import flags

flags.DEFINE_string("data_dir", "", "dataset folder; empty = the embedded demo dataset")
flags.DEFINE_enum("layout", "auto", ["auto", "msd", "nnunet", "promise12"], "dataset layout")
flags.DEFINE_string("workdir", "runs/demo", "where the run writes its outputs")
flags.DEFINE_string("cache_dir", ".cache", "preprocessed-case cache (and the demo dataset)")
flags.DEFINE_integer("demo_cases", 16, "cases in the demo dataset", lower_bound=2)
flags.DEFINE_integer("num_classes", 0, "classes, background included; 0 = those dataset.json declares, else "
                     "the label values found, which must then be 0..K-1 without gaps", lower_bound=0)
flags.DEFINE_list("target_spacing", [], "resample to this spacing in mm, z,y,x; empty = keep")
flags.DEFINE_enum("intensity_normalization", "zscore", ["none", "zscore", "zscore_foreground", "rescale", "ct"],
                  "per-case intensity normalisation; ct: the dataset's --ct_statistics")
flags.DEFINE_list("ct_statistics", [], "with --intensity_normalization=ct: low,high,mean,std: clip to [low, high], "
                  "then (x - mean) / std (vnet-plan measures them in the labelled foreground)")
flags.DEFINE_list("clip_percentiles", [], "clip intensities to these percentiles first, e.g. 0.5,99.5")
flags.DEFINE_list("patch_size", ["32", "32", "32"], "training patch, z,y,x voxels")
flags.DEFINE_integer("num_folds", 5, "cross-validation folds (case-id hash)", lower_bound=2)
flags.DEFINE_integer("fold", 0, "the validation fold; -1 = train on every case, no validation "
                     "(the final model; its last weights are also best.npz)", lower_bound=-1)
flags.DEFINE_integer("max_validation_cases", 0, "validate on at most this many cases (0 = all)", lower_bound=0)
