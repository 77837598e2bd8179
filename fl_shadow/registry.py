"""One name -> spec mechanism for every configurable component.

Configs are data: they name a component (``defense.name: dp``), and a registry turns the name
into the component's *spec*: a frozen record of everything the rest of the project needs to know
about it without building it (its factory, its params dataclass, what it needs, what it keeps).
Each kind has its own spec type next to its protocol:

==========  ===================================  ==========================================
kind        spec                                 registry (where the entries register)
==========  ===================================  ==========================================
dataset     :class:`fl_shadow.data.DatasetSpec`  :data:`fl_shadow.data.DATASETS`
model       :class:`fl_shadow.models.ModelSpec`  :data:`fl_shadow.models.MODELS`
defense     :class:`fl_shadow.defenses.DefenseSpec`   :data:`fl_shadow.defenses.DEFENSES`
attack      :class:`attacks.AttackSpec`          :data:`attacks.ATTACKS`
strategy    :class:`strategies.StrategySpec`     :data:`strategies.STRATEGIES`
==========  ===================================  ==========================================

A failed lookup lists the known names, so a typo in a YAML file is a one-line fix rather than a
hunt through the source. A name is registered once.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Generic, Protocol, TypeVar

from fl_shadow.errors import ConfigError


class Named(Protocol):
    name: str


S = TypeVar("S", bound=Named)


class Registry(Generic[S]):
    """A named collection of component specs of one kind.

    Args:
        kind: what the registry holds ("defense", "attack", ...), used in error messages.
        config_key: the config key that selects an entry, named in lookup errors.
    """

    def __init__(self, kind: str, *, config_key: str) -> None:
        self.kind = kind
        self.config_key = config_key
        self._entries: dict[str, S] = {}

    def add(self, spec: S) -> S:
        """Register ``spec`` under ``spec.name``; a name may be registered once."""
        if spec.name in self._entries:
            raise ValueError(f"{self.kind} {spec.name!r} is already registered")
        self._entries[spec.name] = spec
        return spec

    def get(self, name: str) -> S:
        """The spec called ``name``; raises ConfigError listing the known names."""
        try:
            return self._entries[name]
        except (KeyError, TypeError):
            known = ", ".join(sorted(self._entries)) or "(none)"
            raise ConfigError(
                f"{self.config_key}: unknown {self.kind} {name!r}; expected one of: {known}"
            ) from None

    def names(self) -> list[str]:
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self._entries))


__all__ = ["Registry"]
