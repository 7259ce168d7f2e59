"""Reading ``.npz`` files from several threads at once.

numpy parses the header of every array it reads with ``ast.literal_eval``. CPython 3.11's
AST builder keeps its recursion depth in one state shared by all threads, so when a garbage
collection in the middle of a parse runs a Python finaliser and the interpreter switches to
another thread that parses too, one of the two fails with ``SystemError: AST constructor
recursion depth mismatch`` (python/cpython#106905 and the reports around it). The training
pipeline and the cache read cases in parallel threads, and this project's test suite failed
that way once while loading cached cases. Every ``.npz`` read in vnet_tf therefore goes
through :func:`load_npz`, which reads under one process-wide lock: the arrays vnet_tf stores
are uncompressed, so the reads it serialises are memory copies once the file is cached.
"""

from __future__ import annotations

import threading
from typing import Callable, Dict, Iterable, Union

import numpy as np

from vnet_tf.core.io import PathLike

_READ_LOCK = threading.Lock()


def load_npz(path: PathLike,
             keys: Union[None, Iterable[str], Callable[[str], bool]] = None) -> Dict[str, np.ndarray]:
    """The arrays of the ``.npz`` file at ``path`` by name: all of them, those of ``keys``
    that it holds (a key it lacks is left out, so callers can test for optional arrays), or,
    where ``keys`` is a function, those whose name it accepts. Only the chosen arrays are read.
    Reads under a lock shared by every thread of the process (see the module docstring);
    errors are numpy's own (``OSError`` for a missing or unreadable file)."""
    with _READ_LOCK:
        with np.load(path) as data:
            if keys is None:
                names = data.files
            elif callable(keys):
                names = [name for name in data.files if keys(name)]
            else:
                names = [name for name in keys if name in data.files]
            return {name: data[name] for name in names}
