"""Server-side memory and response sizes of the exported SavedModel, in one run.

    python bench/bench_serving_memory.py [--shape 300,512,512] [--classes 3]

Exports a small 3-class model (random weights: memory and size do not depend on them) twice,
without resampling and resampling to 2.5 x 1.5 x 1.5 mm, and for each runs one request of a
synthetic ``--shape`` volume at 2.5 x 0.8 x 0.8 mm (z, y, x) in a fresh process that imports
only TensorFlow and loads the SavedModel: its peak resident memory (``VmHWM``; "after
load" is the peak once TensorFlow, the model and the request volume are in memory) and
seconds, for ``serving_default`` (labels) and ``predict_probabilities``. Also prints the
response sizes (gRPC ``PredictResponse`` bytes; REST JSON bytes where affordable) for a
hippocampus-sized scan and for ``--shape``. Prints Markdown tables.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import platform
import subprocess
import sys
import tempfile

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import vnet_tf  # noqa: E402,F401
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from vnet_tf.model.checkpoint import save_checkpoint  # noqa: E402
from vnet_tf.serving.exporter import export_run  # noqa: E402
from vnet_tf.model.vnet import VNetConfig, build_vnet  # noqa: E402

CHILD = """
import json, sys, time
import numpy as np
import tensorflow as tf
export, signature, shape = sys.argv[1], sys.argv[2], [int(s) for s in sys.argv[3].split(",")]


def peak_gb():  # VmHWM: this process's own peak (ru_maxrss would include the parent's at fork)
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 2**20



model = tf.saved_model.load(export)
array = np.empty(shape, np.float32)
rng = np.random.default_rng(0)
for z in range(shape[0]):  # one slice at a time: the request itself, and no float64 copy of it
    array[z] = rng.normal(100, 20, size=shape[1:])
volume = tf.constant(array)
del array
before = peak_gb()
start = time.perf_counter()
out = model.signatures[signature](volume=volume, spacing=tf.constant([2.5, 0.8, 0.8]),
                                  direction=tf.constant(np.eye(3, dtype=np.float32).ravel()))
labels = out["labels"].numpy()
seconds = time.perf_counter() - start
peak = peak_gb()
print(json.dumps({"peak_gb": peak, "loaded_gb": before, "seconds": seconds, "labels": list(labels.shape)}))
"""


def workdir(root: pathlib.Path, classes: int, target) -> pathlib.Path:
    model_config = VNetConfig(base_width=8, depth=4, kernel_size=3, normalization="instance", num_classes=classes)
    model = build_vnet(model_config)
    root.mkdir(parents=True)
    save_checkpoint(root / "best.npz", {"model": model.variables}, {"step": 0, "best_score": 0})
    config = {"model": {k: (list(v) if isinstance(v, tuple) else v) for k, v in vars(model_config).items()},
              "num_classes": classes, "input_channels": 1, "train_cases": [],
              "train": {"patch_size_zyx": [64, 128, 128], "weight_average": 0,
                        "preprocess": {"orientation": "LPS", "target_spacing_zyx": target, "image_interpolation": "linear",
                                       "label_interpolation": "nearest", "normalization": "zscore",
                                       "clip_percentiles": None, "crop_size_zyx": None, "n4": False},
                        "inference": {"overlap": 0.5, "batch_size": 2, "blend": "gaussian", "sigma_scale": 0.125,
                                      "mirror_axes": [], "postprocess": "none", "min_size": 0}}}
    (root / "config.json").write_text(json.dumps(config))
    return root


def response_bytes(shape, classes):
    from tensorflow_serving.apis import predict_pb2  # pylint: disable=import-outside-toplevel
    sizes = {}
    for name, outputs in (("labels", ["labels"]), ("labels + probabilities", ["labels", "probabilities"])):
        response = predict_pb2.PredictResponse()
        response.outputs["labels"].CopyFrom(tf.make_tensor_proto(np.zeros(shape, np.int32)))
        if "probabilities" in outputs:
            response.outputs["probabilities"].CopyFrom(tf.make_tensor_proto(np.zeros(shape + (classes,), np.float32)))
        sizes[name] = response.ByteSize()
    return sizes


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", default="300,512,512", help="z,y,x of the large request")
    parser.add_argument("--classes", type=int, default=3)
    args = parser.parse_args()
    shape = tuple(int(s) for s in args.shape.split(","))
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores; TensorFlow {tf.__version__}\n")
    hippocampus = (36, 50, 35)
    print("### Response sizes (gRPC PredictResponse bytes; labels int32, probabilities float32)\n")
    print("| scan | labels only | labels + probabilities |\n|---|---|---|")
    for label, s in ((f"hippocampus {hippocampus}", hippocampus), (f"{shape}", shape)):
        sizes = response_bytes(s, args.classes)
        print(f"| {label} | {sizes['labels'] / 2**20:.2f} MiB | {sizes['labels + probabilities'] / 2**20:.2f} MiB |")
    rest = len(json.dumps({"outputs": {"labels": np.zeros(hippocampus, np.int32).tolist(), "postprocess": "none"}}))
    print(f"\nREST JSON, labels only, hippocampus scan: {rest / 2**20:.2f} MiB\n")
    print(f"### Server-side memory, one request of {shape} at 2.5 x 0.8 x 0.8 mm, {args.classes} classes\n")
    print("| export | signature | network grid | peak RSS GB | after load GB | seconds |\n|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for name, target in (("no resampling", None), ("resampled to 2.5 x 1.5 x 1.5 mm", [2.5, 1.5, 1.5])):
            run = workdir(pathlib.Path(tmp) / name.replace(" ", "_"), args.classes, target)
            version = export_run(run, pathlib.Path(tmp) / "exports" / run.name, max_voxels=10**9)
            grid = shape if target is None else tuple(round(n * s / t) for n, s, t in zip(shape, (2.5, 0.8, 0.8), target))
            for signature in ("serving_default", "predict_probabilities"):
                out = subprocess.run([sys.executable, "-c", CHILD, str(version), signature, args.shape],
                                     capture_output=True, text=True, timeout=7200)
                if out.returncode:
                    print(f"| {name} | {signature} | {grid} | failed: {out.stderr.strip().splitlines()[-1][:200]} | | |")
                    continue
                result = json.loads(out.stdout.strip().splitlines()[-1])
                print(f"| {name} | {signature} | {grid} | {result['peak_gb']:.2f} | {result['loaded_gb']:.2f} | "
                      f"{result['seconds']:.0f} |", flush=True)


if __name__ == "__main__":
    main()
