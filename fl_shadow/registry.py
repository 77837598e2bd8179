"""One name -> factory mechanism for datasets, models, defenses and attacks.

Configs are data: they name a component (``defense.name: dp``), and the registry turns the name
into the object. A failed lookup lists the known names, so a typo in a YAML file is a one-line
fix rather than a hunt through the source.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from fl_shadow.errors import ConfigError

T = TypeVar("T")


class Registry(Generic[T]):
    """A named collection of components of one kind.

    Args:
        kind: what the registry holds ("defense", "attack", ...), used in error messages.
        config_key: the config key that selects an entry, named in lookup errors.
    """

    def __init__(self, kind: str, *, config_key: str) -> None:
        self.kind = kind
        self.config_key = config_key
        self._entries: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator that adds ``obj`` under ``name``; a name may be registered once."""

        def decorator(obj: T) -> T:
            if name in self._entries:
                raise ValueError(f"{self.kind} {name!r} is already registered")
            self._entries[name] = obj
            return obj

        return decorator

    def get(self, name: str) -> T:
        """Return the entry called ``name``; raises ConfigError listing the known names."""
        try:
            return self._entries[name]
        except KeyError:
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


@dataclass(frozen=True)
class ComponentSpec(Generic[T]):
    """A registered configurable component: its class and the dataclass of its ``params``."""

    factory: Callable[..., T]
    params_type: type


def register_component(registry: Registry[ComponentSpec[Any]], name: str,
                       params_type: type) -> Callable[[type], type]:
    """Class decorator: register ``cls`` under ``name`` with its params dataclass.

    Sets ``cls.name`` so every instance knows the name it was configured by.
    """

    def decorator(cls: type) -> type:
        cls.name = name  # type: ignore[attr-defined]
        registry.register(name)(ComponentSpec(factory=cls, params_type=params_type))
        return cls

    return decorator


def resolve_component(registry: Registry[ComponentSpec[Any]], name: str,
                      params: Mapping[str, Any] | None,
                      params_key: str) -> tuple[ComponentSpec[Any], Any]:
    """Look ``name`` up and validate ``params`` with its dataclass (errors name ``params_key``)."""
    from fl_shadow.config import build_params

    spec = registry.get(name)
    return spec, build_params(spec.params_type, params, params_key)
