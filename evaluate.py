"""Segment held-out cases and score them: ``python evaluate.py [--flag=value ...]``, the same command as ``vnet-evaluate``.

The command lives in :mod:`vnet_tf.commands.evaluate` (its flags: ``--helpfull``, or
docs/reference/flags.md).
"""

import vnet_tf  # noqa: F401  (first: turns oneDNN on before TensorFlow loads)
from vnet_tf.commands.evaluate import run

if __name__ == "__main__":
    run()
