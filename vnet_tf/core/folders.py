"""Output folders: checked before any work, and cleared of what a killed process left.

Every file this project writes goes first to a temporary name in the same folder and is
renamed into place when complete, so a killed process leaves at worst a temporary behind.
:func:`remove_stale` deletes those (only names matching the project's own temporaries, and
only files older than this process) when the next run, cache or export starts there.
"""

from __future__ import annotations

import os
import pathlib
import shutil
import tempfile
import time
from typing import Callable, List, Sequence

from vnet_tf.core.errors import UserError
from vnet_tf.core.io import VOLUME_SUFFIXES, PathLike

PROCESS_STARTED = time.time()

# The temporaries each writer uses (glob patterns), by the folder they are written into
# (".*.tmp.keras": the .keras files that runs of earlier versions wrote beside their checkpoints).
CHECKPOINT_TEMPORARIES = (".*.npz.*.tmp", ".*.tmp.keras", ".*.json.*.tmp", ".*.txt.*.tmp")
CACHE_TEMPORARIES = (".*.npz.*.tmp", ".*.json.*.tmp")
EXPORT_TEMPORARIES = (".tmp-*",)
VOLUME_TEMPORARIES = tuple(f".*{suffix}.*" for suffix in VOLUME_SUFFIXES)


def writable_folder(path: PathLike, what: str, create: bool = True) -> pathlib.Path:
    """Creates the folder ``path`` where needed and checks that a file can be written in it
    (``create=False``: checks without creating it, in its closest existing parent).

    Raises :class:`UserError` naming ``what`` (e.g. ``"workdir"``) and the path where it, or a
    folder above it, is a file, or where it cannot be created or written."""
    path = pathlib.Path(path)
    for item in (path, *path.parents):
        if item.exists() and not item.is_dir():
            where = "" if item == path else f" ({item} is a file)"
            raise UserError(f"{what} {path}: expected a folder, found a file{where}")
    probe_in = path if create else next(item for item in (path, *path.parents, pathlib.Path(".")) if item.exists())
    try:
        if create:
            path.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".write-test-", dir=probe_in)
        os.close(fd)
        os.remove(probe)
    except OSError as err:
        raise UserError(f"{what} {path}: expected a folder this user can write, but writing there "
                        f"failed: {err.strerror or err}") from err
    return path


def remove_stale(folder: PathLike, patterns: Sequence[str], before: float = PROCESS_STARTED) -> List[pathlib.Path]:
    """Deletes the entries of ``folder`` matching ``patterns`` last modified before ``before``
    (by default: this process's start); returns them."""
    folder = pathlib.Path(folder)
    removed = []
    if not folder.is_dir():
        return removed
    for pattern in patterns:
        for item in folder.glob(pattern):
            try:
                if item.lstat().st_mtime >= before:
                    continue
                if item.is_dir() and not item.is_symlink():
                    shutil.rmtree(item)
                else:
                    item.unlink()
                removed.append(item)
            except OSError:  # gone already, or not ours to remove: leave it
                continue
    return removed


def atomic_write(path: PathLike, write: Callable, mode: str = "wb") -> pathlib.Path:
    """Runs ``write(handle)`` on a temporary file beside ``path``, flushes it to disk and
    renames it to ``path``: a reader (or a process killed meanwhile) sees the old file or the
    new one, complete. The temporary is removed where ``write`` fails (a full disk)."""
    path = pathlib.Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, mode, **({} if "b" in mode else {"encoding": "utf-8"})) as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return path


def atomic_write_text(path: PathLike, text: str) -> pathlib.Path:
    """Writes ``text`` to ``path`` with :func:`atomic_write`."""
    return atomic_write(path, lambda handle: handle.write(text), "w")
