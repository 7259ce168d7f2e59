"""An exported ensemble against its members, on one real scan.

    python bench/check_ensemble_export.py --export=exports/ens/1 --case=SCAN.nii.gz \
        [--which=final] runs/fold0 runs/fold1 ...

Loads the SavedModel that `export.py --workdir=A,B,...` wrote, runs its `serving_default` on
the scan (reoriented to LPS, the training orientation, with its own spacing; timed on a second
call, after tracing), runs each member run's `--which` weights (final by default) through the
library's own inference, and prints the largest difference between the SavedModel's
probabilities and the members' mean, and how many voxels' labels differ. The unit tests check the same on a tiny model; this is
the check at full size.
"""

from __future__ import annotations

import argparse
import pathlib
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

import vnet_tf  # noqa: E402,F401  pylint: disable=wrong-import-position  (turns oneDNN on before TensorFlow)
import numpy as np  # noqa: E402  pylint: disable=wrong-import-position
import SimpleITK as sitk  # noqa: E402  pylint: disable=wrong-import-position
import tensorflow as tf  # noqa: E402  pylint: disable=wrong-import-position

from vnet_tf.exporter import restore_model  # noqa: E402  pylint: disable=wrong-import-position
from vnet_tf.inference import keras_predictor, predict_case  # noqa: E402  pylint: disable=wrong-import-position
from vnet_tf.training import run_configs  # noqa: E402  pylint: disable=wrong-import-position


def check(export, case, runs, which="final") -> dict:
    """Runs the SavedModel in ``export`` and the member ``runs`` (their ``which`` weights) on the
    scan ``case``; returns the shape, the SavedModel's seconds, the largest probability
    difference from the members' mean and the number of voxels whose label differs."""
    image = sitk.Cast(sitk.DICOMOrient(sitk.ReadImage(str(case)), "LPS"), sitk.sitkFloat32)
    request = {"volume": tf.constant(sitk.GetArrayFromImage(image)),
               "spacing": tf.constant(image.GetSpacing()[::-1], tf.float32)}  # z, y, x like the array
    serve = tf.saved_model.load(str(export)).signatures["serving_default"]
    serve(**request)
    start = time.perf_counter()
    out = serve(**request)
    seconds = time.perf_counter() - start
    members = []
    for run in runs:
        model, config = restore_model(run, which=which)
        preprocess, inference = run_configs(config)
        members.append(predict_case([image], keras_predictor(model), preprocess, inference,
                                    keep_probabilities=True).probabilities)
    mean = np.mean(members, axis=0)
    labels = out["labels"].numpy()
    return {"shape": tuple(request["volume"].shape), "seconds": seconds,
            "max_probability_difference": float(np.abs(out["probabilities"].numpy() - mean).max()),
            "labels_differing": int((labels != mean.argmax(-1)).sum()), "voxels": labels.size}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--export", required=True, help="the exported version folder (EXPORT_BASE/<n>)")
    parser.add_argument("--case", required=True, help="a scan to segment")
    parser.add_argument("--which", default="final", choices=("best", "final"),
                        help="the members' weights, as export.py --which was given")
    parser.add_argument("runs", nargs="+", help="the member runs' workdirs, as given to export.py")
    args = parser.parse_args(argv)
    if not (pathlib.Path(args.export) / "saved_model.pb").is_file():
        raise SystemExit(f"--export: expected a SavedModel folder (with saved_model.pb), got {args.export}")
    if not pathlib.Path(args.case).is_file():
        raise SystemExit(f"--case: expected a scan file, got {args.case} (not found)")
    result = check(args.export, args.case, args.runs, args.which)
    print(f"scan {args.case}: {result['shape']} voxels (z, y, x), {len(args.runs)} members")
    print(f"serving_default: {result['seconds']:.2f} s (second call)")
    print(f"largest |probability - members' mean|: {result['max_probability_difference']:.2e}")
    print(f"voxels whose label differs from the members' mean: {result['labels_differing']} of {result['voxels']}")


if __name__ == "__main__":
    main()
