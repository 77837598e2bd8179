"""The adaptive attacker: the defense, as far as its public parameters tell, inside the replay.

With ``attack.adaptive: true`` the threat model hands the attacker the name and public
parameters of the clients' defense (:class:`~attacks.base.DefenseKnowledge`: the config's
``defense`` section with its defaults filled in; never a client's random draws, keys, shadow
model or other state). :func:`defense_model` turns it into a :class:`DefenseModel` that the
differentiable replay (:class:`~attacks.replay.UpdateReplay`) applies where the client applies
the defense, so every matching attack (IG, DLG, iDLG, GradInversion, GGL, GIAS) matches the
*defended* update its candidate images would produce instead of the undefended one:

========================  =====================================================================
defense                   model (public parameters only)
========================  =====================================================================
``clipping``              each step's gradient clipped to ``max_norm`` (exact).
``dp``                    the update clipped to the received norm (at most ``clip_norm``, GGL's
                          estimate); the Gaussian noise has mean 0, so its expectation is
                          nothing to model (GGL's reading).
``sparsification``,       the received update's zero pattern masks the simulated update (GGL's
``soteria``               adaptive mode estimates the pruning rate or Soteria's zeroed FC
                          columns from the received zeros; the pattern itself is visible).
``outpost``               each step's gradient replaced by its expectation under OUTPOST's coin:
                          ``p_t prune(g) + (1 - p_t) g``, ``p_t = 1 / (1 + beta t)``; the noise has
                          mean 0.
``shadow``                expectation over the input noise (EOT): each replay draws noise maps
                          with the public peak ``w_N * |max x|`` (``w_N`` from ``noise_rescale``,
                          the round and ``noise_increase``) and the public shape of an equalized
                          map through ``softmax(./T)``, ``exp(-(255/T)(1 - e))``, ``e ~ U[0, 1]``
                          per pixel; where the noise goes depends on the client's private
                          shadow and Grad-CAM, so positions are random.
``censor``, ``fedkl``,    not modelled: the shared update is a private random draw (CENSOR),
``latent_minimax``        depends on a private key (FedKL) or on private learned offsets; the
                          attack then runs as if undefended and says so in the log.
``none``                  nothing to model.
========================  =====================================================================
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping
from typing import Any

import torch

from attacks.base import DefenseKnowledge

logger = logging.getLogger(__name__)


class DefenseModel:
    """What the attacker simulates of a defense; the base class models nothing.

    Attributes:
        modelled: False when the defense is not modelled (the attack runs as if undefended).
    """

    modelled = False

    def perturb_input(self, x: torch.Tensor, step: int) -> torch.Tensor:
        """The batch the client trains on at local ``step`` (0-based), from the clean one."""
        return x

    def protect_gradient(self, grads: list[torch.Tensor], step: int) -> list[torch.Tensor]:
        """The gradient the client's optimizer applies at local ``step``."""
        return grads

    def protect_update(self, update: list[torch.Tensor]) -> list[torch.Tensor]:
        """The update that leaves the client."""
        return update


class NoDefense(DefenseModel):
    modelled = True


class ClippingModel(DefenseModel):
    """Per-step global-norm clipping to ``max_norm`` (:mod:`fl_shadow.defenses.clipping`)."""

    modelled = True

    def __init__(self, max_norm: float) -> None:
        self.max_norm = max_norm

    def protect_gradient(self, grads: list[torch.Tensor], step: int) -> list[torch.Tensor]:
        return _clip(grads, self.max_norm, eps=1e-6)


class UpdateClippingModel(DefenseModel):
    """Update-level clipping (DP's first step); the zero-mean noise is left out.

    The client clips every *released* tensor together, BatchNorm buffers included when it
    sends them, so the parameters' share of the bound is not ``clip_norm`` itself. GGL's
    estimate removes the question: the bound is the received parameters' norm (at most
    ``clip_norm``); at the true images the clipped replay then equals the received update
    whether or not the client's update was clipped.
    """

    modelled = True

    def __init__(self, clip_norm: float, received: list[torch.Tensor]) -> None:
        received_norm = (math.sqrt(sum(float(r.double().pow(2).sum()) for r in received))
                         if received else clip_norm)
        self.clip_norm = min(clip_norm, received_norm)

    def protect_update(self, update: list[torch.Tensor]) -> list[torch.Tensor]:
        return _clip(update, self.clip_norm, eps=0.0)


class ZeroPatternModel(DefenseModel):
    """Entries the client zeroed (exact zeros of the received update) are zeroed in the
    simulated update too."""

    modelled = True

    def __init__(self, received: list[torch.Tensor]) -> None:
        self.masks = [(r != 0).to(r.dtype) for r in received]

    def protect_update(self, update: list[torch.Tensor]) -> list[torch.Tensor]:
        return [u * m for u, m in zip(update, self.masks, strict=True)]


class OutpostModel(DefenseModel):
    """Expected OUTPOST step: ``p_t * prune(g) + (1 - p_t) * g`` (the noise has mean 0)."""

    modelled = True

    def __init__(self, beta: float, prune_base: float) -> None:
        self.beta, self.prune_base = beta, prune_base

    def protect_gradient(self, grads: list[torch.Tensor], step: int) -> list[torch.Tensor]:
        p = 1.0 / (1.0 + self.beta * (step + 1))
        out = []
        for g in grads:
            magnitude = g.detach().abs().flatten()
            threshold = torch.quantile(magnitude.double(), self.prune_base / 100).to(g.dtype)
            kept = g * (g.detach().abs() >= threshold).to(g.dtype)
            out.append(p * kept + (1 - p) * g)
        return out


class ShadowNoiseModel(DefenseModel):
    """Expectation over the shadow defense's input noise, by sampling (EOT)."""

    modelled = True

    def __init__(self, weight: float, temperature: float, seed: int) -> None:
        self.weight, self.sharpness = weight, 255.0 / temperature
        self.generator = torch.Generator().manual_seed(seed)

    def perturb_input(self, x: torch.Tensor, step: int) -> torch.Tensor:
        e = torch.rand(x.shape, generator=self.generator).to(x.device)
        shape = torch.exp(-self.sharpness * (1 - e))
        peak_x = x.detach().flatten(1).max(dim=1).values.abs()
        peak_n = shape.flatten(1).max(dim=1).values.clamp_min(1e-12)
        return x + shape * (self.weight * peak_x / peak_n).view(-1, 1, 1, 1)


def _clip(tensors: list[torch.Tensor], bound: float, *, eps: float) -> list[torch.Tensor]:
    norm = torch.sqrt(sum((t.pow(2).sum() for t in tensors), tensors[0].new_zeros(())))
    factor = torch.clamp(bound / (norm + eps), max=1.0)
    return [t * factor for t in tensors]


def _shadow(knowledge: DefenseKnowledge, received: list[torch.Tensor], seed: int
            ) -> DefenseModel:
    from fl_shadow.defenses.shadow.noise import noise_weight

    p = knowledge.params
    weight = noise_weight(knowledge.server_round - 1, knowledge.num_rounds,
                          float(p["noise_rescale"]), increase=bool(p["noise_increase"]))
    return ShadowNoiseModel(weight, float(p["temperature"]), seed)


Builder = Callable[[DefenseKnowledge, list[torch.Tensor], int], DefenseModel]

MODELS: dict[str, Builder] = {
    "none": lambda k, r, s: NoDefense(),
    "clipping": lambda k, r, s: ClippingModel(float(k.params["max_norm"])),
    "dp": lambda k, r, s: UpdateClippingModel(float(k.params["clip_norm"]), r),
    "sparsification": lambda k, r, s: ZeroPatternModel(r),
    "soteria": lambda k, r, s: ZeroPatternModel(r),
    "outpost": lambda k, r, s: OutpostModel(float(k.params["beta"]),
                                            float(k.params["prune_base"])),
    "shadow": _shadow,
}


def defense_model(knowledge: DefenseKnowledge | None, received: list[torch.Tensor], *,
                  seed: int = 0) -> DefenseModel | None:
    """The attacker's model of the defense in ``knowledge``; None without knowledge.

    Args:
        knowledge: the defense's name and public parameters (None: not adaptive).
        received: the observed update, one tensor per trainable parameter.
        seed: seeds the model's random draws (EOT), so attacks stay deterministic.
    """
    if knowledge is None:
        return None
    builder = MODELS.get(knowledge.name)
    if builder is None:
        logger.warning("adaptive attack: defense %r has no public model (its output depends "
                       "on the client's private randomness, key or state); attacking as if "
                       "undefended", knowledge.name)
        return DefenseModel()
    return builder(knowledge, received, seed)


def describe_defense(name: str, params: Mapping[str, Any] | None, *, server_round: int,
                     num_rounds: int) -> DefenseKnowledge:
    """The public description of a configured defense, defaults filled in by its params
    dataclass (validated exactly as the clients validate it)."""
    import dataclasses

    from fl_shadow.defenses import DEFENSES
    from fl_shadow.registry import resolve_component

    _, validated = resolve_component(DEFENSES, name, params, "defense.params")
    values = dataclasses.asdict(validated) if dataclasses.is_dataclass(validated) else {}
    return DefenseKnowledge(name=name, params=values, server_round=server_round,
                            num_rounds=num_rounds)


__all__ = ["DefenseModel", "MODELS", "defense_model", "describe_defense"]
