"""The whole-volume inference holds a slab of class sums, not the whole volume's: the peak
memory of segmenting a scaled-down large scan, in a fresh process, stays below what the
volume's class sums alone would take."""

import json
import subprocess
import sys

from conftest import REPO, subprocess_env

CHILD = r"""
import json
import vnet_tf
import numpy as np
import tensorflow as tf
from vnet_tf.data.preprocess import PreprocessConfig
from vnet_tf.inference.config import InferenceConfig
from vnet_tf.inference.segmenter import Segmenter

CLASSES, SHAPE, PATCH = 16, (160, 256, 256), (16, 32, 32)


class Model:  # K classes from one channel, no variables: the memory is the window's, not a network's
    variables = []

    def __call__(self, x, training=False):
        return tf.nn.softmax(x * tf.linspace(-1.0, 1.0, CLASSES))


def rss(field):
    for line in open("/proc/self/status"):
        if line.startswith(field):
            return int(line.split()[1]) * 1024


segmenter = Segmenter(Model(), PreprocessConfig(), InferenceConfig(patch_size_zyx=PATCH, batch_size=4, overlap=0.25), 1, CLASSES)
volume = tf.constant(np.random.default_rng(0).normal(size=SHAPE + (1,)).astype(np.float32))
spacing, direction = tf.constant([1.0, 1.0, 1.0]), tf.constant(np.eye(3, dtype=np.float32).ravel())
small = tf.zeros((16, 32, 32, 1))
segmenter.segment_labels(small, spacing, direction)  # traced, and TensorFlow's pools warmed, on a small volume
before = rss("VmRSS:")
labels = segmenter.segment_labels(volume, spacing, direction)["labels"].numpy()
print(json.dumps({"growth": rss("VmHWM:") - before, "class_sums": int(np.prod(SHAPE)) * CLASSES * 4,
                  "labels": list(labels.shape), "distinct": int(len(np.unique(labels)))}))
"""


def test_segmenting_a_large_scan_holds_less_than_its_class_sums():
    out = subprocess.run([sys.executable, "-c", CHILD], cwd=REPO, env=subprocess_env(), capture_output=True,
                         text=True, encoding="utf-8", timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["labels"] == [160, 256, 256] and result["distinct"] > 1
    # The (D, H, W, K) float32 sums alone would be 671 MB (the graph that held them grew by over
    # 900 MB here); the slab is 16 of the 160 rows.
    assert result["growth"] < result["class_sums"], result
