"""What the commands (train.py, evaluate.py, export.py) share: one way to report errors.

:func:`run` runs an absl ``main``. An error the user can fix (:class:`app.UsageError`,
:class:`vnet_tf.core.errors.UserError`, an ``OSError`` such as a refused permission or a full
disk), or a flag absl cannot parse, is printed as ``error: ...`` lines naming the flag or file, with no traceback, and
the command exits with :data:`EXIT_USER_ERROR`; ``--debug`` shows the traceback too. Any
other exception is a bug and keeps its traceback.
"""

from __future__ import annotations

import functools
import sys
from typing import Sequence, Tuple

from absl import app, flags

from vnet_tf.core.errors import describe

EXIT_USER_ERROR = 2

flags.DEFINE_bool("debug", False, "on an error, show the Python traceback as well as the message")


def user_message(err: BaseException):
    """The text a user sees for ``err``, or ``None`` for a bug."""
    if isinstance(err, app.UsageError):
        return str(err)
    return describe(err)


def guarded(main):
    """``main`` that prints a user's error as ``error: ...`` and returns :data:`EXIT_USER_ERROR`."""
    @functools.wraps(main)
    def wrapped(argv):
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


def parse_flags(argv):
    """absl's flag parsing, with a bad flag reported as ``error: ...`` (no help text)."""
    try:
        return flags.FLAGS(argv)
    except flags.Error as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(EXIT_USER_ERROR)


def run(main, argv=None) -> None:
    """``absl.app.run`` with :func:`guarded` and :func:`parse_flags`; exits the process."""
    app.run(guarded(main), argv=argv, flags_parser=parse_flags)


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
