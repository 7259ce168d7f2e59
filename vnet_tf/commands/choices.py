"""Flags whose choices are a registry's names (:mod:`vnet_tf.core.registry`), read when the flag is
parsed: a loss or network registered after the flags were defined (a plug-in, a test) is a
valid choice without touching any flag definition. TensorFlow is not imported."""

from __future__ import annotations

from absl import flags

from vnet_tf.core.registry import Registry


class RegistryParser(flags.ArgumentParser):
    """Accepts the names ``registry`` holds at parse time."""

    def __init__(self, registry: Registry):
        super().__init__()
        self.registry = registry

    @property
    def enum_values(self):
        """The names, as an absl enum parser exposes its values."""
        return list(self.registry.names)

    def parse(self, argument):
        if argument not in self.registry.names:
            raise ValueError(f"expected one of {'|'.join(self.registry.names)}, got {argument!r}")
        return argument

    def flag_type(self) -> str:
        return "string enum"


def define_choice(name: str, registry: Registry, default: str, help_text: str, module_name: str) -> None:
    """Defines ``--name`` choosing among ``registry``'s names; its help begins ``<a|b>:`` as an
    absl enum's does (the names registered at definition: the built-in ones)."""
    flags.DEFINE(RegistryParser(registry), name, default, f"<{'|'.join(registry.names)}>: {help_text}",
                 serializer=flags.ArgumentSerializer(), module_name=module_name)
