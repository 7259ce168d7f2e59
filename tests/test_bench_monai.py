"""bench/bench_monai.py end to end in its --quick mode (tiny shapes, one repeat).

Needs torch and monai (requirements-bench.txt); skipped where they are absent, so the suite
itself never requires them.
"""

import importlib.util
import json
import math
import pathlib
import subprocess
import sys

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
MISSING = [name for name in ("torch", "monai") if importlib.util.find_spec(name) is None]

pytestmark = pytest.mark.skipif(
    bool(MISSING), reason=f"{' and '.join(MISSING)} not installed (pip install -r requirements-bench.txt)")


def test_quick_benchmark_runs_and_counts_the_same_flops(tmp_path):
    out = tmp_path / "bench.json"
    proc = subprocess.run([sys.executable, "bench/bench_monai.py", "--quick", f"--out={out}"], cwd=REPO,
                          capture_output=True, text=True, encoding="utf-8", timeout=900, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Ratios ours / MONAI" in proc.stdout
    results = json.loads(out.read_text())
    (cell,) = results["cells"]
    runs = {model: r[0] for model, r in cell["runs"].items()}
    assert set(runs) == {"ours_paper", "monai", "ours_monai_layout"}
    for model, run in runs.items():
        for key in ("forward", "train"):
            assert len(run[key]) == 1 and run[key][0] > 0, (model, key)
        assert run["rss_train_mb"] >= run["rss_base_mb"] > 0
        assert math.isfinite(run["matmul_gflops"]) and run["matmul_gflops"] > 0
        assert run["forward_flops"] < run["train_flops"] < 3 * run["forward_flops"]
    # Two independent counters (Keras layer shapes vs hooks on the torch convolutions) agree
    # on the same layout, and the paper layout does more work.
    assert runs["ours_monai_layout"]["forward_flops"] == runs["monai"]["forward_flops"]
    assert runs["ours_monai_layout"]["train_flops"] == runs["monai"]["train_flops"]
    assert runs["ours_paper"]["forward_flops"] > runs["monai"]["forward_flops"]
    if results["inference"] is not None:
        for model, r in results["inference"].items():
            assert len(r[0]["case_seconds"]) == 1 and r[0]["case_seconds"][0] > 0, model
