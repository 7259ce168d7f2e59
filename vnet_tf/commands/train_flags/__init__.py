"""train.py's flags, one module per stage, so that ``--helpfull`` lists them by stage. Which
TrainConfig field each flag sets is ``vnet_tf.commands.train.FIELD_OF``."""

from vnet_tf.commands.train_flags import augmentation, data, loss, model, run  # noqa: F401  (define the flags)

STAGES = ("data", "model", "loss", "augmentation", "run")
