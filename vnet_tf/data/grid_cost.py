"""What a coarser grid costs a segmentation at best: the Dice that the reference labels keep when
they are taken to the grid as a network's smooth output and back as the inference graph maps
a prediction back (the probabilities, trilinearly, then the argmax on the scan's grid).

Each class's indicator is smoothed by a Gaussian of ``SMOOTHING`` voxels of the coarse grid (a
network's output varies smoothly at the scale of its grid; unsmoothed, a grid of exactly twice
the spacing puts every other boundary voxel on a tie), sampled trilinearly on the grid, taken
back trilinearly and the argmax taken (on left-atrium labels: docs/results/la2018.md, "What a
coarser grid costs at best"). The planner (``vnet-plan --time_budget_minutes``) coarsens a grid
only while it keeps ``1 - GRID_COST`` or more of the Dice.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import SimpleITK as sitk

SMOOTHING = 0.5


def grid_dice(label: sitk.Image, spacing_zyx: Sequence[float], num_classes: int) -> float:
    """The mean Dice over the foreground classes present in ``label`` after the round trip to
    ``spacing_zyx`` (mm); 1.0 where no foreground class is present."""
    spacing_xyz = [float(s) for s in reversed(spacing_zyx)]
    size = [max(1, int(round(n * s / t))) for n, s, t in zip(label.GetSize(), label.GetSpacing(), spacing_xyz)]
    array = sitk.GetArrayViewFromImage(label)
    scores = []
    for cls in range(num_classes):
        indicator = sitk.Cast(label == cls, sitk.sitkFloat32)
        smooth = sitk.SmoothingRecursiveGaussian(indicator, [SMOOTHING * t for t in spacing_xyz])
        coarse = sitk.Resample(smooth, size, sitk.Transform(), sitk.sitkLinear, label.GetOrigin(), spacing_xyz,
                               label.GetDirection(), 0.0, sitk.sitkFloat32)
        back = sitk.Resample(coarse, label, sitk.Transform(), sitk.sitkLinear, 0.0, sitk.sitkFloat32)
        scores.append(sitk.GetArrayFromImage(back))
    restored = np.argmax(np.stack(scores), axis=0)
    dice = []
    for cls in range(1, num_classes):
        reference, got = array == cls, restored == cls
        total = reference.sum() + got.sum()
        if reference.any():
            dice.append(2.0 * np.logical_and(reference, got).sum() / total)
    return float(np.mean(dice)) if dice else 1.0
