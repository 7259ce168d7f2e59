"""Process-level TensorFlow settings that must happen before TensorFlow is imported, and what
the process and its machine are (CPU, native bfloat16, peak memory).

On x86 CPUs TensorFlow leaves its oneDNN kernels off unless ``TF_ENABLE_ONEDNN_OPTS`` is
set; on this project's reference machine turning them on made V-Net training steps
3-4x faster (see BENCHMARKS.md). Importing :mod:`vnet_tf` therefore sets the variable to
``1`` unless the user already set it (``TF_ENABLE_ONEDNN_OPTS=0`` keeps it off).
"""

import os
import sys
import warnings

ONEDNN_VARIABLE = "TF_ENABLE_ONEDNN_OPTS"


def enable_onednn_by_default() -> None:
    """Set ``TF_ENABLE_ONEDNN_OPTS=1`` unless the user chose a value.

    It only takes effect if TensorFlow has not been imported yet, so :mod:`vnet_tf`
    calls it first thing; a warning says when it came too late.
    """
    if ONEDNN_VARIABLE in os.environ:
        return
    os.environ[ONEDNN_VARIABLE] = "1"
    if "tensorflow" in sys.modules:
        warnings.warn(
            "vnet_tf was imported after TensorFlow, so TF_ENABLE_ONEDNN_OPTS=1 could not "
            "take effect; import vnet_tf first or set the variable in the environment.",
            RuntimeWarning,
            stacklevel=3,
        )


def onednn_enabled() -> bool:
    """Whether this process's TensorFlow runs its oneDNN (MKL) kernels."""
    from tensorflow.python.util import _pywrap_util_port  # pylint: disable=import-outside-toplevel

    return bool(_pywrap_util_port.IsMklEnabled())


# CPU flags (Linux /proc/cpuinfo names) of native bfloat16 arithmetic that oneDNN uses.
NATIVE_BF16_FLAGS = ("avx512_bf16", "amx_bf16")


def cpu_name(cpuinfo: str = "/proc/cpuinfo") -> str:
    """The CPU's model name (Linux), else what ``platform`` knows."""
    import platform  # pylint: disable=import-outside-toplevel
    try:
        with open(cpuinfo, encoding="utf-8", errors="replace") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_description() -> str:
    """The CPU, its core count and whether it has native bfloat16: what step times depend on."""
    import os  # pylint: disable=import-outside-toplevel
    bf16 = "with native bfloat16" if cpu_has_native_bf16() else "without native bfloat16"
    return f"{cpu_name()}, {os.cpu_count()} cores, {bf16}"


def cpu_has_native_bf16(cpuinfo: str = "/proc/cpuinfo") -> bool:
    """Whether the CPU computes bfloat16 natively (AVX512-BF16 or AMX); ``False`` where the
    flags cannot be read (not Linux)."""
    try:
        with open(cpuinfo, encoding="utf-8", errors="replace") as handle:
            text = handle.read()
    except OSError:
        return False
    flags = set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "flags":
            flags.update(value.split())
    return any(flag in flags for flag in NATIVE_BF16_FLAGS)


def peak_rss_mb(status: str = "/proc/self/status") -> float:
    """This process's peak resident memory so far, in MiB: Linux's ``VmHWM``, else
    ``ru_maxrss`` (which Linux carries over an exec from the parent process, so a command
    started by a larger process would report the parent's peak)."""
    try:
        with open(status, encoding="utf-8") as handle:
            for line in handle:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    import resource  # pylint: disable=import-outside-toplevel
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def resolve_mixed_precision(name: str, cpuinfo: str = "/proc/cpuinfo") -> str:
    """``auto`` becomes ``mixed_bfloat16`` when no GPU is visible and the CPU computes
    bfloat16 natively, else ``none``; any other name is returned as it is."""
    if name != "auto":
        return name
    import tensorflow as tf  # pylint: disable=import-outside-toplevel

    if tf.config.list_physical_devices("GPU"):
        return "none"
    return "mixed_bfloat16" if cpu_has_native_bf16(cpuinfo) else "none"
