"""The sliding window's settings (:class:`InferenceConfig`), recorded in a run's ``config.json``
and in an export."""

from __future__ import annotations

import dataclasses
from typing import Tuple

from vnet_tf.inference.segmentation import POSTPROCESS_MODES as POSTPROCESS

BLENDS = ("gaussian", "constant")
# The largest volume, at the run's spacing, that one call may segment (sized by the measured
# peak memory of a larger request: BENCHMARKS.md, "Serving: memory and response sizes"); an
# export's --max_voxels.
DEFAULT_MAX_VOXELS = 48 * 1024 * 1024


@dataclasses.dataclass(frozen=True)
class InferenceConfig:
    """Sliding-window settings.

    ``overlap``: fraction of the patch that neighbouring windows share (0.5: nnU-Net).
    ``sigma_scale``: Gaussian sigma as a fraction of the patch (nnU-Net: 1/8).
    ``mirror_axes``: spatial axes (0 = z, 1 = y, 2 = x) to mirror over for test-time
    augmentation; every subset is predicted and the probabilities averaged (2^n passes).
    ``postprocess``: ``"largest"`` keeps each class's largest connected component;
    ``"min_size"`` removes components smaller than ``min_size`` voxels (on the host, after
    the graph: :mod:`vnet_tf.inference.segmentation`).
    """

    patch_size_zyx: Tuple[int, int, int] = (32, 32, 32)
    overlap: float = 0.5
    batch_size: int = 2
    blend: str = "gaussian"
    sigma_scale: float = 0.125
    mirror_axes: Tuple[int, ...] = ()
    postprocess: str = "none"
    min_size: int = 0

    def validate(self) -> "InferenceConfig":
        if len(self.patch_size_zyx) != 3 or min(self.patch_size_zyx) < 1:
            raise ValueError(f"patch_size_zyx must be 3 positive sizes, got {self.patch_size_zyx!r}")
        if not 0.0 <= self.overlap < 1.0:
            raise ValueError(f"overlap must be in [0, 1), got {self.overlap!r}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size!r}")
        if self.blend not in BLENDS:
            raise ValueError(f"blend must be one of {BLENDS}, got {self.blend!r}")
        if self.sigma_scale <= 0:
            raise ValueError(f"sigma_scale must be > 0, got {self.sigma_scale!r}")
        if any(a not in (0, 1, 2) for a in self.mirror_axes) or len(set(self.mirror_axes)) != len(self.mirror_axes):
            raise ValueError(f"mirror_axes must be distinct axes among 0 (z), 1 (y), 2 (x), got {self.mirror_axes!r}")
        if self.postprocess not in POSTPROCESS:
            raise ValueError(f"postprocess must be one of {POSTPROCESS}, got {self.postprocess!r}")
        if self.min_size < 0:
            raise ValueError(f"min_size must be >= 0, got {self.min_size!r}")
        return self

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)
