"""The honest server: ``attack.name: none`` attacks no update.

Registered like every attack, so that a config names it, its (empty) params are validated and
the builder asks its spec (``reconstructs`` is False) instead of testing for a sentinel.
"""

from __future__ import annotations

import torch

from attacks.base import Observation, Prior, Reconstruction, ThreatModelNeeds, register_attack
from fl_shadow.config import settings


@settings
class NoAttackParams:
    """The ``none`` attack takes no parameters."""


def _needs_nothing(params: NoAttackParams) -> ThreatModelNeeds:
    return ThreatModelNeeds()


@register_attack("none", NoAttackParams, max_images=1024, needs=_needs_nothing,
                 reconstructs=False)
class NoAttack:
    """An honest server; never asked to reconstruct (its spec says it does not)."""

    name = "none"

    def __init__(self, params: NoAttackParams, *, device: torch.device | str = "cpu",
                 seed: int = 0) -> None:
        self.params = params

    def reconstruct(self, observation: Observation, prior: Prior) -> Reconstruction:
        raise RuntimeError("attack none: the honest server reconstructs nothing")

    def summary(self) -> str:
        return "none (honest server)"


__all__ = ["NoAttack", "NoAttackParams"]
