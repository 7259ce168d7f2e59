"""vnet_tf against MONAI on this machine: training step, forward pass, peak memory, FLOP/s,
and sliding-window inference on hippocampus cases, measured side by side in one run.

    pip install -r requirements-bench.txt      # torch==2.13.0 (CPU) and monai
    python bench/bench_monai.py                # the full benchmark (about 30 minutes on 2 cores)
    python bench/bench_monai.py --quick        # tiny shapes, 1 repeat: checks the script runs

Every measurement runs in its own process (one framework per process, never both), with the
same number of threads for both frameworks (--threads, default 2), alternating the models
A B C A B C within each setting, after warm-up steps. Models:

- ``ours_paper``: vnet_tf's paper V-Net (5^3 kernels, PReLU, no normalisation, width 16);
- ``monai``: ``monai.networks.nets.VNet(spatial_dims=3, in_channels=1, out_channels=2)``
  with its defaults (ELU, batch norm, dropout 0.5), the model a MONAI user would pick;
- ``ours_monai_layout``: vnet_tf configured like MONAI's VNet (its convs per stage
  1 / 1,2,3,2 / 2,2,1,1, the extra 5^3 head conv, ELU, batch norm, no dropout).

Training step = forward + Dice loss + backward + SGD (momentum 0.99); ours is the library's
own compiled step (``vnet_tf.training.step.make_step``, what train.py runs). Forward = inference
mode without gradients. FLOPs are counted analytically from the layer shapes
(``bench/flops.py``; convolutions only, 2 per multiply-accumulate; MONAI's by the same rule
from hooks on its convolutions). The float32 matmul peak is measured in each process.
Peak memory is the process's peak resident set (``ru_maxrss``), framework import included;
"working" subtracts the resident set after import and model build.

Prints Markdown tables (medians, min-max, ratios ours / MONAI: < 1 means ours is faster)
and writes all raw timings as JSON (--out).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time

from bench_model import cpu_name  # noqa: E402  (same folder: bench/ is on sys.path)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATA = os.path.join(os.path.dirname(REPO), "shared", "data", "Task04_Hippocampus")
MODELS = ("ours_paper", "monai", "ours_monai_layout")
MONAI_LAYOUT = dict(variant="caffe", convs_left=(1, 1, 2, 3, 2), convs_right=(2, 2, 1, 1),
                    activation="elu", normalization="batch", kernel_size=5, base_width=16, depth=5)


def rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def current_rss_mb() -> float:
    with open("/proc/self/statm", encoding="ascii") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def timed(fn, warmup: int, repeats: int):
    times = []
    for i in range(warmup + repeats):
        start = time.perf_counter()
        fn()
        if i >= warmup:
            times.append(time.perf_counter() - start)
    return times


def hippocampus_volumes(count: int, crop=None):
    """The first ``count`` hippocampus images as z-scored float32 (z, y, x) arrays, cut to
    at most ``crop`` voxels per axis if given (--quick: one window per case)."""
    import glob  # pylint: disable=import-outside-toplevel
    import numpy as np  # pylint: disable=import-outside-toplevel
    import SimpleITK as sitk  # pylint: disable=import-outside-toplevel
    paths = sorted(glob.glob(os.path.join(DATA, "imagesTr", "hippocampus_*.nii.gz")))[:count]
    volumes = []
    for path in paths:
        array = sitk.GetArrayFromImage(sitk.ReadImage(path)).astype(np.float32)
        if crop:
            array = np.ascontiguousarray(array[tuple(slice(0, c) for c in crop)])
        volumes.append((array - array.mean()) / max(float(array.std()), 1e-6))
    return volumes


# --------------------------------------------------------------------------- ours (TF)

def ours_model(name: str):
    """vnet_tf's paper V-Net, or (``ours_monai_layout``) the same builder in MONAI's layout."""
    from vnet_tf.model.vnet import build_vnet  # pylint: disable=import-outside-toplevel
    return build_vnet(**MONAI_LAYOUT) if name == "ours_monai_layout" else build_vnet()


def ours_batch(shape, batch_size: int) -> dict:
    """A fixed random (image, binary label) batch as TensorFlow constants."""
    import numpy as np  # pylint: disable=import-outside-toplevel
    import tensorflow as tf  # pylint: disable=import-outside-toplevel
    rng = np.random.default_rng(0)
    return {"image": tf.constant(rng.standard_normal((batch_size, *shape, 1), dtype=np.float32)),
            "label": tf.constant(rng.integers(0, 2, (batch_size, *shape)).astype("int32"))}


def ours_train_step(model, batch_size: int):
    """The library's compiled training step (what train.py runs) with Dice loss and SGD 0.99."""
    import keras  # pylint: disable=import-outside-toplevel
    import tensorflow as tf  # pylint: disable=import-outside-toplevel
    from vnet_tf.model.losses import DiceLoss  # pylint: disable=import-outside-toplevel
    from vnet_tf.training.step import make_step  # pylint: disable=import-outside-toplevel
    optimizer = keras.optimizers.SGD(1e-4, momentum=0.99)
    optimizer.build(model.trainable_variables)
    return make_step(model, optimizer, DiceLoss(reduction="none"), None, tf.distribute.get_strategy(), batch_size)


def ours_worker(args) -> dict:
    sys.path.insert(0, REPO)
    import vnet_tf  # noqa: F401  pylint: disable=import-outside-toplevel,unused-import
    import tensorflow as tf  # pylint: disable=import-outside-toplevel
    tf.config.threading.set_intra_op_parallelism_threads(args.threads)
    tf.config.threading.set_inter_op_parallelism_threads(args.tf_inter_op)
    import keras  # pylint: disable=import-outside-toplevel
    from flops import count_flops  # pylint: disable=import-outside-toplevel  (bench/flops.py)
    from vnet_tf.core.runtime import onednn_enabled  # pylint: disable=import-outside-toplevel

    keras.utils.set_random_seed(0)
    n = args.matmul_size
    a, b = tf.random.normal((n, n)), tf.random.normal((n, n))
    matmul = tf.function(tf.linalg.matmul)
    mm_times = timed(lambda: matmul(a, b).numpy(), 1, args.matmul_repeats)
    matmul_gflops = 2 * n ** 3 / min(mm_times) / 1e9

    model = ours_model(args.worker)
    result = {"onednn": onednn_enabled(), "params": model.count_params(), "matmul_gflops": matmul_gflops}
    if args.mode == "infer":
        from vnet_tf.inference.config import InferenceConfig  # pylint: disable=import-outside-toplevel
        from vnet_tf.inference.segmenter import Segmenter  # pylint: disable=import-outside-toplevel
        from vnet_tf.data.preprocess import PreprocessConfig  # pylint: disable=import-outside-toplevel
        config = InferenceConfig(patch_size_zyx=tuple(args.roi), overlap=0.5, batch_size=args.sw_batch)
        volumes = hippocampus_volumes(args.cases + 1, args.roi if args.crop_cases else None)
        window = Segmenter(model, PreprocessConfig(), config, 1, model.output_shape[-1]).sliding_window
        window(tf.constant(volumes[0][..., None], tf.float32))  # warm-up case
        result["case_seconds"] = [timed(lambda v=v: window(tf.constant(v[..., None], tf.float32)).numpy(), 0, 1)[0]
                                  for v in volumes[1:]]
        return result

    flops = count_flops(model, args.shape, args.batch)
    result.update(forward_flops=flops.forward, train_flops=flops.train)
    batch = ours_batch(args.shape, args.batch)
    result["rss_base_mb"] = current_rss_mb()

    forward = tf.function(lambda inputs: model(inputs, training=False))
    result["forward"] = timed(lambda: forward(batch["image"]).numpy(), args.warmup, args.repeats)
    result["rss_forward_mb"] = rss_mb()

    step = ours_train_step(model, args.batch)
    result["train"] = timed(lambda: float(step(batch)), args.warmup, args.repeats)
    result["rss_train_mb"] = rss_mb()
    return result


# --------------------------------------------------------------------------- MONAI (torch)

def monai_worker(args) -> dict:
    # MONAI imports TensorFlow when it is installed (for its optional TensorBoard support),
    # which would add ~600 MB to its resident set; a MONAI user's environment has no
    # TensorFlow, so block it here (MONAI handles the ImportError).
    sys.modules["tensorflow"] = None
    import numpy as np  # pylint: disable=import-outside-toplevel
    import torch  # pylint: disable=import-outside-toplevel
    torch.set_num_threads(args.threads)
    from monai.losses import DiceLoss  # pylint: disable=import-outside-toplevel
    from monai.networks.nets import VNet  # pylint: disable=import-outside-toplevel

    torch.manual_seed(0)
    n = args.matmul_size
    a, b = torch.randn(n, n), torch.randn(n, n)
    mm_times = timed(lambda: torch.mm(a, b), 1, args.matmul_repeats)
    model = VNet(spatial_dims=3, in_channels=1, out_channels=2)
    result = {"torch": torch.__version__, "params": sum(p.numel() for p in model.parameters()),
              "matmul_gflops": 2 * n ** 3 / min(mm_times) / 1e9}
    if args.mode == "infer":
        from monai.inferers import sliding_window_inference  # pylint: disable=import-outside-toplevel
        model.eval()
        volumes = hippocampus_volumes(args.cases + 1, args.roi if args.crop_cases else None)

        def predict(volume):
            with torch.no_grad():
                logits = sliding_window_inference(torch.from_numpy(volume)[None, None], tuple(args.roi),
                                                  args.sw_batch, model, overlap=0.5, mode="gaussian")
                return torch.softmax(logits, dim=1).numpy()

        predict(volumes[0])
        result["case_seconds"] = [timed(lambda v=v: predict(v), 0, 1)[0] for v in volumes[1:]]
        return result

    rng = np.random.default_rng(0)
    x = torch.from_numpy(rng.standard_normal((args.batch, 1, *args.shape), dtype=np.float32))
    y = torch.from_numpy(rng.integers(0, 2, (args.batch, 1, *args.shape)).astype(np.int64))
    result["rss_base_mb"] = current_rss_mb()

    model.eval()

    def forward():
        with torch.no_grad():
            return model(x)

    result["forward"] = timed(forward, args.warmup, args.repeats)
    result["rss_forward_mb"] = rss_mb()

    model.train()
    loss_fn = DiceLoss(to_onehot_y=True, softmax=True)
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.99)
    counted = []

    def count(module, inputs, output):
        kernel = module.kernel_size
        c_in, c_out = inputs[0].shape[1], output.shape[1]
        voxels = inputs[0][:, 0].numel() if isinstance(module, torch.nn.ConvTranspose3d) else output[:, 0].numel()
        counted.append((2 * kernel[0] * kernel[1] * kernel[2] * c_in * c_out * voxels, inputs[0].requires_grad))

    hooks = [m.register_forward_hook(count) for m in model.modules()
             if isinstance(m, (torch.nn.Conv3d, torch.nn.ConvTranspose3d))]

    def train_step():
        optimizer.zero_grad(set_to_none=True)
        loss = loss_fn(model(x), y)
        loss.backward()
        optimizer.step()
        return float(loss)

    train_step()  # counts the FLOPs (not timed; the timed warm-up follows)
    for hook in hooks:
        hook.remove()
    forward_flops = sum(f for f, _ in counted)
    result.update(forward_flops=forward_flops,
                  train_flops=2 * forward_flops + sum(f for f, needs_grad in counted if needs_grad))
    result["train"] = timed(train_step, max(args.warmup - 1, 0), args.repeats)
    result["rss_train_mb"] = rss_mb()
    return result


# --------------------------------------------------------------------------- driver

def run_worker(args, model, mode, shape=None, batch=1, warmup=1, repeats=1):
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", model, "--mode", mode,
           "--threads", str(args.threads), "--tf_inter_op", str(args.tf_inter_op),
           "--warmup", str(warmup), "--repeats", str(repeats), "--batch", str(batch),
           "--matmul_size", str(args.matmul_size), "--matmul_repeats", str(args.matmul_repeats),
           "--cases", str(args.cases), *(["--crop_cases"] if args.crop_cases else []), "--sw_batch", str(args.sw_batch), "--roi", *map(str, args.roi)]
    if shape:
        cmd += ["--shape", *map(str, shape)]
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", OMP_NUM_THREADS=str(args.threads),
               PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    lines = [line for line in out.stdout.splitlines() if line.startswith("RESULT ")]
    if out.returncode != 0 or not lines:
        raise RuntimeError(f"worker {model} {mode} {shape} batch {batch} failed (exit {out.returncode}):\n"
                           f"{out.stderr[-3000:]}")
    return json.loads(lines[-1][len("RESULT "):])


def med(values):
    return statistics.median(values)


def fmt(values):
    if not values:
        return "n/a"
    return f"{med(values):.3f} ({min(values):.3f}-{max(values):.3f})"


def machine() -> str:
    return f"{cpu_name()}, {os.cpu_count()} cores"


def settings(args):
    """(shape, batch, rounds, warmup, repeats) cells, in the order they are run."""
    if args.quick:
        return [((32, 32, 32), 1, 1, 1, 1)]  # MONAI batch norm needs > 1 value at the bottom
    cells = []
    shapes = (((64, 64, 32), args.rounds, 1, 3), ((128, 128, 64), args.rounds, 1, 1))
    for shape, rounds, warmup, repeats in shapes[:1] if args.small_only else shapes:
        for batch in (1, 2):
            # The largest cell (128x128x64, batch 2: ~80 s per MONAI step) runs one round to
            # keep the whole benchmark near 30 minutes.
            big = shape == (128, 128, 64) and batch == 2
            cells.append((shape, batch, 1 if big else rounds, warmup, repeats))
    return cells


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="tiny shapes, 1 round, 1 repeat")
    parser.add_argument("--rounds", type=int, default=2, help="A B C alternations per setting")
    parser.add_argument("--small_only", action="store_true", help="only the 64x64x32 settings")
    parser.add_argument("--threads", type=int, default=2, help="compute threads, both frameworks")
    parser.add_argument("--tf_inter_op", type=int, default=1, help="TensorFlow inter-op threads")
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    parser.add_argument("--cases", type=int, default=10, help="hippocampus cases timed per process")
    parser.add_argument("--roi", type=int, nargs=3, default=[32, 48, 32], help="sliding window (z y x)")
    parser.add_argument("--sw_batch", type=int, default=2, help="windows per forward pass")
    parser.add_argument("--crop_cases", action="store_true", help="cut cases to the window (one window each)")
    parser.add_argument("--matmul_size", type=int, default=2048)
    parser.add_argument("--matmul_repeats", type=int, default=5)
    parser.add_argument("--no_inference", action="store_true", help="skip the hippocampus inference part")
    parser.add_argument("--out", default=os.path.join(REPO, "runs", "bench_monai.json"), help="raw results (JSON)")
    # worker-only arguments
    parser.add_argument("--worker", choices=MODELS, help=argparse.SUPPRESS)
    parser.add_argument("--mode", choices=("step", "infer"), default="step", help=argparse.SUPPRESS)
    parser.add_argument("--shape", type=int, nargs=3, default=[64, 64, 32], help=argparse.SUPPRESS)
    parser.add_argument("--batch", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--warmup", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--repeats", type=int, default=1, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        result = monai_worker(args) if args.worker == "monai" else ours_worker(args)
        print("RESULT " + json.dumps(result), flush=True)
        return 0
    if args.quick:
        args.rounds, args.cases, args.roi, args.matmul_size, args.matmul_repeats = 1, 1, [32, 32, 32], 256, 1
        args.crop_cases = True
    for name in ("torch", "monai"):
        if importlib.util.find_spec(name) is None:
            parser.error(f"{name} is not installed: pip install -r requirements-bench.txt")

    print(f"machine: {machine()}; python {platform.python_version()}")
    print(f"command: python bench/bench_monai.py {' '.join(argv if argv is not None else sys.argv[1:])}".rstrip())
    started = time.perf_counter()
    results = {"cells": [], "inference": None, "args": vars(args)}
    for shape, batch, rounds, warmup, repeats in settings(args):
        runs = {m: [] for m in args.models}
        for _ in range(rounds):
            for model in args.models:
                runs[model].append(run_worker(args, model, "step", shape, batch, warmup, repeats))
        results["cells"].append({"shape": shape, "batch": batch, "runs": runs})
        print(f"  done {shape} batch {batch} ({time.perf_counter() - started:.0f} s)", flush=True)
    if not args.no_inference and os.path.isdir(DATA):
        runs = {m: [] for m in args.models}
        for _ in range(args.rounds):
            for model in args.models:
                runs[model].append(run_worker(args, model, "infer"))
        results["inference"] = runs
    elif not args.no_inference:
        print(f"  inference skipped: {DATA} not found")
    results["seconds"] = time.perf_counter() - started
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w", encoding="ascii") as out:
        json.dump(results, out, indent=1)
    print_tables(results, args.models)
    return 0


def collect(runs, key):
    return [t for run in runs for t in run.get(key, [])]


def working(runs) -> float:
    """Peak training RSS above the RSS after import and model build (MB), over processes."""
    return max(r["rss_train_mb"] - r["rss_base_mb"] for r in runs)


def print_tables(results, models):
    print("\nSeconds per step, median (min-max) over processes x timed steps; "
          "FLOP/s from the median; % of the float32 matmul peak measured in the same processes.\n")
    print("| shape | batch | pass | model | seconds | GFLOP/step | GFLOP/s | % matmul peak | peak RSS MB (working) |")
    print("|---|---|---|---|---|---|---|---|---|")
    ratios = []
    for cell in results["cells"]:
        shape, batch, runs = cell["shape"], cell["batch"], cell["runs"]
        for kind in ("train", "forward"):
            medians = {}
            for model in models:
                times = collect(runs[model], kind)
                first = runs[model][0]
                flops = first[f"{kind}_flops"]
                medians[model] = med(times)
                peak = med([r["matmul_gflops"] for r in runs[model]])
                rss = max(r[f"rss_{kind}_mb"] for r in runs[model])
                base = min(r["rss_base_mb"] for r in runs[model])
                print(f"| {'x'.join(map(str, shape))} | {batch} | {kind} | {model} | {fmt(times)} | "
                      f"{flops / 1e9:.1f} | {flops / medians[model] / 1e9:.1f} | "
                      f"{100 * flops / medians[model] / 1e9 / peak:.0f} % of {peak:.0f} | {rss:.0f} ({rss - base:.0f}) |")
            if "monai" in medians:
                row = {"shape": shape, "batch": batch, "pass": kind}
                for model in ("ours_paper", "ours_monai_layout"):
                    if model in medians:
                        row[model] = medians[model] / medians["monai"]
                if kind == "train":
                    for model in ("ours_paper", "ours_monai_layout"):
                        if model in runs:
                            row[f"mem_{model}"] = (max(r["rss_train_mb"] for r in runs[model])
                                                   / max(r["rss_train_mb"] for r in runs["monai"]))
                            row[f"work_{model}"] = working(runs[model]) / working(runs["monai"])
                ratios.append(row)
    if results["inference"]:
        print("\nSliding-window inference, seconds per hippocampus case, median (min-max):\n")
        print("| model | seconds per case |\n|---|---|")
        for model, runs in results["inference"].items():
            print(f"| {model} | {fmt(collect(runs, 'case_seconds'))} |")
    print("\nRatios ours / MONAI (< 1: ours faster or smaller):\n")
    print("| shape | batch | pass | paper V-Net / MONAI VNet | MONAI layout / MONAI VNet | "
          "peak RSS paper / MONAI | peak RSS layout / MONAI | working paper / MONAI | working layout / MONAI |")
    print("|---|---|---|---|---|---|---|---|---|")
    for row in ratios:
        cells = [f"{row[k]:.2f}x" if k in row else "" for k in
                 ("ours_paper", "ours_monai_layout", "mem_ours_paper", "mem_ours_monai_layout",
                  "work_ours_paper", "work_ours_monai_layout")]
        print(f"| {'x'.join(map(str, row['shape']))} | {row['batch']} | {row['pass']} | " + " | ".join(cells) + " |")
    if results["inference"] and "monai" in results["inference"]:
        base = med(collect(results["inference"]["monai"], "case_seconds"))
        cells = [f"{med(collect(results['inference'][m], 'case_seconds')) / base:.2f}x"
                 if m in results["inference"] else "" for m in ("ours_paper", "ours_monai_layout")]
        print(f"| hippocampus cases | {results['args']['sw_batch']} windows | sliding window | "
              + " | ".join(cells) + " |  |  |  |  |")
    print(f"\ntotal {results['seconds'] / 60:.1f} min")


if __name__ == "__main__":
    sys.exit(main())
