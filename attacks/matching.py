"""The frame every optimization-based gradient-matching attack shares.

Inverting Gradients, DLG, iDLG and GradInversion all do the same before and after their own
optimisation: check the observation against the attack's threat model, load the global
weights into the public architecture, read the observed update ``client - global``, settle
the labels (given by the threat model, recovered from the last layer, or left to the attack
to optimise), build the differentiable replay of the client's local training
(:class:`~attacks.replay.UpdateReplay`), draw candidate images in normalized space inside the
valid pixel box, and hand back de-normalized images. :func:`prepare_matching` does the first
part and returns a :class:`MatchingProblem` with the rest; each attack keeps only its
objective and its optimizer.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import torch
from torch import nn

from attacks.adaptive import defense_model
from attacks.base import ATTACKS, Observation, Prior, ThreatModelNeeds, check_threat_model
from attacks.label_recovery import LabelStrategy, recover_labels_from_update
from attacks.replay import UpdateReplay
from fl_shadow.errors import ThreatModelError

ImageInit = Literal["randn", "rand"]


@dataclass(frozen=True)
class MatchingProblem:
    """One observation, made ready for optimisation.

    Attributes:
        model: the public architecture holding the global weights, on ``device``.
        target: the observed update ``client - global``, one tensor per trainable parameter
            (``model.parameters()`` order), on ``device``.
        replay: differentiable replay of the client's local training for ``K`` slots.
        labels: ``(K,)`` given or recovered labels; None when the threat model withholds them
            and the attack optimises them itself.
        labels_recovered: True when ``labels`` were recovered rather than given.
        lower, upper: ``(1, C, 1, 1)`` bounds of valid pixels in normalized space.
        mean, std: ``(1, C, 1, 1)`` the clients' normalization.
        shape: ``(K, C, H, W)`` of the candidate images.
        device: where the optimisation runs.
    """

    model: nn.Module
    target: list[torch.Tensor]
    replay: UpdateReplay
    labels: torch.Tensor | None
    labels_recovered: bool
    lower: torch.Tensor
    upper: torch.Tensor
    mean: torch.Tensor
    std: torch.Tensor
    shape: tuple[int, int, int, int]
    device: torch.device

    @property
    def num_images(self) -> int:
        return self.shape[0]

    def clamp_(self, x: torch.Tensor) -> None:
        """Project ``x`` (any leading dims, channels third from last) onto the pixel box."""
        with torch.no_grad():
            x.copy_(torch.maximum(torch.minimum(x, self.upper), self.lower))

    def to_images(self, x: torch.Tensor) -> torch.Tensor:
        """De-normalize ``(K, C, H, W)`` candidates to images in [0, 1], on the CPU."""
        return (x.detach() * self.std + self.mean).clamp(0, 1).cpu()

    def init_images(self, init: ImageInit, generator: torch.Generator,
                    num: int | None = None) -> torch.Tensor:
        """Random starting candidates, drawn on the CPU from ``generator`` (same numbers on
        every device), then moved to ``device``.

        Args:
            init: ``randn`` (standard normal in normalized space, as every reference code) or
                ``rand`` (uniform over the valid box).
            generator: the attack's seeded generator.
            num: stack this many independent sets, ``(num, K, C, H, W)``; None for one set.
        """
        shape = self.shape if num is None else (num, *self.shape)
        if init == "randn":
            return torch.randn(shape, generator=generator).to(self.device)
        u = torch.rand(shape, generator=generator).to(self.device)
        return self.lower + u * (self.upper - self.lower)


class MatchingAttack:
    """What the optimization attacks share around ``reconstruct``: construction and needs.

    Args:
        params: the attack's validated params dataclass (with a ``require_labels`` flag).
        device: where the optimisation runs (CUDA also when the observation lives there, see
            :func:`attack_device`).
        seed: seeds the random initialisations (deterministic on CPU).
    """

    name: ClassVar[str]

    def __init__(self, params: Any, *, device: torch.device | str = "cpu",
                 seed: int = 0) -> None:
        self.params = params
        self.device = torch.device(device)
        self.seed = seed

    @property
    def needs(self) -> ThreatModelNeeds:
        """What the threat model must give this attack with its params (its spec's
        :attr:`~attacks.base.AttackSpec.needs`)."""
        return ATTACKS.get(self.name).needs(self.params)


def attack_device(observation: Observation, configured: torch.device) -> torch.device:
    """The configured device, or CUDA when the observation's tensors already live there."""
    for tensor in observation.client_state.values():
        if tensor.is_cuda:
            return tensor.device
    return configured


def prepare_matching(attack: str, observation: Observation, prior: Prior, *,
                     device: torch.device, needs: ThreatModelNeeds,
                     label_strategy: LabelStrategy | None, seed: int = 0) -> MatchingProblem:
    """Check the threat model and build the :class:`MatchingProblem` of ``observation``.

    Args:
        attack: the attack's name, first word of every error.
        observation: what the server received.
        prior: public knowledge.
        device: where to put the model and tensors.
        needs: the attack's declared threat-model needs.
        label_strategy: how to recover withheld labels (:mod:`attacks.label_recovery`); None
            leaves them None for attacks that optimise labels themselves (DLG).
        seed: seeds the random draws of the adaptive attacker's defense model (when the
            observation carries :attr:`~attacks.base.Observation.defense`).

    Raises:
        ThreatModelError: the observation lacks what ``needs`` asks for, or does not fit the
            public architecture.
        ValueError: given labels of the wrong size or range.
    """
    num_images = int(observation.num_images)
    if num_images < 1:
        raise ValueError(f"observation.num_images must be >= 1, got {num_images}")
    model = prior.model_factory().to(device)
    check_threat_model(attack, needs, observation, model)
    try:
        model.load_state_dict({k: v.to(device) for k, v in observation.global_state.items()})
    except RuntimeError as exc:
        raise ThreatModelError(f"{attack}: the global state does not fit the public "
                               f"architecture: {str(exc).splitlines()[0]}") from None
    try:
        target = [u.to(device) for u in observation.parameter_update(model)]
    except KeyError as exc:
        raise ThreatModelError(f"{attack}: the client's upload lacks parameter "
                               f"{exc.args[0]!r} of the public architecture") from None

    labels: torch.Tensor | None = None
    recovered = observation.labels is None
    if not recovered:
        labels = torch.as_tensor(observation.labels).to(device).long().flatten()
        if labels.numel() != num_images:
            raise ValueError(f"observation.labels has {labels.numel()} entries, expected "
                             f"num_images={num_images}")
    elif label_strategy is not None:
        labels = recover_labels_from_update(
            model, target, num_images, strategy=label_strategy, plan=observation.training,
            num_steps=observation.num_local_steps).to(device)
    if labels is not None and (labels.min() < 0 or labels.max() >= prior.num_classes):
        raise ValueError(f"labels must lie in [0, {prior.num_classes}), got {labels.tolist()}")

    mean, std = _normalization(prior, device)
    replay = UpdateReplay(model, observation.global_state, observation.training,
                          observation.num_examples, num_images)
    replay.defense = defense_model(observation.defense, target, seed=seed)
    return MatchingProblem(
        model=model, target=target, replay=replay, labels=labels,
        labels_recovered=recovered and labels is not None,
        lower=-mean / std, upper=(1 - mean) / std, mean=mean, std=std,
        shape=(num_images, *prior.image_shape), device=device)


def _normalization(prior: Prior, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    channels = prior.image_shape[0]
    mean = torch.tensor(prior.mean, dtype=torch.float32, device=device)
    std = torch.tensor(prior.std, dtype=torch.float32, device=device)
    if len(mean) not in (1, channels) or len(std) not in (1, channels):
        raise ValueError(f"prior.mean/std need 1 or {channels} entries, got "
                         f"{len(mean)}/{len(std)}")
    return mean.expand(channels).view(1, -1, 1, 1), std.expand(channels).view(1, -1, 1, 1)


__all__ = ["ImageInit", "MatchingAttack", "MatchingProblem", "attack_device", "prepare_matching"]
