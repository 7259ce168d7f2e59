"""The serving contract, fuzzed: every request to ``serving_default`` either returns labels on
the input's grid or fails with INVALID_ARGUMENT naming an input that is wrong, in bounded
memory.

Requests are drawn by hypothesis: ranks 0-6, small shapes (empty axes included), values with
NaN and infinities, spacings from 1e-6 to 1e12 mm (and zero, negative, non-finite, too few),
and directions that are valid (signed permutations, small rotations of them), sheared,
degenerate, non-finite or of the wrong length. A numpy model of the contract says which inputs
are wrong, so that a request refused without reason, or labels returned for a bad one, fail
the test as surely as a crash does. The graph is the exported one's (VNetServing's
signature), with a model of no weights and a run resampling to 1 mm.
"""

import re
import resource

import numpy as np
import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings, strategies as st  # noqa: E402

MAX_VOXELS = 24 ** 3
MIN_AXIS = 4
CHANNELS, CLASSES = 1, 2


@pytest.fixture(scope="module")
def serve():
    import tensorflow as tf
    from vnet_tf.data.preprocess import PreprocessConfig
    from vnet_tf.inference.config import InferenceConfig
    from vnet_tf.inference.segmenter import Segmenter
    from vnet_tf.inference.signatures import VNetServing

    def model(x, training=False):  # two classes from the sign of the normalised intensity
        return tf.concat([-x, x], axis=-1)

    segmenter = Segmenter(model, PreprocessConfig(target_spacing_zyx=(1.0, 1.0, 1.0)),
                          InferenceConfig(patch_size_zyx=(8, 8, 8)), CHANNELS, CLASSES, max_voxels=MAX_VOXELS)
    return VNetServing(segmenter).signatures()["serving_default"]


def _rotation(angles):
    a, b, c = np.radians(angles)
    rz = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    ry = np.array([[np.cos(b), 0, np.sin(b)], [0, 1, 0], [-np.sin(b), 0, np.cos(b)]])
    rx = np.array([[1, 0, 0], [0, np.cos(c), -np.sin(c)], [0, np.sin(c), np.cos(c)]])
    return rz @ ry @ rx


@st.composite
def directions(draw):
    """``(kind, 9 or other count of floats)``: kind ``valid`` or the way it is wrong."""
    kind = draw(st.sampled_from(["permutation", "rotated"] * 3 + ["sheared", "degenerate", "nonfinite", "length"]))
    if kind == "length":
        return "length", draw(st.lists(st.floats(-1, 1), max_size=12).filter(lambda v: len(v) != 9))
    if kind == "degenerate":  # two columns along one axis, or a zero column
        matrix = np.eye(3)[:, draw(st.sampled_from([[0, 0, 2], [1, 1, 2], [0, 2, 2]]))]
        return "degenerate", list(matrix.ravel())
    perm = draw(st.permutations([0, 1, 2]))
    matrix = np.eye(3)[:, perm] * np.array(draw(st.lists(st.sampled_from([-1, 1]), min_size=3, max_size=3)))
    if kind in ("rotated", "sheared", "nonfinite"):
        matrix = _rotation(draw(st.lists(st.floats(-20, 20), min_size=3, max_size=3))) @ matrix
    if kind == "sheared":
        i, j = draw(st.sampled_from([(0, 1), (1, 2), (0, 2), (2, 0)]))
        column = matrix[:, j] + draw(st.floats(0.05, 1.0)) * matrix[:, i]
        matrix[:, j] = column / np.linalg.norm(column)  # unit columns, no longer at right angles
    values = list(matrix.ravel())
    if kind == "nonfinite":
        values[draw(st.integers(0, 8))] = draw(st.sampled_from([np.nan, np.inf]))
    return ("valid" if kind in ("permutation", "rotated") else kind), values


spacings = st.one_of(
    st.lists(st.floats(1.0, 2.5), min_size=3, max_size=3),  # a grid the limits allow, mostly
    st.lists(st.floats(0.5, 2.5), min_size=3, max_size=3),
    st.lists(st.one_of(st.floats(1e-6, 1e12), st.sampled_from([0.0, -1.0, np.nan, np.inf])), min_size=2, max_size=4))


@st.composite
def volumes(draw):
    rank = draw(st.sampled_from([3, 3, 4, 4, 5, 5, 0, 1, 2, 6]))
    shape = draw(st.lists(st.integers(0, 10), min_size=rank, max_size=rank))
    if rank == 5 and draw(st.integers(0, 3)) < 3:
        shape[0] = draw(st.integers(1, 2))  # mostly one or two scans in a batch
    if rank in (4, 5) and draw(st.integers(0, 3)) < 3:
        shape[-1] = CHANNELS  # mostly a right channel count where there is a channel axis
    if rank in (3, 4, 5) and draw(st.integers(0, 3)) < 3:  # mostly spatial axes long enough to serve
        start = 1 if rank == 5 else 0
        shape[start:start + 3] = [draw(st.integers(MIN_AXIS, 10)) for _ in range(3)]
    volume = np.asarray(draw(st.floats(-5, 5, width=32)), np.float32) * np.ones(shape, np.float32)
    if volume.size:
        volume = volume + np.linspace(-1, 1, volume.size, dtype=np.float32).reshape(shape)
        if draw(st.integers(0, 5)) == 5:
            volume.flat[draw(st.integers(0, volume.size - 1))] = draw(st.sampled_from([np.nan, np.inf, -np.inf]))
    return volume


def _spatial(shape):
    """The spatial axes of a request's volume (D, H, W), or None where its rank is refused."""
    if len(shape) == 3:
        return tuple(shape)
    if len(shape) == 4:
        return tuple(shape[:3])
    if len(shape) == 5:
        return tuple(shape[1:4])
    return None


def _wrong_inputs(volume, spacing, kind):
    """The inputs the contract must refuse the request for (empty: it must be served)."""
    wrong = set()
    spatial = _spatial(volume.shape)
    if spatial is None or (volume.ndim > 3 and volume.shape[-1] != CHANNELS) or min(spatial) < MIN_AXIS \
            or not np.isfinite(volume).all() or (volume.ndim == 5 and volume.shape[0] == 0):
        wrong.add("volume")
    spacing = np.asarray(spacing, np.float32)
    if spacing.size != 3 or not np.isfinite(spacing).all() or (spacing <= 0).any():
        wrong.add("spacing")
    if kind != "valid":
        wrong.add("direction")
    if not wrong:  # the resampled grid (1 mm): within the limits, or refused naming the volume
        grid = np.maximum(np.round(np.asarray(spatial, np.float64) * spacing.astype(np.float64)), 1)
        if grid.min() < MIN_AXIS or np.prod(grid) > MAX_VOXELS:
            wrong |= {"volume", "spacing"}
    return wrong


@settings(max_examples=200, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(volume=volumes(), spacing=spacings, direction=directions())
def test_every_request_is_served_or_refused_naming_a_wrong_input(serve, volume, spacing, direction):
    import tensorflow as tf
    kind, cosines = direction
    wrong = _wrong_inputs(volume, spacing, kind)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    try:
        out = serve(volume=tf.constant(volume), spacing=tf.constant(spacing, tf.float32),
                    direction=tf.constant(cosines, tf.float32))
    except tf.errors.InvalidArgumentError as err:
        found = re.search(r"input (volume|spacing|direction)", err.message)
        named = found and found[1]
        assert named in wrong, (named, wrong, err.message[:400])
    else:
        assert not wrong, (wrong, volume.shape, spacing, cosines)
        labels = out["labels"].numpy()
        grid = volume.shape[:-1] if volume.ndim in (4, 5) else volume.shape
        assert labels.shape == grid and set(np.unique(labels)) <= {0, 1}
    grown_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    assert grown_mb < 256, grown_mb  # no request allocates past its voxel limit
