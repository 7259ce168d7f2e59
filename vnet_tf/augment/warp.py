"""Dense 3D warps on ``keras.ops``: cubic B-spline displacement fields, affine grids, and
trilinear / nearest-neighbour sampling of batched channels-last volumes.

Coordinates are voxel indices in ``(z, y, x)`` order, the last axis of a coordinate tensor
``(batch, depth, height, width, 3)``. A sampled output voxel ``p`` takes the input's value
at ``coords[p]`` (a "pull" warp, as in ITK's resampler).

No TensorFlow import: the same code runs inside ``tf.data``, in a compiled TensorFlow
training step and under Keras's JAX backend.
"""

from __future__ import annotations

from typing import Sequence

from keras import ops

FILL_MODES = ("nearest", "constant")


def cubic_bspline(s):
    """The centred cubic B-spline kernel beta3(s), supported on ``|s| < 2``."""
    a = ops.abs(s)
    inner = 2.0 / 3.0 - a * a + 0.5 * a * a * a
    outer = (2.0 - a) ** 3 / 6.0
    return ops.where(a < 1.0, inner, ops.where(a < 2.0, outer, ops.zeros_like(a)))


def bspline_basis(size, mesh_cells: int):
    """Matrix ``(size, mesh_cells + 3)`` of cubic B-spline weights along one axis.

    The axis ``0 .. size-1`` is split into ``mesh_cells`` equal cells (ITK's "mesh size" with
    the transform domain spanning the voxel centres); control point ``i`` sits at
    ``(i - 1) * h`` with ``h = (size - 1) / mesh_cells``, so a field is
    ``sum_i basis[x, i] * coefficient[i]``.
    """
    size_f = ops.cast(size, "float32")
    h = ops.maximum(size_f - 1.0, 1.0) / float(mesh_cells)
    t = ops.arange(size, dtype="float32") / h
    index = ops.arange(mesh_cells + 3, dtype="float32")
    return cubic_bspline(t[:, None] - (index[None, :] - 1.0))


def bspline_field(coefficients, spatial_shape: Sequence):
    """Dense displacement field from control-point coefficients.

    Args:
      coefficients: ``(batch, mz + 3, my + 3, mx + 3, 3)`` displacements (voxels) of the
        control points, components in ``(z, y, x)`` order.
      spatial_shape: the output ``(depth, height, width)``.

    Returns:
      ``(batch, depth, height, width, 3)`` float32, evaluated separably (three small
      matrix products instead of a 3D convolution).
    """
    cz, cy, cx = (int(n) - 3 for n in coefficients.shape[1:4])
    bz = bspline_basis(spatial_shape[0], cz)
    by = bspline_basis(spatial_shape[1], cy)
    bx = bspline_basis(spatial_shape[2], cx)
    field = ops.einsum("xk,bijkc->bijxc", bx, coefficients)
    field = ops.einsum("yj,bijxc->bixyc", by, field)
    field = ops.einsum("zi,bixyc->bzyxc", bz, field)
    return field


def identity_grid(spatial_shape: Sequence):
    """``(depth, height, width, 3)`` float32 voxel coordinates of every voxel."""
    axes = [ops.arange(n, dtype="float32") for n in spatial_shape]
    z, y, x = ops.meshgrid(*axes, indexing="ij")
    return ops.stack([z, y, x], axis=-1)


def _corner_gather(flat, batch_offset, index, sizes, fill_mode):
    """Gathers ``flat[(b, z, y, x)]`` for integer ``index (B, D, H, W, 3)``; returns the
    values and, for ``constant`` fill, a 0/1 mask of in-bounds corners."""
    valid = None
    if fill_mode == "constant":
        inside = ops.logical_and(index >= 0, index <= sizes - 1)
        valid = ops.cast(ops.all(inside, axis=-1), flat.dtype)[..., None]
    clipped = ops.clip(index, 0, sizes - 1)
    h_w = sizes[1] * sizes[2]
    linear = batch_offset + clipped[..., 0] * h_w + clipped[..., 1] * sizes[2] + clipped[..., 2]
    values = ops.take(flat, linear, axis=0)
    return values, valid


def _prepare(volume, coords):
    shape = ops.shape(volume)
    batch, depth, height, width, channels = shape[0], shape[1], shape[2], shape[3], shape[4]
    flat = ops.reshape(volume, (-1, channels))
    sizes = ops.convert_to_tensor([depth, height, width], dtype="int32")
    offset = ops.arange(batch, dtype="int32") * (depth * height * width)
    offset = ops.reshape(offset, (-1, 1, 1, 1))
    return flat, sizes, offset


def sample_linear(volume, coords, fill_mode: str = "nearest", fill_value: float = 0.0):
    """Trilinear sampling of ``volume (B, D, H, W, C)`` at ``coords (B, D', H', W', 3)``.

    ``fill_mode="nearest"`` extends the edge voxels outwards; ``"constant"`` uses
    ``fill_value`` outside. At integer coordinates the result equals the input exactly.
    """
    if fill_mode not in FILL_MODES:
        raise ValueError(f"fill_mode must be one of {FILL_MODES}, got {fill_mode!r}")
    coords = ops.cast(coords, "float32")
    flat, sizes, offset = _prepare(volume, coords)
    floor = ops.floor(coords)
    frac = coords - floor
    base = ops.cast(floor, "int32")
    out = None
    for dz in (0, 1):
        for dy in (0, 1):
            for dx in (0, 1):
                step = ops.convert_to_tensor([dz, dy, dx], dtype="int32")
                pick = ops.convert_to_tensor([dz, dy, dx], dtype="float32")
                weights = ops.prod(pick * frac + (1.0 - pick) * (1.0 - frac), axis=-1)[..., None]
                values, valid = _corner_gather(flat, offset, base + step, sizes, fill_mode)
                if valid is not None:
                    weights = weights * valid
                term = ops.cast(weights, volume.dtype) * values
                out = term if out is None else out + term
    if fill_mode == "constant" and fill_value != 0.0:
        inside = ops.all(ops.logical_and(coords >= 0.0, coords <= ops.cast(sizes - 1, "float32")), axis=-1)
        out = ops.where(inside[..., None], out, ops.cast(fill_value, volume.dtype))
    return out


def sample_nearest(volume, coords, fill_mode: str = "nearest", fill_value=0):
    """Nearest-neighbour sampling (labels): the value of the voxel closest to each
    coordinate, so no value that is not in the input can appear."""
    if fill_mode not in FILL_MODES:
        raise ValueError(f"fill_mode must be one of {FILL_MODES}, got {fill_mode!r}")
    coords = ops.cast(coords, "float32")
    flat, sizes, offset = _prepare(volume, coords)
    index = ops.cast(ops.floor(coords + 0.5), "int32")
    values, valid = _corner_gather(flat, offset, index, sizes, fill_mode)
    if valid is not None:
        values = ops.where(valid > 0, values, ops.cast(fill_value, volume.dtype))
    return values
