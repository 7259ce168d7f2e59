"""Detect truncated volume files, which ITK reads without error by zero-filling them.

Checked: NIfTI (``.nii``, ``.nii.gz``; NIfTI-1 and -2 headers) and MetaImage (``.mha``,
``.mhd`` with its data file, raw or zlib-compressed). For those, the voxel bytes that the
header announces must all be present. NRRD and DICOM files are not checked here. :func:`nonfinite_problem` refuses NaN / Inf
voxels, those of float NIfTI files included, which ITK's reader silently replaces by 0.
"""

from __future__ import annotations

import gzip
import pathlib
import struct
import zlib
from typing import Optional

import numpy as np

def _nifti_header(head: bytes):
    """``(endian, datatype, vox_offset)`` from the start of a NIfTI-1/-2 file (its first 540
    bytes suffice); ``struct.error`` where they are too few."""
    (size,) = struct.unpack("<i", head[:4])
    endian = "<" if size in (348, 540) else ">"
    (size,) = struct.unpack(endian + "i", head[:4])
    if size == 348:
        datatype = struct.unpack(endian + "h", head[70:72])[0]
        offset = int(struct.unpack(endian + "f", head[108:112])[0])
    else:
        datatype = struct.unpack(endian + "h", head[12:14])[0]
        offset = int(struct.unpack(endian + "q", head[168:176])[0])
    return endian, datatype, offset


def _nifti_payload(path: pathlib.Path):
    """``(content, endian, datatype, vox_offset)`` of a NIfTI-1/-2 file, decompressed."""
    opener = gzip.open if path.name.lower().endswith(".gz") else open
    with opener(path, "rb") as handle:
        content = handle.read()
    return (content, *_nifti_header(content))


def _nifti_problem(path: pathlib.Path, data_bytes: int) -> Optional[str]:
    try:
        content, _, _, offset = _nifti_payload(path)
    except (EOFError, OSError, zlib.error, struct.error) as err:
        return f"compressed stream is incomplete or corrupt ({err})"
    needed = offset + data_bytes
    if len(content) < needed:
        return f"file holds {len(content)} bytes, the header announces {needed}"
    return None


def _nifti_float_type(path: pathlib.Path) -> Optional[str]:
    """The numpy type of a float NIfTI file's voxels (``"f4"``, ``"f8"``), from its header
    alone; ``None`` for other voxel types or an unreadable header."""
    opener = gzip.open if path.name.lower().endswith(".gz") else open
    try:
        with opener(path, "rb") as handle:
            _, datatype, _ = _nifti_header(handle.read(540))
    except (EOFError, OSError, zlib.error, struct.error):
        return None
    return {16: "f4", 64: "f8"}.get(datatype)


def nonfinite_count(path: pathlib.Path) -> Optional[int]:
    """NaN / Inf voxels stored in a float NIfTI file (ITK's reader turns NaN into 0, so the
    decoded array cannot show them); ``None`` for other formats or unreadable files, 0 for
    integer voxel types (read from the header only)."""
    path = pathlib.Path(path)
    if not path.name.lower().endswith((".nii", ".nii.gz")):
        return None
    dtype = _nifti_float_type(path)
    if dtype is None:
        return 0
    try:
        content, endian, _, offset = _nifti_payload(path)
    except (EOFError, OSError, zlib.error, struct.error):
        return None
    values = np.frombuffer(content, endian + dtype, count=(len(content) - offset) // int(dtype[1]),
                           offset=offset)
    return int(np.count_nonzero(~np.isfinite(values)))


# The words every refusal of non-finite voxels uses: the data check, evaluate.py, predict.py
# and the serving client (nonfinite_problem), and the serving graph's own check
# (vnet_tf.inference.segmenter), which sees the request's array rather than a file.
NONFINITE = "expected finite values; found {count} NaN or infinite voxel(s)"


def nonfinite_problem(path, array: np.ndarray) -> Optional[str]:
    """Why the scan read from ``path`` as ``array`` cannot be used, or ``None``: NaN or infinite
    voxels, counted in the decoded array and, for float NIfTI files, in the file's own bytes
    (which the reader has already replaced by 0). ``path`` may be ``None`` (an array only)."""
    count = int(np.count_nonzero(~np.isfinite(array))) if np.asarray(array).dtype.kind == "f" else 0
    if path is not None and str(path).lower().endswith((".nii", ".nii.gz")):
        count = max(count, nonfinite_count(pathlib.Path(path)) or 0)
    return NONFINITE.format(count=count) if count else None


def _metaimage_problem(path: pathlib.Path, data_bytes: int) -> Optional[str]:
    raw = path.read_bytes()
    fields, position = {}, 0
    for line in raw.split(b"\n"):
        position += len(line) + 1
        key, _, value = line.decode("latin-1").partition("=")
        fields[key.strip()] = value.strip()
        if key.strip() == "ElementDataFile":
            break
    data_file = fields.get("ElementDataFile", "LOCAL")
    if data_file == "LOCAL":
        payload = raw[position:]
    elif " " in data_file or data_file.startswith("LIST"):
        return None  # lists of slice files: not checked
    else:
        target = path.parent / data_file
        if not target.is_file():
            return f"data file {target} is missing"
        payload = target.read_bytes()
    if fields.get("CompressedData", "False").lower() == "true":
        decompressor = zlib.decompressobj()
        try:
            length = len(decompressor.decompress(payload))
        except zlib.error as err:
            return f"compressed data is corrupt ({err})"
        if not decompressor.eof:
            return "compressed data ends early"
    else:
        length = len(payload)
    if length < data_bytes:
        return f"data holds {length} bytes, the header announces {data_bytes}"
    return None


def truncation_problem(path: pathlib.Path, data_bytes: int) -> Optional[str]:
    """A sentence describing why ``path`` lacks some of its ``data_bytes`` voxel bytes,
    or ``None`` when it is complete (or of a format not checked here)."""
    name = path.name.lower()
    if name.endswith((".nii", ".nii.gz")):
        return _nifti_problem(path, data_bytes)
    if name.endswith((".mha", ".mhd")):
        return _metaimage_problem(path, data_bytes)
    return None
