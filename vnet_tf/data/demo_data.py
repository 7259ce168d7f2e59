"""The embedded default dataset: synthetic two-part spheres written in the MSD layout,
so that the demo run goes through the same file reading, checking and caching path as
real data. Written once into a folder (atomically) and reused."""

from __future__ import annotations

import json
import os
import pathlib
import shutil
import tempfile

import numpy as np

from vnet_tf.core.io import Geometry, PathLike, write_volume
from vnet_tf.data.synthetic import sphere_case

DEMO_SHAPE_ZYX = (32, 40, 36)
DEMO_GEOMETRY = Geometry((1.0, 1.0, 1.0), (0.0, 0.0, 0.0))


def write_demo_dataset(root: PathLike, num_cases: int = 16, seed: int = 0) -> pathlib.Path:
    """Writes (or reuses) ``num_cases`` MRI-like cases with labels {0, 1, 2} at ``root``."""
    root = pathlib.Path(root)
    if (root / "dataset.json").is_file():
        entries = json.loads((root / "dataset.json").read_text())["training"]
        if len(entries) == num_cases:
            return root
        raise ValueError(f"{root} holds a demo dataset of {len(entries)} cases, not {num_cases}; "
                         f"remove it or pick another folder")
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = pathlib.Path(tempfile.mkdtemp(prefix=f".{root.name}.", dir=root.parent))
    try:
        rng = np.random.default_rng(seed)
        entries = []
        for i in range(num_cases):
            image, label = sphere_case(DEMO_SHAPE_ZYX, rng, num_classes=3, noise=0.4)
            name = f"demo_{i:03d}.nii.gz"
            write_volume(tmp / "imagesTr" / name, 100.0 + 50.0 * image, DEMO_GEOMETRY)
            write_volume(tmp / "labelsTr" / name, label, DEMO_GEOMETRY)
            entries.append({"image": f"./imagesTr/{name}", "label": f"./labelsTr/{name}"})
        (tmp / "dataset.json").write_text(json.dumps({
            "name": "vnet_tf demo", "description": "synthetic spheres split in two labels",
            "tensorImageSize": "3D", "modality": {"0": "MRI"},
            "labels": {"0": "background", "1": "front", "2": "back"},
            "numTraining": num_cases, "training": entries}, indent=1))
        os.replace(tmp, root)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return root
