"""The threat model as types: what a curious server sees, knows and answers.

Both sides of the wire need these: the curious server (``strategies/``) builds
:class:`Observation` and :class:`Prior` for an attack, the attacks (``attacks/``) read them and
answer a :class:`Reconstruction`, and the scorer and the report (``fl_shadow``) read the
:class:`AttackOutcome`. They live in the core so that neither side imports the other.

The split follows breaching: the *observation* is what crossed the wire from one client in one
round (plus the public training plan the server itself sent); the *prior* is public knowledge
(architecture, image shape, normalization, public data); the *reconstruction* is the attack's
answer. Ground truth never appears in any of these types: scoring happens outside attack code
(:mod:`fl_shadow.scoring`), against images the simulation finds through its audit record.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol, runtime_checkable

import torch
from torch import nn

from fl_shadow.audit import AuditRecord
from fl_shadow.errors import ThreatModelError
from fl_shadow.training import LocalTraining


@dataclass(frozen=True)
class DefenseKnowledge:
    """What an adaptive attacker knows of the clients' defense: public facts only.

    Attributes:
        name: the registered defense name.
        params: its parameters as configured, defaults filled in (the protocol is public; a
            client's random draws, keys and state are not part of this).
        server_round: the round of the observed update (defenses schedule on it).
        num_rounds: the run's total rounds.
        mean, std: the input normalization (public, the dataset's): input-space noise set
            in [0, 1] image units is ``std`` times smaller in the normalized inputs.
        num_examples: the number of local examples the client reported with its update
            (FedAvg's weight, sent in the clear; 0 when unknown): defenses whose strength
            depends on the hospital's size schedule on it.
    """

    name: str
    params: Mapping[str, Any]
    server_round: int = 1
    num_rounds: int = 1
    mean: tuple[float, ...] = (0.0,)
    std: tuple[float, ...] = (1.0,)
    num_examples: int = 0


@dataclass(frozen=True)
class Observation:
    """What the server received from one client in one round, plus what it sent.

    Attributes:
        global_state: the global model's ``state_dict`` the server sent this round.
        client_state: the ``state_dict`` the client sent back (same keys), i.e. after local
            training and after the client's defense; without the BatchNorm running
            statistics when the threat model withholds them (``attack.bn_statistics:
            withheld``, see :func:`bn_statistic_names`).
        num_examples: the example count the client reported (FedAvg weights by it).
        training: the local-training plan the server sent (lr, batch size, epochs/steps,
            FedProx's proximal weight).
        num_images: how many distinct images the update was computed from, as the server can
            infer from ``num_examples`` and ``training``.
        labels: the batch's labels, only when the threat model hands them to the attacker
            (``attack.labels: given``); otherwise None and the attack recovers them.
        server_round: 1-based round number.
        defense: the clients' defense and its public parameters, only when the threat model
            gives them to an adaptive attacker (``attack.adaptive: true``).
    """

    global_state: Mapping[str, torch.Tensor]
    client_state: Mapping[str, torch.Tensor]
    num_examples: int
    training: LocalTraining
    num_images: int
    labels: torch.Tensor | None = None
    server_round: int = 1
    defense: DefenseKnowledge | None = None

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
            observation's ``global_state``); a :class:`fl_shadow.models.ModelArchitecture`
            in every run, which holds the architecture's settings and nothing else.
        image_shape: ``(C, H, W)``.
        num_classes: number of labels.
        mean, std: the normalization the clients apply (public: part of the protocol).
        public_images: public images disjoint from the clients' data, ``(M, C, H, W)`` in
            [0, 1], for generative priors; may be None.
        generator: the project's image generator pretrained on ``public_images`` only
            (:mod:`fl_shadow.generative`), for generative-prior attacks (GGL, GIAS); None when
            the configured attack does not use one. Output ``[-1, 1]``, see
            :func:`fl_shadow.generative.to_unit`.
    """

    model_factory: Callable[[], nn.Module]
    image_shape: tuple[int, int, int]
    num_classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    public_images: torch.Tensor | None = None
    generator: nn.Module | None = None


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


@dataclass(frozen=True)
class AttackOutcome:
    """One attacked update: who, when, what the attack returned, and the server's audit.

    ``audit`` is the simulation's record of which images the update came from: the server
    keeps it next to the outcome, for scoring after the attack; the attack never sees it.
    """

    server_round: int
    client_id: int
    reconstruction: Reconstruction
    audit: AuditRecord | None


@dataclass(frozen=True)
class ThreatModelNeeds:
    """What an attack asks of the threat model, checked at load and again per observation.

    Each field is None when the attack does without, else the setting that creates the need,
    quoted in the error (e.g. ``"attack.params.require_labels is true"``).

    Attributes:
        labels: the batch's labels (the threat model gives them with ``attack.labels: given``).
        bn_statistics: the BatchNorm running statistics in the client's upload (withheld from
            the observation with ``attack.bn_statistics: withheld``).
        generator: the public-data generator (:attr:`Prior.generator`), pretrained before the
            run starts.
    """

    labels: str | None = None
    bn_statistics: str | None = None
    generator: str | None = None


@runtime_checkable
class Attack(Protocol):
    """A gradient inversion attack: one observation in, one reconstruction out."""

    name: ClassVar[str]

    def reconstruct(self, observation: Observation, prior: Prior) -> Reconstruction:
        ...

    def summary(self) -> str:
        ...


def bn_statistic_names(model: nn.Module) -> list[str]:
    """``state_dict`` keys of every BatchNorm layer's running statistics and step counter."""
    names = []
    for prefix, module in model.named_modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm) and module.track_running_stats:
            names += [f"{prefix}.{b}" if prefix else b
                      for b in ("running_mean", "running_var", "num_batches_tracked")]
    return names


def check_threat_model(attack: str, needs: ThreatModelNeeds, observation: Observation,
                       model: nn.Module) -> None:
    """Fail before any work when the observation lacks what ``needs`` asks for.

    Args:
        attack: the attack's name (first word of the message).
        needs: the attack's declared needs.
        observation: what the threat model hands over.
        model: the public architecture (to find the BatchNorm buffers).

    Raises:
        ThreatModelError: naming the config key that withholds the data.
    """
    if needs.labels and observation.labels is None:
        raise ThreatModelError(
            f"{attack}: {needs.labels} but the threat model withholds labels (attack.labels: "
            "recover); set attack.labels: given or change that setting")
    if needs.bn_statistics:
        # An architecture without BatchNorm has no statistics to withhold: nothing to check.
        names = [n for n in bn_statistic_names(model) if not n.endswith("num_batches_tracked")]
        missing = [n for n in names if n not in observation.client_state]
        if missing:
            raise ThreatModelError(
                f"{attack}: {needs.bn_statistics} but the threat model withholds the client's "
                f"BatchNorm statistics ({missing[0]} is not in the observation; "
                "attack.bn_statistics: withheld); set attack.bn_statistics: given or change "
                "that setting")


__all__ = ["Attack", "AttackOutcome", "DefenseKnowledge", "Observation", "Prior",
           "Reconstruction", "ThreatModelNeeds", "bn_statistic_names", "check_threat_model"]
