"""Client-level differential privacy: clip the round's update, add Gaussian noise, account.

Method: DP-FedAvg, McMahan, Ramage, Talwar & Zhang, "Learning Differentially Private Recurrent
Language Models" (ICLR 2018), in the client-side ("local noise") form of Flower's ``LocalDpMod``
and of Geyer, Klein & Nabi, "Differentially Private Federated Learning: A Client Level
Perspective" (NeurIPS 2017 workshop, the "noise" baseline of CENSOR). Privacy is accounted with
the Rényi-DP accountant of the sampled Gaussian mechanism (Mironov, Talwar & Zhang 2019) as
implemented by opacus.

Per round, with ``u`` the released part of the update (see below), ``C = clip_norm`` and
``sigma = noise_multiplier``:

1. ``u <- u * min(1, C / ||u||_2)`` (one global L2 norm over all released tensors);
2. ``u <- u + N(0, (sigma * C)^2 I)``, drawn from the client's private generator;
3. ``epsilon`` (reported as the fit metric ``defense-epsilon``) = opacus's RDP accountant after
   ``server_round`` steps of (``sigma``, ``sample_rate``), at ``delta``. It is the *total* ε spent
   by the client up to and including this round; it is recomputed from ``server_round``, so no
   accountant state has to survive between rounds.

Readings chosen:

* **What the guarantee means.** Adjacent federations differ by one client's whole dataset
  (add/remove, user-level DP as in DP-FedAvg); the clipped update has sensitivity ``C`` and
  every client adds ``sigma * C`` noise itself, so the aggregate carries at least that much.
  ``sample_rate`` is the probability that the client takes part in a round (``fraction_fit``);
  amplification by subsampling only hides participation from observers of the aggregate, so
  against the curious server, which chose the clients, use ``sample_rate: 1`` (the default).
  Against a server that reads this one update and asks which of *two* datasets the client
  held (replace adjacency, sensitivity ``2C``), the same noise gives the ε of ``sigma / 2``.
* **BatchNorm buffers** (``bn_buffers``). Running means/variances are functions of the
  client's batches (GradInversion's BN prior uses exactly them), so releasing them outside the
  mechanism would void the guarantee. ``withhold`` (default): the client sends the global
  buffers back unchanged (zero buffer update); nothing data-dependent leaves the client except
  the noised, clipped parameter update. The price: the global model's running statistics stay
  at their initial values (use ``model.norm: none`` for a fair utility comparison).
  ``noise``: float buffers join the parameters in the one clipped vector and are noised too, so
  the same ε covers them (they then share the clipping budget, and noised running variances may
  turn negative). Integer buffers (``num_batches_tracked``) are withheld in both modes.
* The Flower mod parametrises noise by a target (ε, δ) with the classic Gaussian mechanism
  (valid only for ε < 1) and a ``sensitivity`` unrelated to ``clipping_norm``; here the noise is
  ``noise_multiplier * clip_norm`` and ε comes from the RDP accountant, as in DP-FedAvg/opacus.
"""

from __future__ import annotations

import math
import warnings
from typing import Annotated, Literal

import torch
from pydantic import Field
from torch import nn

from fl_shadow.config import ExperimentConfig, Float, settings
from fl_shadow.defenses.base import (
    Defense,
    DefenseContext,
    DefenseModel,
    clip_differentiably,
    register_defense,
)
from fl_shadow.threat_model import DefenseKnowledge


def rdp_epsilon(*, noise_multiplier: float, sample_rate: float, rounds: int,
                delta: float) -> float:
    """Total ε after ``rounds`` sampled Gaussian mechanisms, from opacus's RDP accountant.

    Args:
        noise_multiplier: noise std divided by the L2 sensitivity; 0 gives ``inf``.
        sample_rate: probability that the client takes part in a round, in (0, 1].
        rounds: rounds run so far (>= 0; 0 gives 0).
        delta: target δ in (0, 1).
    """
    from opacus.accountants import RDPAccountant

    if rounds <= 0:
        return 0.0
    if noise_multiplier == 0:
        return math.inf
    accountant = RDPAccountant()
    for _ in range(rounds):
        accountant.step(noise_multiplier=noise_multiplier, sample_rate=sample_rate)
    return float(accountant.get_epsilon(delta=delta))


@settings
class DPParams:
    """Parameters of ``dp``.

    Attributes:
        clip_norm: L2 bound ``C`` on the released update (Opacus/DP-FedAvg examples use 1.0).
        noise_multiplier: ``sigma``; the noise std is ``sigma * C`` per entry (default 1.0).
        delta: δ at which ε is reported (GradAttack reports 1e-3, 1e-4, 1e-5; default 1e-5).
        sample_rate: probability the client takes part in a round (``fraction_fit``), (0, 1].
        bn_buffers: ``withhold`` or ``noise`` (see the module docstring).
    """

    clip_norm: Annotated[Float, Field(gt=0)] = 1.0
    noise_multiplier: Annotated[Float, Field(ge=0)] = 1.0
    delta: Annotated[Float, Field(gt=0, lt=1)] = 1e-5
    sample_rate: Annotated[Float, Field(gt=0, le=1)] = 1.0
    bn_buffers: Literal["withhold", "noise"] = "withhold"


def check_sampling(params: DPParams, config: ExperimentConfig) -> None:
    """At load, once: weak settings that are legal. Epsilon is accounted with
    ``sample_rate`` while the clients take part at ``strategy.fraction_fit`` (a smaller
    ``sample_rate`` reports too small an epsilon); ``noise_multiplier`` 0 only clips."""
    if params.noise_multiplier == 0:
        warnings.warn("defense.params.noise_multiplier is 0: updates are clipped but not "
                      "noised, epsilon is infinite", stacklevel=2)
    fraction = config.strategy.fraction_fit
    if params.sample_rate < fraction:
        warnings.warn(f"defense.params.sample_rate ({params.sample_rate:g}) is below "
                      f"strategy.fraction_fit ({fraction:g}): the reported epsilon is too "
                      "small", stacklevel=2)


class UpdateClippingModel(DefenseModel):
    """The adaptive attacker's model: update-level clipping (DP's first step); the
    zero-mean noise is left out.

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
        return clip_differentiably(update, self.clip_norm, eps=0.0)


def attacker_model(params: DPParams, knowledge: DefenseKnowledge, received: list[torch.Tensor],
                   seed: int) -> UpdateClippingModel:
    return UpdateClippingModel(params.clip_norm, received)


@register_defense("dp", DPParams, attacker_model=attacker_model, check=check_sampling)
class DifferentialPrivacy(Defense):
    """Clip the round's update to ``clip_norm``, add ``N(0, (noise_multiplier*clip_norm)^2)``."""

    def __init__(self, params: DPParams) -> None:
        self.params = params

    def released_keys(self, update: dict[str, torch.Tensor], model: nn.Module) -> list[str]:
        """Keys of ``update`` that go through the mechanism; every other key is withheld."""
        trainable = {name for name, p in model.named_parameters() if p.requires_grad}
        keep_buffers = self.params.bn_buffers == "noise"
        return [k for k, v in update.items()
                if k in trainable or (keep_buffers and v.is_floating_point())]

    def protect_update(self, update: dict[str, torch.Tensor], model: nn.Module,
                       ctx: DefenseContext) -> dict[str, torch.Tensor]:
        p = self.params
        released = self.released_keys(update, model)
        out = {k: torch.zeros_like(v) for k, v in update.items()}
        norm = math.sqrt(sum(float(update[k].detach().double().pow(2).sum()) for k in released))
        scale = min(1.0, p.clip_norm / norm) if norm > 0 else 1.0
        std = p.noise_multiplier * p.clip_norm
        for k in released:
            value = update[k] if scale == 1.0 else update[k] * scale
            if std > 0:
                noise = torch.randn(value.shape, generator=ctx.generator, dtype=value.dtype)
                value = value + std * noise.to(value.device)
            out[k] = value
        ctx.metrics["update_norm"] = norm
        ctx.metrics["clipped"] = float(scale < 1.0)
        ctx.metrics["epsilon"] = rdp_epsilon(noise_multiplier=p.noise_multiplier,
                                             sample_rate=p.sample_rate,
                                             rounds=ctx.server_round, delta=p.delta)
        return out

    def summary(self) -> str:
        p = self.params
        return (f"dp(clip_norm={p.clip_norm:g}, noise_multiplier={p.noise_multiplier:g}, "
                f"delta={p.delta:g}, sample_rate={p.sample_rate:g}, bn_buffers={p.bn_buffers})")
