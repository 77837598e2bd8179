"""No defense: the client uploads its plain FedAvg update."""

from __future__ import annotations

from dataclasses import dataclass

from fl_shadow.defenses.base import Defense, register_defense


@dataclass(frozen=True)
class NoDefenseParams:
    """The ``none`` defense takes no parameters."""


@register_defense("none", NoDefenseParams)
class NoDefense(Defense):
    """Identity on every hook."""

    def __init__(self, params: NoDefenseParams) -> None:
        self.params = params
