"""The Attack protocol: what a curious server sees, what it knows, what it returns.

The split follows breaching: the *observation* is what crossed the wire from one client in one
round (plus the public training plan the server itself sent); the *prior* is public knowledge
(architecture, image shape, normalization, public data); the *reconstruction* is the attack's
answer. Ground truth never appears in any of these types: scoring happens outside attack code
(``fl_shadow.metrics``), against images the simulation finds through its audit record.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol, runtime_checkable

import torch
from torch import nn

from fl_shadow.registry import ComponentSpec, Registry, register_component, resolve_component
from fl_shadow.training import LocalTraining


@dataclass(frozen=True)
class Observation:
    """What the server received from one client in one round, plus what it sent.

    Attributes:
        global_state: the global model's ``state_dict`` the server sent this round.
        client_state: the ``state_dict`` the client sent back (same keys), i.e. after local
            training and after the client's defense.
        num_examples: the example count the client reported (FedAvg weights by it).
        training: the local-training plan the server sent (lr, batch size, epochs/steps).
        num_images: how many distinct images the update was computed from, as the server can
            infer from ``num_examples`` and ``training``.
        labels: the batch's labels, only when the threat model hands them to the attacker
            (``attack.labels: given``); otherwise None and the attack recovers them.
        server_round: 1-based round number.
    """

    global_state: Mapping[str, torch.Tensor]
    client_state: Mapping[str, torch.Tensor]
    num_examples: int
    training: LocalTraining
    num_images: int
    labels: torch.Tensor | None = None
    server_round: int = 1

    def parameter_update(self, model: nn.Module) -> list[torch.Tensor]:
        """``client - global`` for each trainable parameter, in ``model.parameters()`` order."""
        names = [name for name, p in model.named_parameters() if p.requires_grad]
        return [(self.client_state[n] - self.global_state[n]).float() for n in names]

    @property
    def num_local_steps(self) -> int:
        return len(self.training.step_batch_sizes(self.num_examples))


@dataclass(frozen=True)
class Prior:
    """Public knowledge the attacker may use.

    Attributes:
        model_factory: builds the task model architecture (weights are then loaded from the
            observation's ``global_state``).
        image_shape: ``(C, H, W)``.
        num_classes: number of labels.
        mean, std: the normalization the clients apply (public: part of the protocol).
        public_images: public images disjoint from the clients' data, ``(M, C, H, W)`` in
            [0, 1], for generative priors; may be None.
    """

    model_factory: Callable[[], nn.Module]
    image_shape: tuple[int, int, int]
    num_classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    public_images: torch.Tensor | None = None


@dataclass(frozen=True)
class Reconstruction:
    """The attack's answer.

    Attributes:
        images: ``(K, C, H, W)`` reconstructed images in [0, 1] (de-normalized and clamped).
        labels: ``(K,)`` the labels the attack used or recovered.
        loss: the attack's own final objective value (lower is better), used to pick restarts.
        iterations: optimisation steps taken (over all restarts).
        seconds: wall time of the attack.
        info: extra scalars worth reporting (e.g. per-restart losses).
    """

    images: torch.Tensor
    labels: torch.Tensor
    loss: float
    iterations: int
    seconds: float
    info: Mapping[str, float] = field(default_factory=dict)


@runtime_checkable
class Attack(Protocol):
    """A gradient inversion attack: one observation in, one reconstruction out."""

    name: ClassVar[str]

    def reconstruct(self, observation: Observation, prior: Prior) -> Reconstruction:
        ...


AttackSpec = ComponentSpec
ATTACKS: Registry[ComponentSpec[Attack]] = Registry("attack", config_key="attack.name")


def register_attack(name: str, params_type: type) -> Callable[[type], type]:
    """Class decorator: ``@register_attack("inverting_gradients", InvertingGradientsParams)``.

    The class is constructed as ``cls(params, device=device, seed=seed)``.
    """
    return register_component(ATTACKS, name, params_type)


def build_attack(name: str, params: Mapping[str, Any] | None, *, device: torch.device,
                 seed: int) -> Attack:
    """Validate ``params`` with the attack's params dataclass and construct the attack."""
    spec, validated = resolve_component(ATTACKS, name, params, "attack.params")
    return spec.factory(validated, device=device, seed=seed)
