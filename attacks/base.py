"""The Attack protocol and registry: what a curious server sees, knows and returns.

The threat model's types (:class:`Observation`, :class:`Prior`, :class:`Reconstruction`, ...)
live in the core (:mod:`fl_shadow.threat_model`), because the server side that builds them and
the scorer that reads the answers need them too; they are re-exported here for attack code.
Ground truth never appears in any of these types: scoring happens outside attack code
(:mod:`fl_shadow.scoring`), against images the simulation finds through its audit record.

Each attack is declared once, by :func:`register_attack`, as an :class:`AttackSpec`: its
class, its params dataclass, what it needs of the threat model (labels, BatchNorm statistics,
the public-data generator, as a function of its params) and the most images it is meant to
reconstruct from one update. Everything in the spec is checked at load, before a run starts.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch

from fl_shadow.config import parse_settings
from fl_shadow.registry import Registry
from fl_shadow.threat_model import (
    Attack,
    AttackOutcome,
    DefenseKnowledge,
    Observation,
    Prior,
    Reconstruction,
    ThreatModelNeeds,
    bn_statistic_names,
    check_threat_model,
)


def labels_if_required(params: Any) -> ThreatModelNeeds:
    """The needs of an attack that recovers or optimises withheld labels: labels only with
    ``require_labels``."""
    return ThreatModelNeeds(labels="attack.params.require_labels is true"
                            if params.require_labels else None)


@dataclass(frozen=True)
class AttackSpec:
    """A registered attack.

    Attributes:
        name: the ``attack.name`` that selects it.
        factory: ``factory(params, device=, seed=) -> Attack`` (the class).
        params_type: the :func:`~fl_shadow.config.settings` dataclass of ``attack.params``.
        needs: ``needs(params) -> ThreatModelNeeds``: what the attack asks of the threat model
            with these params.
        max_images: the most images one update may come from for this attack (its cost grows
            with the batch and quality collapses); ``attack.max_images`` may not exceed it.
        reconstructs: False for ``none``, the honest server: no update is attacked.
    """

    name: str
    factory: Callable[..., Attack]
    params_type: type
    needs: Callable[[Any], ThreatModelNeeds]
    max_images: int
    reconstructs: bool = True

    def parse_params(self, raw: Mapping[str, Any] | None) -> Any:
        """Validate ``attack.params`` into :attr:`params_type` (errors name the key)."""
        return parse_settings(self.params_type, raw, "attack.params")

    def build(self, params: Any, *, device: torch.device | str, seed: int) -> Attack:
        """The attack for validated ``params`` (:meth:`parse_params`)."""
        return self.factory(params, device=device, seed=seed)


ATTACKS: Registry[AttackSpec] = Registry("attack", config_key="attack.name")


def register_attack(name: str, params_type: type, *, max_images: int,
                    needs: Callable[[Any], ThreatModelNeeds] = labels_if_required,
                    reconstructs: bool = True) -> Callable[[type], type]:
    """Class decorator declaring an attack (see :class:`AttackSpec` for the arguments).

    The class is constructed as ``cls(params, device=device, seed=seed)`` and knows its name as
    ``cls.name``.
    """

    def decorator(cls: type) -> type:
        cls.name = name  # type: ignore[attr-defined]
        ATTACKS.add(AttackSpec(name=name, factory=cls, params_type=params_type, needs=needs,
                               max_images=max_images, reconstructs=reconstructs))
        return cls

    return decorator


def build_attack(name: str, params: Mapping[str, Any] | None, *, device: torch.device | str,
                 seed: int) -> Attack:
    """Validate ``params`` with the attack's params dataclass and construct the attack."""
    spec = ATTACKS.get(name)
    return spec.build(spec.parse_params(params), device=device, seed=seed)


__all__ = ["ATTACKS", "Attack", "AttackOutcome", "AttackSpec", "DefenseKnowledge", "Observation",
           "Prior", "Reconstruction", "ThreatModelNeeds", "bn_statistic_names", "build_attack",
           "check_threat_model", "labels_if_required", "register_attack"]
