"""Errors a user causes and can fix, and the text they are shown.

A :class:`UserError` is raised for bad data, settings, paths or a corrupt file; its message
names the file or setting, what was expected and what was found. The commands
(:mod:`vnet_tf.commands.cli`, ``python -m vnet_tf.data.check``) print it, or an ``OSError`` such as a
permission refused or a full disk, as a few ``error:`` lines with no traceback, and exit
non-zero. Any other exception is a bug and keeps its traceback.
"""

from __future__ import annotations

import errno
from typing import Optional


class UserError(ValueError):
    """An error in what the user gave (data, settings, paths, files), stated so they can fix it."""


def describe(err: BaseException) -> Optional[str]:
    """The message a user sees for ``err``, or ``None`` where it is not theirs to fix (a bug)."""
    if isinstance(err, UserError):
        return str(err)
    if isinstance(err, OSError):
        where = err.filename if err.filename is not None else ""
        reason = err.strerror or str(err)
        if err.errno == errno.ENOSPC:
            reason += " (free some space and run the command again; completed outputs were kept)"
        return f"{where}: {reason}" if where else reason
    return None
