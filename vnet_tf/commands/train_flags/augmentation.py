"""Augmentation: each transform's probability and strength, and where it runs."""

from absl import flags

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
