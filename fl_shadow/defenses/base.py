"""The Defense protocol: hooks a client runs around local training.

One protocol fits the three families:

* input-space defenses (shadow defense, latent perturbation) change what the model trains on:
  :meth:`Defense.perturb_batch` (and MixUp, which also mixes the labels:
  :meth:`Defense.perturb_examples`);
* step-level update-space defenses (OUTPOST, Soteria, per-step clipping) change each step's
  gradient: :meth:`Defense.protect_gradient`;
* round-level update-space defenses (DP, clipping, sparsification, CENSOR) change the update
  that leaves the client: :meth:`Defense.protect_update`;
* model-wrapping defenses (FedKL key-lock) change the model itself: :meth:`Defense.wrap_model`.

Every hook defaults to "do nothing", so a defense implements only what it needs. Anything that
must survive between rounds on a client (generator weights, latent codes, noise momentum, keys)
goes through :meth:`state_dict`/:meth:`load_state_dict`; the client stores it in Flower's
per-node ``context.state``.

Each defense is declared once, by :func:`register_defense`, as a :class:`DefenseSpec`: its class,
its params dataclass, what it needs (the public-data generator), what it keeps (client state,
a private model), the rules it has with the rest of the experiment (checked at load), and the
*attacker's model* of it: the :class:`DefenseModel` an adaptive attacker builds from the
defense's public parameters (:mod:`attacks.adaptive` applies it inside its replay). The model
lives in the defense's own module, next to what it models.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import nn

from fl_shadow.config import ExperimentConfig, parse_settings
from fl_shadow.registry import Registry
from fl_shadow.threat_model import DefenseKnowledge

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
        public_generator: returns the experiment's generator pretrained on public data (a
            cached checkpoint), for generative defenses; None when the defense has no need
            (:attr:`DefenseSpec.needs_generator`) or in unit tests.
        mean, std: the input normalization (inputs to the hooks are normalized).
        num_classes: the task's number of labels (0 when the caller does not say; defenses
            that build soft targets need it).
        metrics: scalars the defense reports for the round (``defense-*`` in ``fit.jsonl``).
    """

    server_round: int
    num_rounds: int
    client_id: int
    device: torch.device
    generator: torch.Generator
    step: int = 0
    batch_index: torch.Tensor | None = None
    public_generator: Callable[[], ImageGenerator] | None = None
    mean: tuple[float, ...] = (0.0,)
    std: tuple[float, ...] = (1.0,)
    num_classes: int = 0
    metrics: dict[str, float] = field(default_factory=dict)


class Defense:
    """Base class: every hook is the identity. Subclasses override what they change."""

    name: ClassVar[str] = "none"

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

    def perturb_examples(self, x: torch.Tensor, y: torch.Tensor, model: nn.Module,
                         ctx: DefenseContext) -> tuple[torch.Tensor, torch.Tensor]:
        """Return the inputs and the targets to train on: targets are labels ``(N,)`` or class
        probabilities ``(N, num_classes)`` (cross-entropy takes either). The default is
        :meth:`perturb_batch`'s inputs with the labels unchanged; a defense that changes the
        labels too (MixUp) overrides this instead."""
        return self.perturb_batch(x, y, model, ctx), y

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


#: A pixel is *foreground* (anatomy) when some channel is above this in [0, 1] image units:
#: the medical images here have a black background (MNI152, CT windowed to the head).
FOREGROUND_LEVEL = 0.02


def per_channel(values: Sequence[float], x: torch.Tensor) -> torch.Tensor:
    """``values`` (one per channel, or one for all) as a ``(1, C, 1, 1)`` tensor for ``x``."""
    channels = x.shape[1]
    values = tuple(values) if len(values) == channels else tuple(values[:1]) * channels
    return torch.tensor(values, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)


def unnormalize(x: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """Normalized inputs back to [0, 1] image units (an attacker's candidate included)."""
    return x * per_channel(std, x) + per_channel(mean, x)


def foreground_mask(unit_images: torch.Tensor) -> torch.Tensor:
    """``(N, 1, H, W)`` 1.0 on the foreground of [0, 1] images ``(N, C, H, W)``, 0.0 on the
    background; an image without foreground is all foreground (nothing would get noise)."""
    mask = (unit_images.detach().amax(dim=1, keepdim=True) > FOREGROUND_LEVEL).to(
        unit_images.dtype)
    empty = mask.flatten(1).sum(1) == 0
    mask[empty] = 1.0
    return mask


def hospital_psnr_db(target_psnr_db: float, *, per_doubling_db: float, num_images: int
                     ) -> float:
    """A hospital's target PSNR when the strength depends on its size:
    ``target_psnr_db + per_doubling_db * log2(num_images)``.

    ``target_psnr_db`` is the one-image hospital's. With ``per_doubling_db > 0`` the small
    hospitals, which leak most (an update of one image is that image's gradient), get the most
    noise and the large ones, which carry most of FedAvg's weight and so most of the model's
    utility, the least. ``num_images`` below 1 (unknown) counts as 1.
    """
    return target_psnr_db + per_doubling_db * math.log2(max(1, int(num_images)))


def load_pretrained_generator(ctx: DefenseContext) -> ImageGenerator:
    """The experiment's public-data generator (cached checkpoint), for generative defenses."""
    if ctx.public_generator is None:
        raise RuntimeError(f"defense on client {ctx.client_id}: needs the public-data generator "
                           "but the client was built without one (DefenseContext."
                           "public_generator)")
    return ctx.public_generator()


# ---------------------------------------------------------------------------------------------
# The adaptive attacker's model of a defense
# ---------------------------------------------------------------------------------------------
class DefenseModel:
    """What an adaptive attacker simulates of a defense; the base class models nothing.

    The attacker's differentiable replay of local training (:class:`attacks.replay.
    UpdateReplay`) calls the three hooks where the client calls the defense's: on each step's
    batch, on each step's gradient and on the final update. They must be differentiable in
    their inputs (the attack differentiates through them).

    Attributes:
        modelled: False when the defense is not modelled (the attack runs as if undefended).
    """

    modelled: ClassVar[bool] = False

    def perturb_input(self, x: torch.Tensor, step: int) -> torch.Tensor:
        """The batch the client trains on at local ``step`` (0-based), from the clean one."""
        return x

    def protect_gradient(self, grads: list[torch.Tensor], step: int) -> list[torch.Tensor]:
        """The gradient the client's optimizer applies at local ``step``."""
        return grads

    def protect_update(self, update: list[torch.Tensor]) -> list[torch.Tensor]:
        """The update that leaves the client."""
        return update


class Undefended(DefenseModel):
    """The model of a defense that changes nothing (``none``)."""

    modelled = True


def clip_differentiably(tensors: Sequence[torch.Tensor], bound: float, *,
                        eps: float) -> list[torch.Tensor]:
    """Scale ``tensors`` by ``min(1, bound / (||tensors|| + eps))``, differentiably (for
    attacker models; the defenses themselves clip with detached norms)."""
    norm = torch.sqrt(sum((t.pow(2).sum() for t in tensors), tensors[0].new_zeros(())))
    factor = torch.clamp(bound / (norm + eps), max=1.0)
    return [t * factor for t in tensors]


AttackerModelBuilder = Callable[[Any, DefenseKnowledge, list[torch.Tensor], int], DefenseModel]
"""``builder(params, knowledge, received, seed) -> DefenseModel``: ``params`` the defense's
validated params (from ``knowledge.params``), ``received`` the observed update (one tensor per
trainable parameter), ``seed`` for the model's own random draws (EOT)."""


# ---------------------------------------------------------------------------------------------
# Registry
# ---------------------------------------------------------------------------------------------
def _no_check(params: Any, config: ExperimentConfig) -> None:
    """Nothing to check between the params and the rest of the experiment."""


@dataclass(frozen=True)
class DefenseSpec:
    """A registered defense: everything the project knows about it without building it.

    Attributes:
        name: the ``defense.name`` that selects it.
        factory: ``factory(params) -> Defense`` (the class).
        params_type: the :func:`~fl_shadow.config.settings` dataclass of ``defense.params``.
        needs_generator: uses the public-data generator (pretrained before the run starts).
        keeps_client_state: keeps state on the client between rounds (Flower's node state),
            which a resumed federation starts empty.
        private_model: the global model alone is not what the clients use (FedKL's private
            lock): the server asks the clients to evaluate it through :meth:`Defense.
            wrap_model` with their private state (Flower's federated evaluation).
        attacker_model: how an adaptive attacker models it from its public parameters; None
            when its output depends on private draws, keys or learned state (the attack then
            runs as if undefended and says so).
        check: ``check(params, config)`` rules between the params and the experiment, at load
            (raise :class:`~fl_shadow.errors.ConfigError` naming the key, or warn).
    """

    name: str
    factory: Callable[[Any], Defense]
    params_type: type
    needs_generator: bool = False
    keeps_client_state: bool = False
    private_model: bool = False
    attacker_model: AttackerModelBuilder | None = None
    check: Callable[[Any, ExperimentConfig], None] = _no_check

    def parse_params(self, raw: Mapping[str, Any] | None) -> Any:
        """Validate ``defense.params`` into :attr:`params_type` (errors name the key)."""
        return parse_settings(self.params_type, raw, "defense.params")

    def build(self, params: Any) -> Defense:
        """The defense for validated ``params`` (:meth:`parse_params`)."""
        return self.factory(params)


DEFENSES: Registry[DefenseSpec] = Registry("defense", config_key="defense.name")


def register_defense(name: str, params_type: type, *, needs_generator: bool = False,
                     keeps_client_state: bool = False, private_model: bool = False,
                     attacker_model: AttackerModelBuilder | None = None,
                     check: Callable[[Any, ExperimentConfig], None] = _no_check
                     ) -> Callable[[type], type]:
    """Class decorator declaring a defense (see :class:`DefenseSpec` for the arguments).

    The class is constructed as ``cls(params)`` and knows its name as ``cls.name``.
    """

    def decorator(cls: type) -> type:
        cls.name = name  # type: ignore[attr-defined]
        DEFENSES.add(DefenseSpec(name=name, factory=cls, params_type=params_type,
                                 needs_generator=needs_generator,
                                 keeps_client_state=keeps_client_state,
                                 private_model=private_model, attacker_model=attacker_model,
                                 check=check))
        return cls

    return decorator


def build_defense(name: str, params: Mapping[str, Any] | None) -> Defense:
    """Validate ``params`` with the defense's params dataclass and construct the defense."""
    spec = DEFENSES.get(name)
    return spec.build(spec.parse_params(params))


def describe_defense(name: str, params: Mapping[str, Any] | None, *, server_round: int,
                     num_rounds: int, mean: Sequence[float] = (0.0,),
                     std: Sequence[float] = (1.0,), num_examples: int = 0) -> DefenseKnowledge:
    """The public description of a configured defense, defaults filled in by its params
    dataclass (validated exactly as the clients validate it); ``mean``/``std`` the input
    normalization; ``num_examples`` the client's reported number of examples."""
    validated = DEFENSES.get(name).parse_params(params)
    return DefenseKnowledge(name=name, params=dataclasses.asdict(validated),
                            server_round=server_round, num_rounds=num_rounds,
                            mean=tuple(float(v) for v in mean),
                            std=tuple(float(v) for v in std), num_examples=int(num_examples))
