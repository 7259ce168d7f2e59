"""Segment new scans: ``python predict.py [--flag=value ...]``, the same command as ``vnet-predict``.

The command lives in :mod:`vnet_tf.commands.predict` (its flags: ``--helpfull``, or
docs/reference/flags.md).
"""

import vnet_tf  # noqa: F401  (first: turns oneDNN on before TensorFlow loads)
from vnet_tf.commands.predict import run

if __name__ == "__main__":
    run()
