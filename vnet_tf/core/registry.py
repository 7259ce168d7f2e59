"""Named extension points: each name bound once to an implementation, looked up by name.

A :class:`Registry` holds either the implementation itself or a ``"module:attribute"`` text,
imported on first use, so that the names (a flag's choices) are known without importing
TensorFlow. Adding a loss or a network is one implementation and one :meth:`Registry.register`
call (or one entry in the registry's table); every place that builds one looks it up here.
"""

from __future__ import annotations

import importlib
from typing import Any, Dict, Tuple, Union

from vnet_tf.core.errors import UserError


class Registry:
    """Names to implementations for ``what`` (``"loss"``, ``"network"``), in registration order."""

    def __init__(self, what: str, entries: Dict[str, Union[str, Any]]):
        self.what = what
        self._entries: Dict[str, Union[str, Any]] = {}
        for name, entry in entries.items():
            self.register(name, entry)

    @property
    def names(self) -> Tuple[str, ...]:
        return tuple(self._entries)

    def register(self, name: str, entry: Union[str, Any]) -> Any:
        """Binds ``name`` to ``entry`` (an implementation, or ``"module:attribute"``); a name is
        bound once. Returns ``entry``."""
        if not isinstance(name, str) or not name.isidentifier():
            raise ValueError(f"{self.what} name must be an identifier, got {name!r}")
        if name in self._entries:
            raise ValueError(f"{self.what} {name!r} is registered already")
        self._entries[name] = entry
        return entry

    def check(self, name: str) -> str:
        """``name``, or a :class:`UserError` listing the registered names."""
        if name not in self._entries:
            raise UserError(f"{self.what} must be one of {self.names}, got {name!r}")
        return name

    def get(self, name: str) -> Any:
        """The implementation registered as ``name`` (imported on first use)."""
        entry = self._entries[self.check(name)]
        if isinstance(entry, str):
            module, _, attribute = entry.partition(":")
            entry = self._entries[name] = getattr(importlib.import_module(module), attribute)
        return entry
