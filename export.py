"""Export a training run as a SavedModel for TF Serving: ``python export.py [--flag=value ...]``, the same command as ``vnet-export``.

The command lives in :mod:`vnet_tf.commands.export` (its flags: ``--helpfull``, or
docs/reference/flags.md).
"""

import vnet_tf  # noqa: F401  (first: turns oneDNN on before TensorFlow loads)
from vnet_tf.commands.export import run

if __name__ == "__main__":
    run()
