"""Gradient clipping: every local step's gradient is scaled to a global L2 norm of at most
``max_norm`` before the optimizer applies it.

Method: the norm-clipping baseline of GGL (Li, Chen, Wang & Lin, "Auditing Privacy Defenses in
Federated Learning via Generative Gradient Leakage", CVPR 2022), after Wei et al.,
"Gradient-Leakage Resilient Federated Learning" (ICDCS 2021), and reused by CENSOR (Zhang et
al., NDSS 2025).

Reading chosen:

* **Global norm, per step.** ``T = sqrt(sum_l ||g_l||^2)`` over every trainable parameter's
  gradient; if ``T > max_norm`` every ``g_l`` is multiplied by ``max_norm / (T + 1e-6)`` (the
  1e-6 of the reference keeps the result strictly below the bound), otherwise the gradient is
  returned untouched. It runs in :meth:`protect_gradient`, on each local step, which is where
  the reference clips the one gradient it shares; the update leaving the client is then a sum
  of clipped steps (its norm is at most ``steps * lr * max_norm`` for plain SGD).
* Only the direction's scale changes, so cosine-matching attacks (Inverting Gradients) are
  unaffected by design; the defense is a baseline, not a protection claim.
* BatchNorm buffers are not gradients and are not touched.

Differences from the public code: GGL/CENSOR clip in place (``g.mul_``), which corrupts tensors
that are still part of an autograd graph; here new tensors are returned.
"""

from __future__ import annotations

import math
from typing import Annotated

import torch
from pydantic import Field
from torch import nn

from fl_shadow.config import Float, settings

from fl_shadow.defenses.base import (
    Defense,
    DefenseContext,
    DefenseModel,
    clip_differentiably,
    register_defense,
)
from fl_shadow.threat_model import DefenseKnowledge

CLIP_EPS = 1e-6


def global_norm(tensors: list[torch.Tensor]) -> float:
    """``sqrt(sum_l ||t_l||^2)`` over all tensors (accumulated in float64)."""
    return math.sqrt(sum(float(t.detach().double().pow(2).sum()) for t in tensors))


def clip_by_global_norm(tensors: list[torch.Tensor], *, max_norm: float) -> list[torch.Tensor]:
    """Scale all tensors by ``max_norm / (T + 1e-6)`` when their global norm ``T`` exceeds
    ``max_norm``; otherwise return them unchanged (the same objects)."""
    total = global_norm(tensors)
    if total <= max_norm:
        return list(tensors)
    scale = max_norm / (total + CLIP_EPS)
    return [t * scale for t in tensors]


@settings
class ClippingParams:
    """Parameters of ``clipping``.

    Attributes:
        max_norm: bound on each step's global gradient L2 norm (GGL/CENSOR default 4).
    """

    max_norm: Annotated[Float, Field(gt=0)] = 4.0


class ClippingModel(DefenseModel):
    """The adaptive attacker's model: each step's gradient clipped to ``max_norm`` (exact)."""

    modelled = True

    def __init__(self, max_norm: float) -> None:
        self.max_norm = max_norm

    def protect_gradient(self, grads: list[torch.Tensor], step: int) -> list[torch.Tensor]:
        return clip_differentiably(grads, self.max_norm, eps=CLIP_EPS)


def attacker_model(params: ClippingParams, knowledge: DefenseKnowledge,
                   received: list[torch.Tensor], seed: int) -> ClippingModel:
    return ClippingModel(params.max_norm)


@register_defense("clipping", ClippingParams, attacker_model=attacker_model)
class GradientClipping(Defense):
    """Clip every local step's gradient to a global L2 norm of ``max_norm``."""

    def __init__(self, params: ClippingParams) -> None:
        self.params = params
        self._steps = 0
        self._clipped = 0

    def protect_gradient(self, grads: list[torch.Tensor], model: nn.Module, x: torch.Tensor,
                         y: torch.Tensor, ctx: DefenseContext) -> list[torch.Tensor]:
        total = global_norm(grads)
        self._steps += 1
        if total > self.params.max_norm:
            self._clipped += 1
            grads = [g * (self.params.max_norm / (total + CLIP_EPS)) for g in grads]
        ctx.metrics["clipped_fraction"] = self._clipped / self._steps
        return grads

    def summary(self) -> str:
        return f"clipping(max_norm={self.params.max_norm:g})"
