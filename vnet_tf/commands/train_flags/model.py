"""Model: the V-Net's layout."""

from absl import flags

from vnet_tf.commands.choices import define_choice
from vnet_tf.model.registry import NETWORKS

define_choice("architecture", NETWORKS, "vnet", "the network these settings build (or one registered in "
              "vnet_tf.model.registry.NETWORKS, which reads the settings it uses)", __name__)
flags.DEFINE_enum("variant", "paper", ["paper", "caffe"], "V-Net layout")
flags.DEFINE_integer("base_width", 8, "channels of the first stage", lower_bound=1)
flags.DEFINE_integer("depth", 4, "resolution levels", lower_bound=1)
flags.DEFINE_integer("kernel_size", 3, "odd conv kernel edge", lower_bound=1)
flags.DEFINE_list("convs_left", [], "convs per left stage (empty = the variant's default)")
flags.DEFINE_list("convs_right", [], "convs per right stage (empty = the variant's default)")
flags.DEFINE_enum("activation", "prelu", ["prelu", "relu", "elu"], "activation")
flags.DEFINE_enum("normalization", "instance", ["none", "batch", "instance", "group"], "layer normalisation")
flags.DEFINE_float("dropout", 0.0, "channel dropout after every stage", lower_bound=0.0, upper_bound=0.99)
flags.DEFINE_bool("recompute", False, "recompute the instance / group normalisations and PReLUs in the backward pass "
                  "instead of keeping their intermediates: less training memory, the same results; float32 only "
                  "(--mixed_precision=auto then trains in float32)")
