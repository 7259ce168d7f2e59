"""Settings defined once: each field of a config dataclass carries its command-line flag (name,
help, bounds, choices) as field metadata, so that the flags, the flag-to-setting mapping, the
flag reference and the planner's flagfiles are all generated from the dataclasses.

- :func:`flag` declares a field with a flag; :func:`no_flag` one without, and why;
  :func:`group` a nested config, with the stage its flags are listed under and the flags its
  fields get in this context (a nested class used by several commands names no flags itself).
- :func:`settings` walks a config class into :class:`Setting` rows (dotted path, type,
  default, flag), the defaults read from the default instances of the nested configs.
- :func:`parse_text` and :func:`format_value` turn a list flag's text into the field's value
  and back, the same way for the command line and for the planner's flagfile.

Nothing here imports TensorFlow or absl: the commands define the flags (:mod:`vnet_tf.commands`).
"""

from __future__ import annotations

import dataclasses
import typing
from typing import Any, Dict, List, Optional, Tuple, Union

from vnet_tf.core.registry import Registry

MISSING = dataclasses.MISSING


class _Unset:
    def __repr__(self):
        return "UNSET"


UNSET = _Unset()  # a Flag's default where the field's own default is the flag's


@dataclasses.dataclass(frozen=True)
class Flag:
    """A setting's command-line flag: ``name``, ``help``, the stage it is listed under
    (``""``: its group's), numeric ``lower`` / ``upper`` bounds, ``choices`` (a tuple or a
    :class:`~vnet_tf.core.registry.Registry`, read at parse time), ``positive`` (every value
    of a list > 0), ``default``, only where the field itself has none (a required setting), and
    ``kept``: for an option the recipes leave off after a measured comparison, why it stays."""

    name: str
    help: str
    stage: str = ""
    lower: Optional[float] = None
    upper: Optional[float] = None
    choices: Union[Tuple[str, ...], Registry, None] = None
    positive: bool = False
    default: Any = UNSET
    kept: str = ""


def flag(default: Any = MISSING, *, flag_default: Any = UNSET, **spec) -> Any:
    """A field whose flag is ``Flag(**spec)``; ``flag_default``: the flag's default for a
    field that has none."""
    return dataclasses.field(default=default, metadata={"flag": Flag(**spec, default=flag_default)})


def no_flag(default: Any, why: str) -> Any:
    """A field with no flag, and why (a library caller may still set it)."""
    return dataclasses.field(default=default, metadata={"no_flag": why})


def group(default: Any, stage: str, flags: Optional[Dict[str, Flag]] = None,
          no_flags: Optional[Dict[str, str]] = None) -> Any:
    """A nested config; its fields are listed under ``stage``, and ``flags`` / ``no_flags``
    (by field name) override what the nested class's own fields declare."""
    return dataclasses.field(default=default, metadata={
        "group": {"stage": stage, "flags": flags or {}, "no_flags": no_flags or {}}})


@dataclasses.dataclass(frozen=True)
class Setting:
    """One leaf setting of a config tree."""

    path: str                  # dotted through the nested configs: "model.depth"
    kind: Any                  # the field's type (typing form)
    default: Any               # the value the default config holds
    flag: Optional[Flag]       # None: no flag
    why: str = ""              # with no flag: why not
    stage: str = ""

    @property
    def is_list(self) -> bool:
        return _tuple_args(self.kind) is not None


def settings(cls: type, defaults: Any = None, prefix: str = "", stage: str = "",
             flags: Optional[Dict[str, Flag]] = None, no_flags: Optional[Dict[str, str]] = None) -> List[Setting]:
    """Every leaf setting of ``cls``, depth first in field order. ``defaults``: an instance
    whose values are the defaults (a nested config's default may differ from its class's)."""
    hints = typing.get_type_hints(cls)
    rows: List[Setting] = []
    for field in dataclasses.fields(cls):
        if not field.init:
            continue
        default = getattr(defaults, field.name) if defaults is not None else field.default
        nested = field.metadata.get("group")
        if nested is not None:
            rows += settings(hints[field.name], default, f"{prefix}{field.name}.", nested["stage"],
                             nested["flags"], nested["no_flags"])
            continue
        spec = (flags or {}).get(field.name, field.metadata.get("flag"))
        why = (no_flags or {}).get(field.name, field.metadata.get("no_flag", ""))
        if field.name in (no_flags or {}):
            spec = None
        if spec is not None and default is MISSING and spec.default is not UNSET:
            default = spec.default
        if spec is None and not why:
            raise TypeError(f"{cls.__name__}.{field.name}: give it a flag or say why it has none")
        rows.append(Setting(f"{prefix}{field.name}", hints[field.name], default, spec, why,
                            (spec.stage if spec is not None and spec.stage else stage)))
    return rows


def _tuple_args(kind) -> Optional[Tuple[Any, Optional[int], bool]]:
    """``(element type, count or None for any, optional)`` for a ``Tuple[...]`` or
    ``Optional[Tuple[...]]`` type; ``None`` for any other type."""
    optional = False
    if typing.get_origin(kind) is Union:
        optional, kind = True, next(a for a in typing.get_args(kind) if a is not type(None))
    if typing.get_origin(kind) is not tuple:
        return None
    args = typing.get_args(kind)
    return args[0], (None if len(args) == 2 and args[1] is Ellipsis else len(args)), optional


def parse_text(setting: Setting, values: List[str]) -> Any:
    """A list flag's values (strings) as the field's tuple; an empty list is ``None`` for an
    optional field. Raises ``ValueError`` saying what was expected."""
    element, count, optional = _tuple_args(setting.kind)
    if optional and not values:
        return None
    cast = int if element is bool else element
    try:
        parsed = tuple(cast(v) for v in values)
    except ValueError as err:
        raise ValueError(f"expected {cast.__name__} values, got {','.join(values)}") from err
    if count is not None and len(parsed) != count:
        raise ValueError(f"expected {count} values, got {len(parsed)} ({','.join(values)})")
    if setting.flag is not None and setting.flag.positive and any(v <= 0 for v in parsed):
        raise ValueError(f"expected positive values, got {','.join(values)}")
    return tuple(bool(v) for v in parsed) if element is bool else parsed


def _number(value: Any) -> str:
    if isinstance(value, bool):
        return str(int(value))
    if isinstance(value, float):
        short = format(value, "g")
        return short if float(short) == value else repr(value)
    return str(value)


def format_value(value: Any) -> str:
    """A setting's value as its flag's text: ``1,2,3`` for a tuple (booleans as 1/0, as the
    list flags take them), empty for ``None``, ``true``/``false`` for a boolean, a float in
    its shortest exact form (``115``, ``0.002``)."""
    if value is None:
        return ""
    if isinstance(value, (tuple, list)):
        return ",".join(_number(v) for v in value)
    if isinstance(value, bool):
        return str(value).lower()
    return _number(value)


def build(cls: type, values: Dict[str, Any], defaults: Any = None, prefix: str = "") -> Any:
    """An instance of ``cls`` with ``values`` (``{dotted path: value}``, as :func:`settings`
    names them) and every other setting at its default (``defaults``' where given)."""
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for field in dataclasses.fields(cls):
        if not field.init:
            continue
        path = f"{prefix}{field.name}"
        default = getattr(defaults, field.name) if defaults is not None else field.default
        if "group" in field.metadata:
            kwargs[field.name] = build(hints[field.name], values, default, f"{path}.")
        elif path in values:
            kwargs[field.name] = values[path]
        elif default is not MISSING:
            kwargs[field.name] = default
    return cls(**kwargs)
