"""Inference and serving figures on this machine, in one run.

    python bench/bench_inference.py --workdir=runs/hippocampus --data_dir=../shared/data/Task04_Hippocampus

1. Library inference (``vnet_tf.inference.segmentation.predict_case`` over the inference graph) seconds per case of
   the data set's fold 0, with the run's settings, without and with test-time mirroring over all three axes.
2. The paper V-Net (random weights; speed only) on a 128x128x64 volume: one 64x128x128
   window, seconds per volume.
3. The run exported as a SavedModel (without mirroring; ``--served=run``: with the run's own
   inference settings, as ``export.py`` writes it): size on disk, load time in a fresh process, and
   ``serving_default`` latency on the first of those cases and on a 128x128x64 volume, against the
   library's inference on the same inputs (the same graph, so the ratio shows the cost of
   serving it from a SavedModel), and the serving process's peak resident memory (``VmHWM``)
   after the case, and after both.

Prints Markdown tables of medians (min-max).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import pathlib
import platform
import statistics
import subprocess
import sys
import tempfile
import time

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import vnet_tf  # noqa: E402,F401
import keras  # noqa: E402
import numpy as np  # noqa: E402
import SimpleITK as sitk  # noqa: E402
import tensorflow as tf  # noqa: E402

from vnet_tf.data.cases import find_cases, fold_of  # noqa: E402
from vnet_tf.serving.exporter import export_run  # noqa: E402
from vnet_tf.inference.config import InferenceConfig  # noqa: E402
from vnet_tf.inference.segmenter import Segmenter  # noqa: E402
from vnet_tf.core.io import read_image  # noqa: E402
from vnet_tf.inference.loading import load_segment  # noqa: E402
from vnet_tf.model.vnet import build_vnet  # noqa: E402
from vnet_tf.data.preprocess import PreprocessConfig  # noqa: E402
from vnet_tf.inference.segmentation import predict_case  # noqa: E402


def timed(fn, repeats):
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


def fmt(times):
    return f"{statistics.median(times):.3f} ({min(times):.3f}-{max(times):.3f})"


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", required=True)
    parser.add_argument("--data_dir", required=True)
    parser.add_argument("--cases", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--served", choices=("plain", "run"), default="plain",
                        help="the SavedModel without mirroring or post-processing (plain), or with the run's own "
                             "inference settings, as export.py writes it (run)")
    args = parser.parse_args()
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores; TensorFlow {tf.__version__}, Keras {keras.__version__}\n")

    inference = load_segment([args.workdir]).inference
    cases = [c for c in find_cases(args.data_dir).cases if fold_of(c.case_id, 5) == 0][: args.cases]
    images = [[read_image(p) for p in c.images] for c in cases]
    plain = dataclasses.replace(inference, mirror_axes=(), postprocess="none")
    mirrored = dataclasses.replace(inference, mirror_axes=(0, 1, 2), postprocess="none")
    rows = []
    for name, cfg in (("no mirroring", plain), ("mirroring over z, y, x (8 passes)", mirrored)):
        segment = load_segment([args.workdir], overrides={"mirror_axes": cfg.mirror_axes, "postprocess": "none"}).segment
        predict_case(images[0], segment)  # warm-up (tracing)
        per_case = [t for imgs in images for t in timed(lambda i=imgs: predict_case(i, segment), 1)]
        rows.append((name, per_case))
    print(f"### Library inference, {args.workdir} ({len(cases)} fold-0 cases, patch {inference.patch_size_zyx}, "
          f"overlap {inference.overlap})\n")
    print("| setting | seconds per case, median (min-max) |\n|---|---|")
    for name, times in rows:
        print(f"| {name} | {fmt(times)} |")

    paper = build_vnet()
    volume = np.random.default_rng(0).normal(size=(64, 128, 128, 1)).astype(np.float32)
    paper_cfg = InferenceConfig(patch_size_zyx=(64, 128, 128), batch_size=1)
    paper_window = Segmenter(paper, PreprocessConfig(), paper_cfg, 1, 2).sliding_window
    paper_window(tf.constant(volume))
    paper_times = timed(lambda: paper_window(tf.constant(volume)).numpy(), args.repeats)
    print("\n### Paper V-Net (5^3, width 16, depth 5), 128x128x64 volume, one window\n")
    print(f"| seconds per volume | {fmt(paper_times)} |\n|---|---|")

    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        # plain: no mirroring, which keeps the big volume affordable on any run
        served = {"postprocess": "none", "mirror_axes": ()} if args.served == "plain" else {}
        version = export_run(args.workdir, pathlib.Path(tmp) / "base", inference_overrides=served)
        export_s = time.perf_counter() - start
        size = sum(p.stat().st_size for p in version.rglob("*") if p.is_file())
        variables = sum(p.stat().st_size for p in (version / "variables").iterdir())
        case_volume = sitk.GetArrayFromImage(images[0][0]).astype(np.float32)
        case_spacing = list(images[0][0].GetSpacing()[::-1])
        case_direction = list(images[0][0].GetDirection())
        big = (100 + 20 * np.random.default_rng(1).normal(size=(64, 128, 128))).astype(np.float32)
        np.save(pathlib.Path(tmp) / "case.npy", case_volume)
        np.save(pathlib.Path(tmp) / "big.npy", big)
        code = (
            "import time, sys, numpy as np\n"
            "t0 = time.perf_counter()\n"
            "import tensorflow as tf\n"
            "t1 = time.perf_counter()\n"
            f"m = tf.saved_model.load({str(version)!r}); f = m.signatures['serving_default']\n"
            "t2 = time.perf_counter()\n"
            "print('import', t1 - t0, 'load', t2 - t1)\n"
            "def peak():\n"
            "    return next(int(l.split()[1]) / 2**20 for l in open('/proc/self/status') if l.startswith('VmHWM:'))\n"
            "print('loaded', peak())\n"
            f"for name in ('case', 'big'):\n"
            f"    v = tf.constant(np.load({tmp!r} + '/' + name + '.npy'))\n"
            f"    g = dict(spacing=tf.constant({case_spacing!r}), direction=tf.constant({case_direction!r}))\n"
            "    f(volume=v, **g)\n"
            "    ts = []\n"
            f"    for _ in range({args.repeats}):\n"
            "        s = time.perf_counter(); f(volume=v, **g)['labels'].numpy(); ts.append(time.perf_counter() - s)\n"
            "    print(name, ' '.join(str(t) for t in ts))\n"
            "    print(name + '_peak', peak())\n")
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=3600)
        if out.returncode:
            print(out.stderr[-3000:])
            return
        lines = dict(line.split(" ", 1) for line in out.stdout.strip().splitlines())
        load_s = float(lines["import"].split()[2])
        serve = {k: [float(t) for t in lines[k].split()] for k in ("case", "big")}
        lib = {}
        segment = load_segment([args.workdir], overrides=served).segment
        for name, vol in (("case", case_volume), ("big", big)):
            image = sitk.GetImageFromArray(vol)
            # The geometry the serving request gives both volumes: the case's spacing and direction.
            image.SetSpacing(images[0][0].GetSpacing())
            image.SetDirection(images[0][0].GetDirection())
            if name == "case":
                image.SetOrigin(images[0][0].GetOrigin())
            predict_case([image], segment)  # warm-up
            lib[name] = timed(lambda im=image: predict_case([im], segment), args.repeats)
    mirroring = "no mirroring" if args.served == "plain" else f"the run's mirroring over axes {inference.mirror_axes}"
    print(f"\n### SavedModel of {args.workdir} ({mirroring}, overlap {inference.overlap}, "
          f"patch {inference.patch_size_zyx})\n")
    print(f"size {size / 2**20:.1f} MiB (variables {variables / 2**20:.1f} MiB), export {export_s:.1f} s, "
          f"load {load_s:.2f} s in a fresh process; that process's peak resident memory {float(lines['loaded']):.2f} GB "
          f"loaded, {float(lines['case_peak']):.2f} GB after the case {case_volume.shape}, "
          f"{float(lines['big_peak']):.2f} GB after the 128x128x64 volume\n")
    print("| input | serving_default s | library s | serving / library |\n|---|---|---|---|")
    for name, label in (("case", f"fold-0 case {case_volume.shape}"), ("big", "128x128x64 volume (64, 128, 128)")):
        ratio = statistics.median(serve[name]) / statistics.median(lib[name])
        print(f"| {label} | {fmt(serve[name])} | {fmt(lib[name])} | {ratio:.2f} |")


if __name__ == "__main__":
    main()
