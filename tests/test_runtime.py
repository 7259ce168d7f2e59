"""oneDNN is turned on for CPU runs unless the user chose otherwise; ``auto`` mixed precision
follows the CPU's bfloat16 flags."""

import subprocess
import sys

import pytest

from conftest import REPO, subprocess_env

PROBE = (
    "import vnet_tf, tensorflow, os\n"
    "from vnet_tf.core.runtime import onednn_enabled\n"
    "print('ONEDNN', os.environ['TF_ENABLE_ONEDNN_OPTS'], onednn_enabled())\n"
)


def _probe(env_value):
    env = subprocess_env()
    env.pop("TF_ENABLE_ONEDNN_OPTS", None)
    if env_value is not None:
        env["TF_ENABLE_ONEDNN_OPTS"] = env_value
    out = subprocess.run([sys.executable, "-c", PROBE], env=env, cwd=REPO,
                         capture_output=True, text=True, encoding="utf-8", timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout.split("ONEDNN", 1)[1].split()


def test_importing_vnet_tf_turns_onednn_on():
    assert _probe(None) == ["1", "True"]


def test_user_choice_is_kept():
    assert _probe("0") == ["0", "False"]


def _cpuinfo(tmp_path, flags):
    path = tmp_path / "cpuinfo"
    path.write_text("".join(f"processor\t: {i}\nmodel name\t: test cpu avx512_bf16\nflags\t\t: {flags}\n\n"
                            for i in range(2)))
    return str(path)


@pytest.mark.parametrize("flags, native", [("fpu sse2 avx2 fma avx512f avx512_vnni avx512_bf16", True),
                                           ("fpu sse2 avx2 amx_tile amx_bf16 amx_int8", True),
                                           ("fpu sse2 avx2 fma f16c avx512f", False)])
def test_native_bf16_is_read_from_the_cpu_flags_line(tmp_path, flags, native):
    from vnet_tf.core.runtime import cpu_has_native_bf16, resolve_mixed_precision
    cpuinfo = _cpuinfo(tmp_path, flags)
    assert cpu_has_native_bf16(cpuinfo) is native
    # No GPU in this test process (CPU-only CI): auto follows the flags.
    assert resolve_mixed_precision("auto", cpuinfo) == ("mixed_bfloat16" if native else "none")
    for name in ("none", "mixed_float16", "mixed_bfloat16"):
        assert resolve_mixed_precision(name, cpuinfo) == name


def test_unreadable_cpuinfo_means_no_native_bf16(tmp_path):
    from vnet_tf.core.runtime import cpu_has_native_bf16, resolve_mixed_precision
    assert cpu_has_native_bf16(str(tmp_path / "missing")) is False
    assert resolve_mixed_precision("auto", str(tmp_path / "missing")) == "none"


def test_tensorflows_start_up_lines_are_told_from_other_native_lines():
    """What a command drops from its stderr unless --debug (the commands' own stderr, with
    TensorFlow loaded: test_train's multi-worker test, which runs train.py twice)."""
    from vnet_tf.commands.cli import _NATIVE_NOISE
    dropped = ["WARNING: All log messages before absl::InitializeLog() is called are written to STDERR",
               "E0000 00:00:1796595982.511660    3076 cuda_platform.cc:52] failed call to cuInit: INTERNAL",
               "I0000 00:00:1796595975.427288    3076 cudart_stub.cc:31] Could not find cuda drivers",
               "To enable the following instructions: AVX2 FMA, in other operations, rebuild TensorFlow",
               "I0000 00:00:1796601048.855721   27601 service.cc:161]   StreamExecutor [0]: Host, Default Version",
               "I0000 00:00:1796601052.203500   27601 device_compiler.h:208] Compiled cluster using XLA!"]
    assert all(_NATIVE_NOISE.match(line) for line in dropped)
    assert not _NATIVE_NOISE.match("E0000 00:00:1796595982.511660    3076 bfc_allocator.cc:12] out of memory")
    assert not _NATIVE_NOISE.match("error: --steps: expected a positive integer")


PEAK_PROBE = (
    "import os, numpy as np\n"
    "from vnet_tf.core.runtime import peak_rss_mb\n"
    "before = peak_rss_mb()\n"
    "block = np.ones(300 * 2**20, np.uint8)  # 300 MiB, every page touched\n"
    "resident = int(open('/proc/self/statm').read().split()[1]) * os.sysconf('SC_PAGE_SIZE') / 2**20\n"
    "print('PEAK', before, peak_rss_mb(), resident)\n"
)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads Linux's /proc")
def test_peak_memory_is_this_processs_own():
    """What training's and evaluate.py's summary.json report as ``peak_memory_mb``, in a small
    process started by this (larger) one, before and after it touches 300 MiB: its own peak,
    not the parent's (which ``ru_maxrss`` would carry over), and at least what it holds."""
    import numpy as np
    from vnet_tf.core.runtime import peak_rss_mb
    parent = np.ones(400 * 2**20, np.uint8)  # this process's peak over 400 MiB; the child's starts below it
    assert peak_rss_mb() >= 400
    out = subprocess.run([sys.executable, "-c", PEAK_PROBE], env=subprocess_env(), cwd=REPO,
                         capture_output=True, text=True, encoding="utf-8", timeout=120)
    del parent
    assert out.returncode == 0, out.stderr[-2000:]
    before, after, resident = map(float, out.stdout.split("PEAK", 1)[1].split())
    assert before < 150, before
    assert after >= resident >= 300, (after, resident)


def test_peak_memory_without_proc_is_ru_maxrss(tmp_path):
    import resource
    from vnet_tf.core.runtime import peak_rss_mb
    assert peak_rss_mb(str(tmp_path / "missing")) == resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
