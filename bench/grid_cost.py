"""What predicting on a coarser grid costs at best, per grid: the Dice the reference labels keep
when taken to the grid and back, as the inference graph maps predictions back (probabilities,
trilinearly, then the argmax: vnet_tf.data.grid_cost, what vnet-plan uses) and as labels taken
back by nearest neighbour would be.

    python bench/grid_cost.py [--data=../shared/data/LA2018] [--grids=1.25,1.5,1.875,2.5] [--every=1]
"""

from __future__ import annotations

import argparse
import pathlib
import sys

import numpy as np
import SimpleITK as sitk

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
from vnet_tf.data.grid_cost import grid_dice  # noqa: E402  (the repository's library)


def nearest_dice(label: sitk.Image, spacing: float) -> float:
    """The foreground's Dice after the label is taken to the grid (nearest) and back (nearest)."""
    size = [max(1, int(round(n * s / spacing))) for n, s in zip(label.GetSize(), label.GetSpacing())]
    coarse = sitk.Resample(label, size, sitk.Transform(), sitk.sitkNearestNeighbor, label.GetOrigin(),
                           (spacing,) * 3, label.GetDirection(), 0, label.GetPixelID())
    back = sitk.GetArrayFromImage(sitk.Resample(coarse, label, sitk.Transform(), sitk.sitkNearestNeighbor, 0)) > 0
    reference = sitk.GetArrayViewFromImage(label) > 0
    return 2.0 * np.logical_and(back, reference).sum() / (back.sum() + reference.sum())


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="../shared/data/LA2018")
    parser.add_argument("--grids", default="1.25,1.5,1.875,2.5", help="isotropic spacings, mm")
    parser.add_argument("--every", type=int, default=1, help="use every n-th case")
    args = parser.parse_args()
    paths = sorted((pathlib.Path(args.data) / "labelsTr").glob("*.nii.gz"))[::args.every]
    labels = [sitk.ReadImage(str(p)) for p in paths]
    print(f"{len(labels)} cases of {args.data} (binary labels)\n")
    print("| grid (mm) | Dice kept: probabilities back, argmax (the graph) | labels back by nearest neighbour |")
    print("|---|---|---|")
    for grid in (float(g) for g in args.grids.split(",")):
        linear = [grid_dice(label, (grid,) * 3, 2) for label in labels]
        nearest = [nearest_dice(label, grid) for label in labels]
        print(f"| {grid:g} | {np.mean(linear):.4f} (min {np.min(linear):.4f}) | "
              f"{np.mean(nearest):.4f} (min {np.min(nearest):.4f}) |")


if __name__ == "__main__":
    main()
