"""The augmentation's settings (:class:`AugmentConfig`), without importing Keras or TensorFlow
(the command-line flags are generated from these fields); :mod:`vnet_tf.augment.chain` builds
the layers from them."""

from __future__ import annotations

import dataclasses
from typing import Tuple

from vnet_tf.core.settings import flag, no_flag


# Why nnU-Net's augmentations stay although the recipe leaves them off.
NNUNET_KEPT = ("nnU-Net's; level with the recipe on hippocampus (docs/results/hippocampus.md); kept to reproduce nnU-Net's training and for data where it may matter")


def _probability(default: float, name: str, help_text: str, kept: str = ""):
    return flag(default, name=name, help=help_text, lower=0.0, upper=1.0, kept=kept)


@dataclasses.dataclass(frozen=True)
class AugmentConfig:
    """Probabilities and strengths of every transform; a probability of 0 leaves it out.

    Order of application: histogram matching, one spatial resampling (affine + elastic),
    noise, blur, brightness/contrast, low resolution, inverted gamma, gamma, flips (nnU-Net's
    order; its probabilities are noise 0.1, blur 0.2, brightness 0.15 and contrast 0.15, low
    resolution 0.25, inverted gamma 0.1, gamma 0.3).
    """

    histogram_probability: float = _probability(
        0.0, "aug_histogram_p", "histogram matching to another training volume, probability",
        kept="the paper's augmentation (configs/*_paper.flags); the recipe's intensity transforms replace it")
    histogram_landmarks: int = no_flag(11, "the paper's histogram matching: 11 quantile landmarks")
    elastic_probability: float = _probability(0.0, "aug_elastic_p", "B-spline elastic deformation probability")
    elastic_mesh: Tuple[int, int, int] = flag((2, 2, 2), name="aug_elastic_mesh", positive=True,
                                              help="B-spline mesh cells z,y,x")
    elastic_sigma: float = flag(15.0, name="aug_elastic_sigma", lower=0.0,
                                help="control-point displacement sigma, voxels")
    elastic_axes: Tuple[bool, bool, bool] = flag((True, True, True), name="aug_elastic_axes",
                                                 help="displaced components z,y,x (0 = off)")
    affine_probability: float = _probability(0.0, "aug_affine_p", "random rotation/scaling probability")
    rotation_degrees: Tuple[float, float, float] = flag((15.0, 15.0, 15.0), name="aug_rotation",
                                                        help="max rotation degrees about z,y,x")
    scale_range: Tuple[float, float] = flag((0.85, 1.15), name="aug_scale", positive=True, help="zoom range")
    anisotropic_scale: float = no_flag(0.0, "per-axis zoom spread; the library's")
    label_interpolation: str = no_flag("nearest", "nearest for labels (one-hot linear + argmax in the library)")
    fill_mode: str = no_flag("nearest", "how resampling fills outside the volume; the library's")
    noise_probability: float = _probability(0.0, "aug_noise_p", "Gaussian noise probability")
    noise_std: float = flag(0.1, name="aug_noise_std", lower=0.0, help="max noise std")
    blur_probability: float = _probability(0.0, "aug_blur_p", "Gaussian blur probability")
    blur_sigma: Tuple[float, float] = no_flag((0.5, 1.0), "nnU-Net's range")
    brightness_contrast_probability: float = _probability(0.0, "aug_brightness_contrast_p",
                                                          "brightness/contrast probability")
    brightness_range: Tuple[float, float] = no_flag((0.75, 1.25), "nnU-Net's range")
    contrast_range: Tuple[float, float] = no_flag((0.75, 1.25), "nnU-Net's range")
    gamma_probability: float = _probability(0.0, "aug_gamma_p", "gamma probability")
    gamma_range: Tuple[float, float] = no_flag((0.7, 1.5), "nnU-Net's range")
    gamma_inverted_probability: float = _probability(0.0, "aug_gamma_inverted_p", "gamma on the inverted "
                                                     "intensities, probability (nnU-Net: 0.1)", NNUNET_KEPT)
    gamma_retain_stats: bool = flag(False, name="aug_gamma_retain_stats", kept=NNUNET_KEPT, help=(
        "both gamma transforms restore each sample's mean and std (nnU-Net does)"))
    lowres_probability: float = _probability(0.0, "aug_lowres_p", "simulated low resolution probability "
                                             "(nnU-Net: 0.25)", NNUNET_KEPT)
    lowres_zoom: Tuple[float, float] = flag((0.5, 1.0), name="aug_lowres_zoom", positive=True, help=(
        "simulated low resolution: grid zoom range, within (0, 1]"))
    flip_axes: Tuple[int, ...] = flag((), name="aug_flip_axes", help="axes to mirror (0=z,1=y,2=x)")
    flip_probability: float = _probability(0.5, "aug_flip_p", "mirror probability per axis")

    @classmethod
    def paper(cls, **overrides) -> "AugmentConfig":
        """Milletari et al.: B-spline deformation (2x2x2 cells, sigma 15 voxels) and
        histogram matching, on every sample."""
        return cls(**{"elastic_probability": 1.0, "histogram_probability": 1.0, **overrides})

    def validate(self) -> "AugmentConfig":
        """Checks what the layers check only when they are built (their probability > 0)."""
        if not 0 < min(self.lowres_zoom) <= max(self.lowres_zoom) <= 1:
            raise ValueError(f"lowres_zoom must lie in (0, 1] (a coarser grid), got {self.lowres_zoom!r}")
        return self

    @property
    def enabled(self) -> bool:
        from vnet_tf.augment.chain import TRANSFORMS  # pylint: disable=import-outside-toplevel
        return any(entry.enabled(self) for entry in TRANSFORMS)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)
