"""No defense: the client uploads its plain FedAvg update."""

from __future__ import annotations

from fl_shadow.config import settings
from fl_shadow.defenses.base import Defense, Undefended, register_defense


@settings
class NoDefenseParams:
    """The ``none`` defense takes no parameters."""


@register_defense("none", NoDefenseParams,
                  attacker_model=lambda params, knowledge, received, seed: Undefended())
class NoDefense(Defense):
    """Identity on every hook."""

    def __init__(self, params: NoDefenseParams) -> None:
        self.params = params
