"""Process-level TensorFlow settings that must happen before TensorFlow is imported.

On x86 CPUs TensorFlow leaves its oneDNN kernels off unless ``TF_ENABLE_ONEDNN_OPTS`` is
set; on this project's reference machine turning them on made V-Net training steps
2-5x faster (see BENCHMARKS.md). Importing :mod:`vnet_tf` therefore sets the variable to
``1`` unless the user already set it (``TF_ENABLE_ONEDNN_OPTS=0`` keeps it off).
"""

import os
import sys
import warnings

ONEDNN_VARIABLE = "TF_ENABLE_ONEDNN_OPTS"


def enable_onednn_by_default() -> None:
    """Set ``TF_ENABLE_ONEDNN_OPTS=1`` unless the user chose a value.

    It only takes effect if TensorFlow has not been imported yet, so :mod:`vnet_tf`
    calls it first thing; a warning says when it came too late.
    """
    if ONEDNN_VARIABLE in os.environ:
        return
    os.environ[ONEDNN_VARIABLE] = "1"
    if "tensorflow" in sys.modules:
        warnings.warn(
            "vnet_tf was imported after TensorFlow, so TF_ENABLE_ONEDNN_OPTS=1 could not "
            "take effect; import vnet_tf first or set the variable in the environment.",
            RuntimeWarning,
            stacklevel=3,
        )


def onednn_enabled() -> bool:
    """Whether this process's TensorFlow runs its oneDNN (MKL) kernels."""
    from tensorflow.python.util import _pywrap_util_port  # pylint: disable=import-outside-toplevel

    return bool(_pywrap_util_port.IsMklEnabled())
