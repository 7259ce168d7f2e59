"""vnet_tf: V-Net volumetric segmentation in TensorFlow / Keras 3.

Importing the package turns TensorFlow's oneDNN CPU kernels on (unless the user set
``TF_ENABLE_ONEDNN_OPTS``), so it must be imported before TensorFlow or Keras.
"""

from vnet_tf.core import runtime as _runtime

_runtime.enable_onednn_by_default()

__version__ = "0.1.0"
