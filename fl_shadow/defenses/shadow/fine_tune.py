"""Pseudo local training and shadow fine-tuning: the client plays the attacker against itself.

:func:`pseudo_step` runs the victim's step on the clean batch *without* changing the model (its
BatchNorm running statistics included) and returns what a GradInversion-style attacker would
match: the gradient and the per-BN-layer batch statistics.

:func:`shadow_objective` is the attacker's objective evaluated on the shadow's images
``x_hat = normalize(G(z))``, differentiable in the generator's weights:

``w_grad * sum_l ||grad_l(x_hat) - g*_l||_2 + w_tv * TV(x_hat) + w_norm * ||x_hat||_2 / (HW)^2
+ w_bn * sum_BN(||mu - mu*||_2 + ||var - var*||_2) + w_rec * MSE(x_hat, x)``

Differences from the reference code, on purpose:

* The gradient term has a real path to the generator: ``grad_l(x_hat)`` comes from
  ``autograd.grad(..., create_graph=True)`` and is differentiated again (the reference reads
  its simulated update from ``state_dict`` after an in-place step, so the term is inert).
* ``g*`` and ``grad(x_hat)`` come from the same model -- the client's current local weights in
  train mode -- so they match at every local step, not only the first of a round; the BN
  targets are the clean batch's exact (biased) statistics, the ones BatchNorm normalizes with.
* The task model's running statistics are never touched (the forward passes use copies).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

__all__ = ["ShadowWeights", "VictimStep", "pseudo_step", "shadow_objective", "total_variation"]


@dataclass(frozen=True)
class VictimStep:
    """The clean batch's step as an attacker would try to match it.

    Attributes:
        gradient: one tensor per trainable parameter (in ``model.parameters()`` order).
        bn_mean, bn_var: per BatchNorm layer, the batch mean and biased variance of its input.
    """

    gradient: list[torch.Tensor]
    bn_mean: list[torch.Tensor]
    bn_var: list[torch.Tensor]


@dataclass(frozen=True)
class ShadowWeights:
    """Weights of the shadow objective (the reference's names and defaults)."""

    grad_match: float = 1e-2
    total_var: float = 1e-5
    img_norm: float = 1e2
    bn: float = 1e-2
    rec: float = 1.0


@contextmanager
def _batch_statistics(model: nn.Module) -> Iterator[list[tuple[torch.Tensor, torch.Tensor]]]:
    """Collect (mean, biased var) of every BatchNorm layer's input during the forward pass."""
    stats: list[tuple[torch.Tensor, torch.Tensor]] = []

    def hook(_module: nn.Module, inputs: tuple[torch.Tensor, ...], _output: torch.Tensor) -> None:
        x = inputs[0]
        dims = [0] + list(range(2, x.dim()))
        stats.append((x.mean(dim=dims), x.var(dim=dims, unbiased=False)))

    handles = [m.register_forward_hook(hook) for m in model.modules()
               if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    try:
        yield stats
    finally:
        for h in handles:
            h.remove()


def _train_mode_logits(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Logits in train mode with the model's own parameters but copied buffers, so BatchNorm
    normalizes with batch statistics and the model's running statistics stay as they were."""
    was_training = model.training
    model.train()
    try:
        tensors = {**dict(model.named_parameters()),
                   **{k: v.clone() for k, v in model.named_buffers()}}
        return functional_call(model, tensors, (x,))
    finally:
        model.train(was_training)


def pseudo_step(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> VictimStep:
    """The victim gradient and BN statistics of the clean batch ``(x, y)`` at the model's
    current weights; the model (weights, buffers, ``.grad``) is left unchanged."""
    params = [p for p in model.parameters() if p.requires_grad]
    with _batch_statistics(model) as stats:
        loss = F.cross_entropy(_train_mode_logits(model, x), y)
    grads = torch.autograd.grad(loss, params)
    return VictimStep(gradient=[g.detach() for g in grads],
                      bn_mean=[m.detach() for m, _ in stats],
                      bn_var=[v.detach() for _, v in stats])


def total_variation(x: torch.Tensor) -> torch.Tensor:
    """Mean over images of the L2 norms of the four directional differences (reference TV)."""
    diffs = (x[:, :, 1:, :] - x[:, :, :-1, :], x[:, :, :, 1:] - x[:, :, :, :-1],
             x[:, :, 1:, 1:] - x[:, :, :-1, :-1], x[:, :, 1:, :-1] - x[:, :, :-1, 1:])
    return sum(d.flatten(1).norm(dim=1) for d in diffs).mean()  # type: ignore[return-value]


def shadow_objective(x_hat: torch.Tensor, x: torch.Tensor, y: torch.Tensor, model: nn.Module,
                     victim: VictimStep | None, weights: ShadowWeights
                     ) -> tuple[torch.Tensor, dict[str, float]]:
    """The shadow loss for the shadow images ``x_hat`` (normalized, with a graph to the
    generator) against the clean batch ``x``; ``victim`` None drops the gradient and BN terms.

    Returns:
        The scalar loss and its terms (floats, for logging).
    """
    h, w = x_hat.shape[-2:]
    terms: dict[str, torch.Tensor] = {
        "tv": total_variation(x_hat),
        "img_norm": x_hat.flatten(1).norm(dim=1).mean() / float(h * w) ** 2,
        "rec": F.mse_loss(x_hat, x),
    }
    if victim is not None:
        params = [p for p in model.parameters() if p.requires_grad]
        with _batch_statistics(model) as stats:
            loss = F.cross_entropy(_train_mode_logits(model, x_hat), y)
        grads = torch.autograd.grad(loss, params, create_graph=True)
        terms["grad"] = sum((g - t).flatten().norm()  # type: ignore[assignment]
                            for g, t in zip(grads, victim.gradient, strict=True))
        if stats:  # models without BatchNorm have no statistics to match
            terms["bn"] = sum((m - tm).norm() + (v - tv).norm()  # type: ignore[assignment]
                              for (m, v), tm, tv in zip(stats, victim.bn_mean, victim.bn_var,
                                                        strict=True))
    scale = {"grad": weights.grad_match, "tv": weights.total_var, "img_norm": weights.img_norm,
             "bn": weights.bn, "rec": weights.rec}
    total = sum(scale[k] * v for k, v in terms.items())
    return total, {k: float(v.detach()) for k, v in terms.items()}  # type: ignore[return-value]
