"""Time to check, and to preprocess + cache, a dataset (cold and warm cache).

    python bench/bench_data.py ../shared/data/Task04_Hippocampus

The cold run preprocesses every case into a fresh temporary cache; the warm run finds
every case already cached; the read loads every cached case into memory as the training
pipeline does (``CaseStore``, 4 threads). Preprocessing: reorient to LPS, resample to 1 mm,
z-score.
"""

import argparse
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from vnet_tf.data.cache import preprocess_dataset  # noqa: E402
from vnet_tf.data.cases import find_cases  # noqa: E402
from vnet_tf.data.check import check_dataset  # noqa: E402
from vnet_tf.training.pipeline import CaseStore  # noqa: E402
from vnet_tf.data.preprocess import PreprocessConfig  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("data_dir")
    parser.add_argument("--workers", type=int, default=None, help="default: all cores")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    dataset = find_cases(args.data_dir)
    config = PreprocessConfig(target_spacing_zyx=(1.0, 1.0, 1.0), normalization="zscore")
    check, cold, warm, read = [], [], [], []
    for _ in range(args.repeats):
        start = time.perf_counter()
        report = check_dataset(dataset, workers=args.workers)
        check.append(time.perf_counter() - start)
        assert report.ok, report.summary()
        with tempfile.TemporaryDirectory() as cache:
            start = time.perf_counter()
            preprocess_dataset(dataset.cases, config, cache, workers=args.workers)
            cold.append(time.perf_counter() - start)
            start = time.perf_counter()
            paths = preprocess_dataset(dataset.cases, config, cache, workers=args.workers)
            warm.append(time.perf_counter() - start)
            start = time.perf_counter()
            CaseStore(paths, workers=4)
            read.append(time.perf_counter() - start)
    n = len(dataset.cases)
    print(f"{n} cases, {os.cpu_count()} cores, workers={args.workers or os.cpu_count()}")
    print("| step | median s (min–max) | ms per case |\n|---|---|---|")
    for name, times in (("check", check), ("preprocess + cache, cold", cold), ("preprocess + cache, warm", warm),
                        ("read every cached case (CaseStore, 4 threads)", read)):
        median = sorted(times)[len(times) // 2]
        print(f"| {name} | {median:.2f} ({min(times):.2f}–{max(times):.2f}) | {1000 * median / n:.1f} |")


if __name__ == "__main__":
    main()
