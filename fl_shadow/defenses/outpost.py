"""OUTPOST: probabilistic, Fisher-guided perturbation of each local step's gradient.

Method: F. Wang, E. Hugh and B. Li, "More than Enough is Too Much: Adaptive Defenses against
Gradient Leakage in Production Federated Learning" (IEEE INFOCOM 2023); code in
``TL-System/plato``
(``examples/gradient_leakage_attacks/defense/Outpost/perturb.py``, ``dlg_trainer.py``).

Each local step (:meth:`protect_gradient`), with ``t = ctx.step + 1`` the 1-based local
iteration:

1. perturb with probability ``1 / (1 + beta * t)`` (a uniform draw from the client's private
   generator); otherwise the step's gradient is applied as it is;
2. risk per layer from the current weights: ``risk_l = min(Var(W_l), 1)`` (unbiased variance
   over all entries; 0 for one-entry tensors);
3. empirical Fisher ``F_l = mean over dim 0 of g_l^2`` (shape ``g_l.shape[1:]``, a scalar for
   biases) and one global threshold ``tau = pct(concat_l F_l, 100 - phi)``: the top ``phi`` % of
   Fisher entries are the "sensitive" ones;
4. per layer: entries with ``|g_l| < pct(|g_l|, prune_base)`` are zeroed; then noise
   ``N(0, (risk_l * noise_base)^2)`` is added where ``F_l >= tau`` (the mask broadcast over
   dim 0): ``g_l <- pruned + noise * 1[F_l >= tau]``.

The optimizer applies the perturbed gradient, so the update leaving the client is built from
perturbed steps (and unperturbed ones, increasingly often as ``t`` grows).

Readings chosen / differences from the public code:

* **Iteration counter.** plato uses ``iteration = epoch * (batch_index + 1)`` (1-based epoch,
  0-based batch), which is not monotone across epochs; the paper's decay is over local
  iterations, so ``t`` here is the local step count ``ctx.step + 1`` (monotone across epochs).
* **The perturbation is applied.** plato's HEAD assigns the perturbed tensor to a loop variable
  and returns the untouched gradient (a no-op defense); this follows the working history
  (commit ``1021b7e2``), which writes ``pruned + noise`` back into the gradient.
* **Randomness.** plato re-seeds ``torch.manual_seed(noise_random_seed)`` on every call (the same
  noise every step) and draws the decision from the unseeded ``random`` module; here every draw
  comes from the client's private generator, so steps get fresh noise and a run is reproducible
  under its seed. ``noise_random_seed`` is therefore not a parameter.
* As in plato, noise is added after pruning, so masked entries can become non-zero again.
* BatchNorm buffers are not gradients and are not touched.
"""

from __future__ import annotations

from typing import Annotated

import torch
from pydantic import Field
from torch import nn

from fl_shadow.config import Float, settings
from fl_shadow.defenses.base import Defense, DefenseContext, DefenseModel, register_defense
from fl_shadow.defenses.sparsification import percentile, prune_by_magnitude
from fl_shadow.threat_model import DefenseKnowledge


def perturbation_probability(step: int, *, beta: float) -> float:
    """``1 / (1 + beta * (step + 1))`` for the 0-based local ``step``."""
    return 1.0 / (1.0 + beta * (step + 1))


def layer_risk(weight: torch.Tensor) -> float:
    """``min(Var(W), 1)``, unbiased variance over all entries (0 for a single entry)."""
    if weight.numel() < 2:
        return 0.0
    return min(float(weight.detach().var()), 1.0)


def fisher_masks(grads: list[torch.Tensor], *, phi: float) -> list[torch.Tensor]:
    """Per layer, ``1[F_l >= tau]`` with ``F_l = mean_0(g_l^2)`` and ``tau`` the global
    ``(100 - phi)``-th percentile of all ``F_l`` entries; shapes ``g_l.shape[1:]``."""
    fisher = [g.detach().pow(2).mean(dim=0) if g.dim() > 0 else g.detach().pow(2)
              for g in grads]
    tau = percentile(torch.cat([f.flatten() for f in fisher]), 100.0 - phi)
    return [(f >= tau).to(g.dtype) for f, g in zip(fisher, grads, strict=True)]


@settings
class OutpostParams:
    """Parameters of ``outpost`` (plato defaults).

    Attributes:
        beta: decay rate of the perturbation probability ``1 / (1 + beta * t)``, >= 0.
        phi: percent of (global) Fisher-information entries that receive noise, [0, 100].
        prune_base: percent of each layer's gradient entries pruned by magnitude, [0, 100].
        noise_base: noise std multiplier on the layer risk ``min(Var(W), 1)``, >= 0.
    """

    beta: Annotated[Float, Field(ge=0)] = 0.125
    phi: Annotated[Float, Field(ge=0, le=100)] = 40.0
    prune_base: Annotated[Float, Field(ge=0, le=100)] = 80.0
    noise_base: Annotated[Float, Field(ge=0)] = 0.8


class OutpostModel(DefenseModel):
    """The adaptive attacker's model: each step's gradient replaced by its expectation under
    OUTPOST's coin, ``p_t prune(g) + (1 - p_t) g`` with ``p_t = 1 / (1 + beta t)``; the noise
    has mean 0. The pruning mask is taken from the (detached) candidate gradient."""

    modelled = True

    def __init__(self, beta: float, prune_base: float) -> None:
        self.beta, self.prune_base = beta, prune_base

    def protect_gradient(self, grads: list[torch.Tensor], step: int) -> list[torch.Tensor]:
        p = perturbation_probability(step, beta=self.beta)
        out = []
        for g in grads:
            magnitude = g.detach().abs().flatten()
            threshold = torch.quantile(magnitude.double(), self.prune_base / 100).to(g.dtype)
            kept = g * (g.detach().abs() >= threshold).to(g.dtype)
            out.append(p * kept + (1 - p) * g)
        return out


def attacker_model(params: OutpostParams, knowledge: DefenseKnowledge,
                   received: list[torch.Tensor], seed: int) -> OutpostModel:
    return OutpostModel(params.beta, params.prune_base)


@register_defense("outpost", OutpostParams, attacker_model=attacker_model)
class Outpost(Defense):
    """Prune and Fisher-masked noise on each step's gradient, with decaying probability."""

    def __init__(self, params: OutpostParams) -> None:
        self.params = params
        self._steps = 0
        self._perturbed = 0

    def perturb(self, grads: list[torch.Tensor], model: nn.Module,
                generator: torch.Generator) -> list[torch.Tensor]:
        """Steps 2-4 of the method on one gradient (always applied)."""
        p = self.params
        params = [q for q in model.parameters() if q.requires_grad]
        masks = fisher_masks(grads, phi=p.phi)
        out = []
        for g, weight, mask in zip(grads, params, masks, strict=True):
            pruned = prune_by_magnitude(g, p.prune_base) if g.numel() else g
            noise = torch.randn(g.shape, generator=generator, dtype=g.dtype).to(g.device)
            std = layer_risk(weight) * p.noise_base
            out.append(pruned + noise * std * mask if std > 0 else pruned)
        return out

    def protect_gradient(self, grads: list[torch.Tensor], model: nn.Module, x: torch.Tensor,
                         y: torch.Tensor, ctx: DefenseContext) -> list[torch.Tensor]:
        draw = float(torch.rand((), generator=ctx.generator))
        self._steps += 1
        if draw < perturbation_probability(ctx.step, beta=self.params.beta):
            self._perturbed += 1
            grads = self.perturb(grads, model, ctx.generator)
        ctx.metrics["perturbed_fraction"] = self._perturbed / self._steps
        return grads

    def summary(self) -> str:
        p = self.params
        return (f"outpost(beta={p.beta:g}, phi={p.phi:g}, prune_base={p.prune_base:g}, "
                f"noise_base={p.noise_base:g})")
