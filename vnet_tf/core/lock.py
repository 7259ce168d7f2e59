"""One process at a time per output folder: a lock file that the kernel releases when its
holder ends, however it ends.

``train.py`` locks its workdir, ``evaluate.py`` and ``predict.py`` their output folders and
``export.py`` its export base, for the whole of their work there. A second process that
finds the folder locked stops with a :class:`~vnet_tf.core.errors.UserError` naming the
folder and the holder (pid, host, start time, command) before it writes anything.

How: the lock is an exclusive ``flock`` on ``FOLDER/.lock``, held through an open file for as
long as the work lasts; the file also records the holder for the message. The kernel drops
the lock when the holder exits or is killed (SIGKILL included), so a stopped run is resumed by
running the same command again: the stale lock file is simply locked anew. The file itself
stays, emptied by a holder that ends normally (removing it would let two processes lock two
different files of the same name).

On a network file system this is as strong as the system's own locking: NFSv4 and Linux's
NFSv3 client (through the lock manager) turn ``flock`` into a byte-range lock that every
client sees; a file system without lock support is reported as an error rather than run
unlocked.
"""

from __future__ import annotations

import contextlib
import datetime
import errno
import fcntl
import json
import os
import pathlib
import socket
import sys
from typing import Dict, Iterator

from vnet_tf.core.errors import UserError
from vnet_tf.core.io import PathLike

LOCK_FILE = ".lock"


def _holder_text(handle) -> str:
    """The holder recorded in the lock file, as a phrase (``"pid 12, host h, since ..."``)."""
    try:
        handle.seek(0)
        holder = json.loads(handle.read() or "{}")
    except (OSError, ValueError):
        holder = {}
    if not isinstance(holder, dict) or "pid" not in holder:
        return "a process that has not yet recorded itself"
    return (f"pid {holder.get('pid')} on host {holder.get('host', '?')}, since {holder.get('started', '?')}"
            f" ({holder.get('command', '?')})")


# The lock files this process holds, with how many ``with`` blocks hold each: a command may
# lock its output folder before loading a model, and the library call it makes locks it again.
_HELD: Dict[pathlib.Path, int] = {}


@contextlib.contextmanager
def folder_lock(folder: PathLike, what: str) -> Iterator[pathlib.Path]:
    """Holds the lock of ``folder`` (which must exist) while the ``with`` block runs; ``what``
    names the folder in messages (``"workdir"``, ``"--output_dir"``). Within one process the
    lock is re-entrant.

    Raises :class:`UserError` when another process holds it, or when the folder's file system
    cannot lock."""
    path = pathlib.Path(folder).resolve() / LOCK_FILE
    if path in _HELD:
        _HELD[path] += 1
        try:
            yield path
        finally:
            _HELD[path] -= 1
        return
    with _locked(path, folder, what):
        _HELD[path] = 1
        try:
            yield path
        finally:
            del _HELD[path]


@contextlib.contextmanager
def _locked(path: pathlib.Path, folder: PathLike, what: str) -> Iterator[None]:
    """The flock on ``path`` and the holder's record in it, for the ``with`` block."""
    try:
        handle = open(path, "a+", encoding="utf-8")  # pylint: disable=consider-using-with
    except OSError as err:
        raise UserError(f"{what} {folder}: expected a folder this user can write, but opening its lock file "
                        f"{path} failed: {err.strerror or err}") from err
    try:
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            if err.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise UserError(
                    f"{what} {folder}: in use by another process: {_holder_text(handle)}\n"
                    f"wait for it to finish, or use another folder; a stopped process releases the "
                    f"folder by itself") from err
            raise UserError(f"{what} {folder}: the file system cannot lock {path} ({err.strerror or err}); "
                            f"expected a local or NFS folder with locking") from err
        holder = {"pid": os.getpid(), "host": socket.gethostname(),
                  "started": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
                  "command": " ".join([pathlib.Path(sys.argv[0]).name, *sys.argv[1:]])[:300] if sys.argv else "?"}
        handle.seek(0)
        handle.truncate()
        handle.write(json.dumps(holder))
        handle.flush()
        try:
            yield
        finally:
            handle.seek(0)
            handle.truncate()  # still held: no other process reads the record half-cleared
    finally:
        handle.close()  # releases the lock
