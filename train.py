"""Train a V-Net: ``python train.py [--flag=value ...]``, the same command as ``vnet-train``.

The command lives in :mod:`vnet_tf.commands.train` (its flags: ``--helpfull``, or
docs/reference/flags.md).
"""

import vnet_tf  # noqa: F401  (first: turns oneDNN on before TensorFlow loads)
from vnet_tf.commands.train import run

if __name__ == "__main__":
    run()
