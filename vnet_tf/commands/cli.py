"""What the commands (train.py, evaluate.py, export.py) share: one way to report errors.

:func:`run` runs an absl ``main``. An error the user can fix (:class:`app.UsageError`,
:class:`vnet_tf.core.errors.UserError`, an ``OSError`` such as a refused permission or a full
disk), or a flag absl cannot parse, is printed as ``error: ...`` lines naming the flag or file, with no traceback, and
the command exits with :data:`EXIT_USER_ERROR`; ``--debug`` shows the traceback too. Any
other exception is a bug and keeps its traceback.
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import io
import os
import pathlib
import re
import sys
import threading
from typing import List, Optional, Sequence, Tuple

from absl import app, flags

from vnet_tf.core.errors import UserError, describe

EXIT_USER_ERROR = 2

flags.DEFINE_bool("debug", False, "on an error, show the Python traceback as well as the message; and show "
                  "TensorFlow's native start-up log lines (CUDA probes, CPU features), which are dropped otherwise")


def user_message(err: BaseException):
    """The text a user sees for ``err``, or ``None`` for a bug."""
    if isinstance(err, app.UsageError):
        return str(err)
    return describe(err)


def guarded(main, quiet_native: bool = False):
    """``main`` that prints a user's error as ``error: ...`` and returns :data:`EXIT_USER_ERROR`;
    ``quiet_native``: TensorFlow's C++ start-up lines are dropped (:func:`filter_native_logs`)
    unless ``--debug`` is given."""
    @functools.wraps(main)
    def wrapped(argv):
        if quiet_native and not flags.FLAGS["debug"].value:
            filter_native_logs()
        try:
            return main(argv)
        except Exception as err:  # pylint: disable=broad-except
            text = user_message(err)
            if text is None or flags.FLAGS["debug"].value:
                raise
            print("\n".join(f"error: {line}" if i == 0 else f"       {line}"
                            for i, line in enumerate(text.splitlines() or [""])), file=sys.stderr)
            return EXIT_USER_ERROR
    return wrapped


_FLAGFILE = re.compile(r"^--?flagfile=(?P<path>.*)$")
_FLAGFILE_ALONE = ("--flagfile", "-flagfile")
Origin = Optional[Tuple[pathlib.Path, int]]  # (flagfile, line number) of an argument; None: the command line


def _read_flagfile(text: str, base: Optional[pathlib.Path], chain: List[pathlib.Path], where: str,
                   args: List[str], origins: List[Origin]) -> None:
    """Appends the lines of the flagfile ``text`` names to ``args``: relative to ``base`` (the
    including flagfile's folder; ``None``: the working directory), each nested ``--flagfile``
    in turn; ``chain`` holds the files being read, ``where`` says who names this one."""
    path = pathlib.Path(text).expanduser()
    if base is not None and not path.is_absolute():
        if not (base / path).is_file() and path.is_file():  # written for the working directory
            print(f"note: {where}: {text} is not in {base}, the including flagfile's folder; read "
                  f"{path.resolve()} from the working directory", file=sys.stderr)
        else:
            path = base / path
    key = path.resolve()
    if key in chain:
        raise UserError(f"{where}: --flagfile={text} includes itself: "
                        f"{' -> '.join(str(p) for p in [*chain, key])}")
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as err:
        reason = err.strerror if isinstance(err, OSError) and err.strerror else str(err)
        raise UserError(f"{where}: --flagfile={text}: cannot read {path.resolve()} ({reason})") from err
    for number, raw in enumerate(lines, start=1):
        line = raw.strip()
        if not line or line.startswith(("#", "//")):
            continue
        nested = _FLAGFILE.match(line)
        if nested:
            _read_flagfile(nested["path"], path.parent, [*chain, key], f"{path}, line {number}", args, origins)
        else:
            args.append(line)
            origins.append((path, number))


def expand_flagfiles(argv: Sequence[str]) -> Tuple[List[str], List[Origin]]:
    """``(args, origins)``: ``argv`` with each ``--flagfile=PATH`` replaced by that file's flags
    (in place, so that later flags override it, as absl does). A flagfile named on the command
    line is found from the working directory; one named inside a flagfile from that flagfile's
    folder (from the working directory where it is only there, with a note). A file that includes
    itself, directly or not, or cannot be read is a :class:`UserError` naming the flagfile and
    line that name it. ``origins[i]`` is the flagfile and line of ``args[i]``."""
    args, origins = list(argv[:1]), [None]
    rest = iter(argv[1:])
    for arg in rest:
        if arg == "--":
            args += [arg, *rest]
            origins += [None] * (len(args) - len(origins))
            break
        if arg in _FLAGFILE_ALONE:
            arg = f"--flagfile={next(rest, '')}"
        match = _FLAGFILE.match(arg)
        if match:
            _read_flagfile(match["path"], None, [], "the command line", args, origins)
        else:
            args.append(arg)
            origins.append(None)
    return args, origins


def _bad_flag_origin(err: flags.Error, args: Sequence[str], origins: Sequence[Origin]) -> str:
    """`` (in FILE, line N)`` for the flagfile line that set the flag ``err`` names, or ``""``."""
    found = re.search(r"--(\w+)|flag '(\w+)'", str(err))
    name = getattr(err, "flagname", None) or (found and (found[1] or found[2]))
    if not name:
        return ""
    spellings = (f"--{name}", f"-{name}", f"--no{name}", f"-no{name}")
    for arg, origin in reversed(list(zip(args, origins))):  # the last setting wins, as in absl
        if arg.split("=")[0] in spellings:
            return "" if origin is None else f" (in {origin[0]}, line {origin[1]})"
    return ""


def parse_flags(argv):
    """absl's flag parsing after :func:`expand_flagfiles`, with a bad flag or flagfile reported as
    ``error: ...`` naming the flagfile and line it came from (no help text)."""
    try:
        args, origins = expand_flagfiles(argv)
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(EXIT_USER_ERROR)
    try:
        return flags.FLAGS(args)
    except flags.Error as err:
        print(f"error: {err}{_bad_flag_origin(err, args, origins)}", file=sys.stderr)
        sys.exit(EXIT_USER_ERROR)


def positionals(argv, *names: str, repeat_last: bool = False) -> list:
    """The command's positional arguments after its flags (``argv[0]`` is the program): exactly
    one per name, or with ``repeat_last`` one or more for the last name; else an
    ``app.UsageError`` naming what was expected and what was found."""
    args = list(argv[1:])
    expected = " ".join(names) + (" ..." if repeat_last else "")
    if len(args) < len(names) or (len(args) > len(names) and not repeat_last):
        found = " ".join(args) if args else "none"
        raise app.UsageError(f"expected the arguments {expected}, found {found}")
    return args


def run(main, argv=None) -> None:
    """``absl.app.run`` with :func:`guarded` and :func:`parse_flags`; exits the process. Run as the
    process's command line (``argv`` None), it also filters TensorFlow's start-up lines."""
    app.run(guarded(main, quiet_native=argv is None), argv=argv, flags_parser=parse_flags)


# What TensorFlow's C++ side prints on starting on a machine without a GPU: absl's note on its
# log, the CUDA probes ("failed call to cuInit", which reads as a failure), oneDNN's and the
# CPU-feature notes, and XLA's notes when it first compiles (its service, its devices, "Compiled
# cluster using XLA"). None is the user's concern; --debug shows them.
_NATIVE_NOISE = re.compile(
    r"^(WARNING: All log messages before absl::InitializeLog\(\) is called are written to STDERR"
    r"|[IWE]\d{4} [\d:.]+ +\d+ (cudart_stub|cuda_platform|cuda_executor|cuda_dnn|cuda_fft|cuda_blas|port"
    r"|cpu_feature_guard|cpu_allocator_impl|service|dump_mlir_util|device_compiler)\.(cc|h):\d+\]"
    r"|To enable the following instructions:)")


def filter_native_logs() -> None:
    """From now on, lines written to the process's stderr by native code pass through a filter
    that drops :data:`_NATIVE_NOISE` and forwards every other line (a real C++ error included);
    Python's own ``sys.stderr`` writes straight to the terminal. Drained at exit."""
    sys.stderr.flush()
    real = os.dup(2)
    read, write = os.pipe()
    os.dup2(write, 2)
    os.close(write)
    sys.stderr = io.TextIOWrapper(io.FileIO(os.dup(real), "w"), encoding="utf-8", errors="replace",
                                  line_buffering=True)

    def pump():
        with io.FileIO(read, "r") as pipe:
            for line in io.BufferedReader(pipe):
                if not _NATIVE_NOISE.match(line.decode("utf-8", "replace")):
                    os.write(real, line)

    thread = threading.Thread(target=pump, name="native-log-filter", daemon=True)
    thread.start()

    def drain():
        os.dup2(real, 2)  # the pipe's last writer closes: the pump reads to its end
        thread.join(timeout=5)

    atexit.register(drain)


def output_folder_lock(folder, what: str):
    """The lock of the output folder ``folder`` where it exists already (where it does not, no
    other command can be writing it yet, and the library call locks it once created), so that
    a folder in use is refused before a model loads (:mod:`vnet_tf.core.lock`)."""
    from vnet_tf.core.lock import folder_lock  # pylint: disable=import-outside-toplevel
    return folder_lock(folder, what) if pathlib.Path(folder).is_dir() else contextlib.nullcontext()


def parse_mirror_axes(values: Sequence[str]) -> Tuple[int, ...]:
    """Axes from command-line text: integers among 0 (z), 1 (y), 2 (x), or ``["none"]`` for
    no mirroring. Raises ``ValueError`` naming ``mirror_axes``."""
    texts = [] if list(values) == ["none"] else list(values)
    try:
        axes = tuple(int(a) for a in texts)
    except ValueError as err:
        raise ValueError(f"mirror_axes: expected integers 0-2 or 'none', got {','.join(values)}") from err
    if any(a not in (0, 1, 2) for a in axes):
        raise ValueError(f"mirror_axes: expected integers 0-2 or 'none', got {','.join(values)}")
    return axes


def inference_overrides(overlap=None, mirror_axes=None, postprocess=None, window_batch=None) -> dict:
    """The run's inference settings that a command's flags override (``None``: keep the run's);
    a bad ``--mirror_axes`` is an ``app.UsageError`` naming it."""
    overrides = {}
    if overlap is not None:
        overrides["overlap"] = overlap
    if mirror_axes is not None:
        try:
            overrides["mirror_axes"] = parse_mirror_axes(mirror_axes)
        except ValueError as err:
            raise app.UsageError(f"--{err}") from err
    if postprocess is not None:
        overrides["postprocess"] = postprocess
    if window_batch is not None:
        overrides["batch_size"] = window_batch
    return overrides
