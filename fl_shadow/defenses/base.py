"""The Defense protocol: hooks a client runs around local training.

One protocol fits the three families:

* input-space defenses (shadow defense, latent perturbation) change what the model trains on:
  :meth:`Defense.perturb_batch`;
* step-level update-space defenses (OUTPOST, Soteria, per-step clipping) change each step's
  gradient: :meth:`Defense.protect_gradient`;
* round-level update-space defenses (DP, clipping, sparsification, CENSOR) change the update
  that leaves the client: :meth:`Defense.protect_update`;
* model-wrapping defenses (FedKL key-lock) change the model itself: :meth:`Defense.wrap_model`.

Every hook defaults to "do nothing", so a defense implements only what it needs. Anything that
must survive between rounds on a client (generator weights, latent codes, noise momentum, keys)
goes through :meth:`state_dict`/:meth:`load_state_dict`; the client stores it in Flower's
per-node ``context.state``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import nn

from fl_shadow.registry import ComponentSpec, Registry, register_component, resolve_component

if TYPE_CHECKING:
    from fl_shadow.generative import ImageGenerator


@dataclass
class DefenseContext:
    """Where the client is when a hook runs.

    Attributes:
        server_round: 1-based federated round.
        num_rounds: total rounds of the run.
        client_id: the client's partition id (or node id in deployment).
        device: where tensors live.
        generator: the client's private random generator (noise, keys); never leaves it.
        step: local step index within the round (set by the training loop).
        batch_index: local indices (into the images given to ``setup``) of the current step's
            batch (set by the training loop), for defenses that keep per-image state.
        experiment: the whole experiment config, for defenses that need shared resources
            (e.g. the shadow defense's pretrained generator); None in unit tests.
        mean, std: the input normalization (inputs to the hooks are normalized).
    """

    server_round: int
    num_rounds: int
    client_id: int
    device: torch.device
    generator: torch.Generator
    step: int = 0
    batch_index: torch.Tensor | None = None
    experiment: Any = None
    mean: tuple[float, ...] = (0.0,)
    std: tuple[float, ...] = (1.0,)
    metrics: dict[str, float] = field(default_factory=dict)


class Defense:
    """Base class: every hook is the identity. Subclasses override what they change."""

    name: ClassVar[str] = "none"
    #: True when the global model alone is not what the clients use (FedKL's private lock):
    #: the server then asks the clients to evaluate the global model through
    #: :meth:`wrap_model` with their private state (Flower's federated evaluation).
    private_model: ClassVar[bool] = False

    def setup(self, images: torch.Tensor, labels: torch.Tensor, model: nn.Module,
              ctx: DefenseContext) -> None:
        """Called once per round before training with the client's normalized local data."""

    def wrap_model(self, model: nn.Module, ctx: DefenseContext) -> nn.Module:
        """Return the model the client trains (e.g. with a private key-lock layer)."""
        return model

    def unwrap_state(self, model: nn.Module) -> dict[str, torch.Tensor]:
        """The ``state_dict`` to upload from a (possibly wrapped) model."""
        return model.state_dict()

    def perturb_batch(self, x: torch.Tensor, y: torch.Tensor, model: nn.Module,
                      ctx: DefenseContext) -> torch.Tensor:
        """Return the inputs to train on for the clean normalized batch ``x`` (N, C, H, W)."""
        return x

    def protect_gradient(self, grads: list[torch.Tensor], model: nn.Module, x: torch.Tensor,
                         y: torch.Tensor, ctx: DefenseContext) -> list[torch.Tensor]:
        """Return the gradient the optimizer applies, one tensor per trainable parameter."""
        return grads

    def protect_update(self, update: dict[str, torch.Tensor], model: nn.Module,
                       ctx: DefenseContext) -> dict[str, torch.Tensor]:
        """Return the update (local - global, per ``state_dict`` key) that leaves the client."""
        return update

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Client-side state to keep across rounds (tensors only)."""
        return {}

    def load_state_dict(self, state: Mapping[str, torch.Tensor]) -> None:
        """Restore what :meth:`state_dict` returned in an earlier round."""

    def summary(self) -> str:
        return self.name


def load_pretrained_generator(ctx: DefenseContext) -> ImageGenerator:
    """The experiment's public-data generator (cached checkpoint), for generative defenses."""
    from fl_shadow.generative import pretrained_generator

    if ctx.experiment is None:
        raise RuntimeError("this defense needs the experiment config (ctx.experiment) to find "
                           "its pretrained generator")
    return pretrained_generator(ctx.experiment, device=ctx.device).generator


DEFENSES: Registry[ComponentSpec[Defense]] = Registry("defense", config_key="defense.name")


def register_defense(name: str, params_type: type) -> Callable[[type], type]:
    """Class decorator; the class is constructed as ``cls(params)``."""
    return register_component(DEFENSES, name, params_type)


def build_defense(name: str, params: Mapping[str, Any] | None) -> Defense:
    """Validate ``params`` with the defense's params dataclass and construct the defense."""
    spec, validated = resolve_component(DEFENSES, name, params, "defense.params")
    return spec.factory(validated)
