"""Which values a label map may hold.

Labels are class numbers: integers ``0..K-1``, background 0. Preprocessing stores them as
uint8, so at most :data:`MAX_CLASSES` classes, and a value outside that range would wrap
(256 -> 0, -1 -> 255) instead of failing; every reader of labels (the data check,
preprocessing, evaluation) refuses such values with :func:`value_problem` before any cast.
"""

from __future__ import annotations

from typing import Optional

import numpy as np

MAX_CLASSES = 256


def value_problem(values, num_classes: Optional[int] = None) -> Optional[str]:
    """Why the distinct values ``values`` of one label map are unusable, or ``None``.

    With ``num_classes`` (declared), every value must lie in ``0..num_classes-1``; without,
    in ``0..MAX_CLASSES-1``. Values must be finite integers whatever the file's type."""
    values = np.asarray(values).ravel()
    if values.dtype.kind == "f":
        bad = values[~np.isfinite(values) | (values != np.round(values))]
        if bad.size:
            return f"label values are not integers (found {bad[:5].tolist()}); expected class numbers"
    elif values.dtype.kind not in "iub":
        return f"label values of type {values.dtype} are not class numbers"
    limit = MAX_CLASSES if num_classes is None else num_classes
    outside = values[(values < 0) | (values >= limit)]
    if outside.size:
        found = [int(v) for v in outside[:8]]
        expected = (f"the declared classes 0..{num_classes - 1}" if num_classes is not None else
                    f"class numbers 0..{MAX_CLASSES - 1} (labels are stored as uint8)")
        return f"label values {found} lie outside {expected}"
    return None


def class_label(number: int, names: Optional[dict] = None) -> str:
    """``label 1 (left atrium)``: a class by its number and, where the dataset names it
    (``names``: number -> name), its name."""
    names = names or {}
    return f"label {number} ({names[number]})" if number in names else f"label {number}"
