"""Loss and optimiser."""

from absl import flags

from vnet_tf.commands.choices import define_choice
from vnet_tf.model.registry import LOSSES

define_choice("loss", LOSSES, "dice_ce", "the paper's Dice loss, or Dice + cross-entropy (or a loss registered "
              "in vnet_tf.model.registry.LOSSES)", __name__)
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
