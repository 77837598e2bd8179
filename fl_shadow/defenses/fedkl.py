"""FedKL key-lock module: a private, key-driven affine lock inside the client's model.

Method: Ren, Deng, Xie, Zhu, Ji & Liu, "Gradient Leakage Defense with Key-Lock Module for
Federated Learning" (arXiv 2305.04095, 2023). Reference code: Rand2AI/FedKL
(``backbone/KL_layer_block.py``, ``utils/Client.py``).

The lock sits on the model's first normalization layer. There, ``h = BN(conv(x))`` is normalized
without the shared affine, and the scale and shift come from the client's private key::

    gamma = act(W_s k + b_s),  beta = act(W_b k + b_b),  out = gamma * h + beta

with ``k`` a private vector of ``key_length`` entries drawn ``U[0, 1)`` once per client, and
``W_s, b_s, W_b, b_b`` (the lock's two ``Linear(key_length, C)``) trained locally with the rest
of the model but never sent. The key and the lock stay in the client's state across rounds.

What leaves the client: every shared parameter's update as usual; the key and the lock never
do. For the first BN layer's own affine (weight, bias), which the locked model does not use,
the client sends ``act(0)``, exactly what the reference's server ends up with for the lock
(clients upload the lock FCs as zeros, so the server's lock outputs ``act(0)``): with ReLU the
server's first block outputs zeros, so the global model alone classifies at chance and an
attacker inverting the update through it gets no gradient with respect to the input at all;
with sigmoid every channel gets the same wrong scale and shift 0.5. With its key, the client's
model (global shared weights + its lock) keeps the task accuracy; the server asks the clients
for that number through Flower's federated evaluation (``client_accuracy`` in the results).

Readings chosen:

* **Placement.** The reference replaces the first conv+BN with its lock block; here the first
  conv stays and the lock replaces the affine of the ``BatchNorm2d`` that follows it, so the
  shared model keeps its architecture and keys (the server, the attacks and the evaluation need
  no FedKL-specific model). The BN's running statistics stay shared, as in the reference
  (``BatchNorm2d(affine=False)`` still tracks them). Models without BatchNorm are refused.
* **What the server holds in place of the lock.** ``act(0)`` in the first BN's affine (see
  above), the reference's server state; an attacker who guesses another affine is an adaptive
  attacker (see the attack suite), not the threat model FedKL was evaluated under.
* **Activation.** ``relu`` (the reference's default) or ``sigmoid`` (its leakage-test models).
  With ReLU about half the channels start at zero scale.
* **The lock's learning rate** (``lock_lr_scale``). A step on ``W`` moves ``gamma = W k + b`` by
  ``lr * ||k||^2`` times the gradient (``||k||^2 ~ key_length / 3``, ~340 for the default key),
  against ``lr`` for the BN affine the lock replaces, and ``gamma`` starts near 0.2, not 1. At
  the shared learning rate one step can push every channel's ReLU below zero, and the lock, and
  with it the client's model, dies for good: in our tests (key length 64, lr >= 0.05) every
  scale ended at 0 and the client's accuracy at chance. Here the FC weights' gradient is divided
  by ``||k||^2`` (so the key length does not set the pace) and the lock's whole gradient is
  scaled by ``lock_lr_scale`` (0.1: a step moves ``gamma`` by a tenth of what it would move a
  BN weight), which kept the lock alive at lr 0.01-0.5 in the tests.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Annotated, Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from fl_shadow.config import ExperimentConfig, Float, Int, settings

from fl_shadow.defenses.base import Defense, DefenseContext, register_defense
from fl_shadow.errors import ConfigError


@settings
class KeyLockParams:
    """Parameters of ``fedkl``.

    Attributes:
        key_length: entries of the private key (reference ``KEY_LENGTH = 1024``).
        activation: ``relu`` (reference default) or ``sigmoid`` on the lock's scale and shift.
        lock_lr_scale: the lock trains at this fraction of the shared learning rate, its FC
            weights further divided by ``||key||^2`` (see the module docstring); ``0`` freezes
            the lock at its random initialisation.
    """

    key_length: Annotated[Int, Field(ge=1, le=1_000_000)] = 1024
    activation: Literal["relu", "sigmoid"] = "relu"
    lock_lr_scale: Annotated[Float, Field(ge=0)] = 0.1


class LockedBatchNorm(nn.BatchNorm2d):
    """``BatchNorm2d`` whose affine is replaced by the key-driven lock.

    Keeps the wrapped layer's parameter and buffer names (so the shared ``state_dict`` keys are
    unchanged); its own ``weight``/``bias`` are frozen and unused. The lock adds ``key`` (a
    buffer), ``lock_scale`` and ``lock_shift`` (``Linear(key_length, C)``).
    """

    def __init__(self, bn: nn.BatchNorm2d, key: torch.Tensor, activation: str,
                 generator: torch.Generator) -> None:
        super().__init__(bn.num_features, eps=bn.eps, momentum=bn.momentum, affine=True,
                         track_running_stats=bn.track_running_stats)
        self.load_state_dict(bn.state_dict())
        self.to(bn.weight.device)
        self.weight.requires_grad_(False)
        self.bias.requires_grad_(False)
        self.activation = activation
        self.register_buffer("key", key.to(bn.weight.device))
        self.lock_scale = _linear(len(key), bn.num_features, generator).to(bn.weight.device)
        self.lock_shift = _linear(len(key), bn.num_features, generator).to(bn.weight.device)

    def lock_affine(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The per-channel ``(gamma, beta)`` the key produces, each ``(C,)``."""
        act = self.activation_fn
        return act(self.lock_scale(self.key)), act(self.lock_shift(self.key))

    def activation_fn(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(x) if self.activation == "relu" else torch.sigmoid(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        use_batch = self.training or not self.track_running_stats
        factor = 0.0
        if self.training and self.track_running_stats:  # as nn.BatchNorm2d does
            self.num_batches_tracked.add_(1)
            factor = (1.0 / float(self.num_batches_tracked) if self.momentum is None
                      else self.momentum)
        h = F.batch_norm(x, self.running_mean, self.running_var, None, None, use_batch,
                         factor, self.eps)
        gamma, beta = self.lock_affine()
        return gamma.view(1, -1, 1, 1) * h + beta.view(1, -1, 1, 1)


def _linear(fan_in: int, fan_out: int, generator: torch.Generator) -> nn.Linear:
    """``nn.Linear`` with PyTorch's default init, drawn from the client's private generator."""
    layer = nn.Linear(fan_in, fan_out)
    bound = 1.0 / fan_in ** 0.5
    with torch.no_grad():
        layer.weight.copy_(torch.empty(fan_out, fan_in).uniform_(-bound, bound,
                                                                 generator=generator))
        layer.bias.copy_(torch.empty(fan_out).uniform_(-bound, bound, generator=generator))
    return layer


def first_batch_norm(model: nn.Module) -> str:
    """Qualified name of the first ``BatchNorm2d`` in ``model`` (the lock's place)."""
    for name, module in model.named_modules():
        if isinstance(module, nn.BatchNorm2d):
            return name
    raise ConfigError("defense.name: fedkl locks the first BatchNorm layer, and this model has "
                      "none; set model.norm: batch")


def _set_submodule(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, module)


def check_batch_norm(params: KeyLockParams, config: ExperimentConfig) -> None:
    """At load: the lock replaces the first BatchNorm layer, so the model needs one."""
    if config.model.norm != "batch":
        raise ConfigError("defense.name: fedkl locks the first BatchNorm layer; set "
                          f"model.norm: batch (got {config.model.norm!r})")


@register_defense("fedkl", KeyLockParams, keeps_client_state=True, private_model=True,
                  check=check_batch_norm)
class KeyLock(Defense):
    """Train through a private key-lock on the first BN layer; never send the lock."""

    _LOCK_KEYS = ("key", "lock_scale.weight", "lock_scale.bias", "lock_shift.weight",
                  "lock_shift.bias")

    def __init__(self, params: KeyLockParams) -> None:
        self.params = params
        self._lock: dict[str, torch.Tensor] = {}
        self._locked: LockedBatchNorm | None = None
        self._shared_keys: list[str] = []
        self._bn_name = ""

    def wrap_model(self, model: nn.Module, ctx: DefenseContext) -> nn.Module:
        """A copy of ``model`` whose first BN carries this client's lock (created on first use).

        The client's own model object is left untouched, so the shared keys stay as they are.
        """
        name = first_batch_norm(model)
        self._bn_name = name
        self._shared_keys = list(model.state_dict())
        locked_model = copy.deepcopy(model)
        bn = locked_model.get_submodule(name)
        assert isinstance(bn, nn.BatchNorm2d)
        if self._lock and self._lock["key"].numel() != self.params.key_length:
            raise ConfigError("defense.params.key_length: differs from the key this client "
                              "already holds")
        key = (self._lock["key"] if self._lock
               else torch.rand(self.params.key_length, generator=ctx.generator))
        fresh = LockedBatchNorm(bn, key, self.params.activation, ctx.generator)
        if self._lock:  # a later round: this client's trained lock, not a fresh one
            fresh.load_state_dict({**fresh.state_dict(), **self._lock})
        _set_submodule(locked_model, name, fresh)
        self._locked = fresh
        return locked_model

    def protect_gradient(self, grads: list[torch.Tensor], model: nn.Module, x: torch.Tensor,
                         y: torch.Tensor, ctx: DefenseContext) -> list[torch.Tensor]:
        """Slow the lock's FC weights down to the pace of the BN affine they replace."""
        lock = self._locked
        if lock is None:
            return grads
        scale = self.params.lock_lr_scale
        weight_scale = scale / float(lock.key.pow(2).sum())
        factor = {id(lock.lock_scale.weight): weight_scale, id(lock.lock_shift.weight): weight_scale,
                  id(lock.lock_scale.bias): scale, id(lock.lock_shift.bias): scale}
        params = [p for p in model.parameters() if p.requires_grad]
        return [g * factor.get(id(p), 1.0) for p, g in zip(params, grads, strict=True)]

    def unwrap_state(self, model: nn.Module) -> dict[str, torch.Tensor]:
        """The shared keys only; the lock is kept back (saved into this defense's state)."""
        if self._locked is not None:
            state = self._locked.state_dict()
            self._lock = {k: state[k].detach().clone() for k in self._LOCK_KEYS}
        full = model.state_dict()
        shared = {k: full[k] for k in self._shared_keys}
        if self._locked is not None and self._bn_name:
            # What the reference's server holds for the lock: act(0) for scale and shift.
            placeholder = float(self._locked.activation_fn(torch.zeros(())))
            for suffix in ("weight", "bias"):
                key = f"{self._bn_name}.{suffix}"
                shared[key] = torch.full_like(shared[key], placeholder)
        return shared

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {f"lock.{k}": v for k, v in self._lock.items()}

    def load_state_dict(self, state: Mapping[str, torch.Tensor]) -> None:
        self._lock = {k[len("lock."):]: v.clone() for k, v in state.items()
                      if k.startswith("lock.")}

    def summary(self) -> str:
        return f"fedkl(key_length={self.params.key_length}, activation={self.params.activation})"
