"""absl flags generated from a config's settings (:mod:`vnet_tf.core.settings`): each flag's
name, help, bounds, choices and default come from the field that declares it, and the flags'
values build the config again. TensorFlow is not imported."""

from __future__ import annotations

import re
from typing import Any, Dict, Sequence

from absl import app, flags

from vnet_tf.commands.choices import define_choice
from vnet_tf.core.registry import Registry
from vnet_tf.core.settings import Setting, build, format_value, parse_text


def define(rows: Sequence[Setting], module_of_stage: Dict[str, str]) -> None:
    """Defines the flag of every row that has one, listed under its stage's module name."""
    for row in rows:
        spec = row.flag
        if spec is None:
            continue
        module = module_of_stage[row.stage]
        if row.is_list:
            text = format_value(row.default)
            flags.DEFINE_list(spec.name, text.split(",") if text else [], spec.help, module_name=module)
        elif isinstance(spec.choices, Registry):
            define_choice(spec.name, spec.choices, row.default, spec.help, module)
        elif spec.choices is not None:
            flags.DEFINE_enum(spec.name, row.default, list(spec.choices), spec.help, module_name=module)
        elif row.kind is bool:
            flags.DEFINE_bool(spec.name, row.default, spec.help, module_name=module)
        elif row.kind in (int, float):
            define_number = flags.DEFINE_integer if row.kind is int else flags.DEFINE_float
            define_number(spec.name, row.default, spec.help, lower_bound=spec.lower, upper_bound=spec.upper,
                          module_name=module)
        else:
            flags.DEFINE_string(spec.name, row.default, spec.help, module_name=module)


def value(row: Setting) -> Any:
    """The setting's value from its parsed flag (``app.UsageError`` naming the flag)."""
    parsed = getattr(flags.FLAGS, row.flag.name)
    if not row.is_list:
        return parsed
    try:
        return parse_text(row, list(parsed))
    except ValueError as err:
        raise app.UsageError(f"--{row.flag.name}: {err}") from err


def config_from_flags(cls: type, rows: Sequence[Setting], **fixed) -> Any:
    """``cls`` built from the parsed flags; ``fixed`` (``{dotted path: value}``) set by the command."""
    values = {row.path: value(row) for row in rows if row.flag is not None}
    values.update(fixed)
    return build(cls, values)


def flag_words(message: str, rows: Sequence[Setting]) -> str:
    """A library message about settings, each setting named by its dotted path (or by its field
    name, where no other setting has that name and it has an underscore) written as its flag:
    ``patch_size_zyx (30, 32, 32) must be ...`` -> ``--patch_size (30, 32, 32) must be ...``."""
    leaf_count: Dict[str, int] = {}
    for row in rows:
        leaf = row.path.rsplit(".", 1)[-1]
        leaf_count[leaf] = leaf_count.get(leaf, 0) + 1
    for row in rows:
        if row.flag is None:
            continue
        leaf = row.path.rsplit(".", 1)[-1]
        # A field name alone only where it cannot be an ordinary word ("depth", "name"): one with "_".
        for name in {row.path, *([leaf] if leaf_count[leaf] == 1 and "_" in leaf else [])}:
            message = re.sub(rf"(?<![\w.-]){re.escape(name)}(?![\w.])", f"--{row.flag.name}", message)
    return message
