"""Local training, evaluation and the batch schedule, shared by clients, defenses and attacks.

The schedule is the public part of local training: the server chose it (learning rate, batch
size, epochs or steps), so an attacker may replay it. The permutation of the client's images is
private: it comes from the client's own random generator.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from fl_shadow.errors import ConfigError

if TYPE_CHECKING:
    from fl_shadow.config import TrainConfig
    from fl_shadow.defenses.base import Defense, DefenseContext


@dataclass(frozen=True)
class LocalTraining:
    """The local-training plan the server sends with each round (public to the server).

    Attributes:
        lr: SGD learning rate.
        batch_size: local batch size.
        local_epochs: passes over the local data (used when ``local_steps`` is None).
        local_steps: if set, exactly this many steps, cycling through the data.
        momentum: SGD momentum.
        weight_decay: L2 penalty.
        optimizer: ``sgd`` or ``adam``.
        proximal_mu: FedProx's proximal weight: each step's loss adds
            ``proximal_mu / 2 * ||w - w_global||^2`` over the trainable parameters (0: none).
    """

    lr: float
    batch_size: int
    local_epochs: int = 1
    local_steps: int | None = None
    momentum: float = 0.0
    weight_decay: float = 0.0
    optimizer: str = "sgd"
    proximal_mu: float = 0.0

    def step_batch_sizes(self, num_examples: int) -> list[int]:
        """Batch size of each local step for a client holding ``num_examples`` images."""
        batch = min(self.batch_size, num_examples)
        per_epoch = [min(batch, num_examples - start) for start in range(0, num_examples, batch)]
        if self.local_steps is not None:
            return [per_epoch[i % len(per_epoch)] for i in range(self.local_steps)]
        return per_epoch * self.local_epochs

    def num_distinct_images(self, num_examples: int) -> int:
        """How many different images enter one round's update."""
        return min(num_examples, sum(self.step_batch_sizes(num_examples)))


def local_training_plan(train: TrainConfig, *, batch_size: int,
                        proximal_mu: float = 0.0) -> LocalTraining:
    """The plan the server sends a client: the ``train`` section, the client's batch size
    (``partition.batch_sizes``) and the strategy's proximal weight (FedProx).

    Clients train with it and the curious server's attack replays it: both call this.
    """
    return LocalTraining(lr=train.lr, batch_size=batch_size, local_epochs=train.local_epochs,
                         local_steps=train.local_steps, momentum=train.momentum,
                         weight_decay=train.weight_decay, optimizer=train.optimizer,
                         proximal_mu=proximal_mu)


def proximal_term(params: list[torch.Tensor], anchor: list[torch.Tensor],
                  mu: float) -> torch.Tensor:
    """FedProx's ``mu / 2 * sum ||p - p0||^2`` (Li et al. 2020, eq. 2), differentiable in
    ``params``; ``anchor`` is the round's global model (not differentiated)."""
    total = params[0].new_zeros(())
    for p, p0 in zip(params, anchor, strict=True):
        total = total + (p - p0.detach()).pow(2).sum()
    return 0.5 * mu * total


def batch_indices(num_examples: int, plan: LocalTraining,
                  generator: torch.Generator) -> list[torch.Tensor]:
    """Local indices of each step's batch: a fresh permutation per epoch, consecutive slices.

    With ``local_steps`` set, steps continue into the next permutation when an epoch ends.
    """
    sizes = plan.step_batch_sizes(num_examples)
    batches: list[torch.Tensor] = []
    perm = torch.randperm(num_examples, generator=generator)
    pos = 0
    for size in sizes:
        if pos + size > num_examples:
            perm = torch.randperm(num_examples, generator=generator)
            pos = 0
        batches.append(perm[pos:pos + size])
        pos += size
    return batches


@dataclass(frozen=True)
class LocalResult:
    """What one round of local training produced.

    Attributes:
        num_steps: SGD steps taken.
        mean_loss: mean training loss over the steps (on the inputs the model saw).
        batches: local indices of each step's batch, in order (the audit record's content).
    """

    num_steps: int
    mean_loss: float
    batches: list[list[int]]


def make_optimizer(params: Iterator[nn.Parameter] | list[nn.Parameter],
                   plan: LocalTraining) -> torch.optim.Optimizer:
    if plan.optimizer == "sgd":
        return torch.optim.SGD(params, lr=plan.lr, momentum=plan.momentum,
                               weight_decay=plan.weight_decay)
    if plan.optimizer == "adam":
        return torch.optim.Adam(params, lr=plan.lr, weight_decay=plan.weight_decay)
    raise ValueError(f"unknown optimizer {plan.optimizer!r}")


def train_locally(model: nn.Module, images: torch.Tensor, labels: torch.Tensor,
                  plan: LocalTraining, *, defense: Defense, ctx: DefenseContext,
                  generator: torch.Generator) -> LocalResult:
    """Run one round of local training through the defense's hooks.

    The loss is cross-entropy on the batch and targets the defense returns, plus FedProx's proximal term
    around the round's starting weights when ``plan.proximal_mu`` is set (the reported
    ``mean_loss`` is the cross-entropy alone).

    Args:
        model: the (possibly defense-wrapped) model, in place; put in train mode here.
        images: ``(N, C, H, W)`` normalized local images, on the model's device.
        labels: ``(N,)`` labels.
        plan: the round's local-training plan.
        defense: its ``perturb_examples`` sees each clean batch and returns the inputs and
            targets to train on; its ``protect_gradient`` sees each step's gradient before the optimizer does.
        ctx: round/client context handed to the defense; ``ctx.step`` is updated per step.
        generator: the client's private randomness (batch order).
    """
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    anchor = [p.detach().clone() for p in params] if plan.proximal_mu else []
    optimizer = make_optimizer(params, plan)
    batches = batch_indices(len(labels), plan, generator)
    losses = []
    for step, idx in enumerate(batches):
        ctx.step, ctx.batch_index = step, idx
        x, y = images[idx.to(images.device)], labels[idx.to(labels.device)]
        x, y = defense.perturb_examples(x, y, model, ctx)
        model.train()
        loss = F.cross_entropy(model(x), y)
        objective = loss + proximal_term(params, anchor, plan.proximal_mu) if anchor else loss
        grads = list(torch.autograd.grad(objective, params))
        grads = defense.protect_gradient(grads, model, x, y, ctx)
        for p, g in zip(params, grads, strict=True):
            p.grad = g.detach()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(float(loss.detach()))
    return LocalResult(num_steps=len(batches), mean_loss=float(np.mean(losses)),
                       batches=[b.tolist() for b in batches])


@torch.no_grad()
def predict(model: nn.Module, images: torch.Tensor, *, batch_size: int = 256,
            device: torch.device | str = "cpu") -> torch.Tensor:
    """Class predictions ``(N,)`` for normalized ``images``, model in eval mode."""
    model.eval()
    preds = []
    for start in range(0, len(images), batch_size):
        x = images[start:start + batch_size].to(device)
        preds.append(model(x).argmax(dim=1).cpu())
    return torch.cat(preds) if preds else torch.empty(0, dtype=torch.long)


@torch.no_grad()
def evaluate_loss(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, *,
                  batch_size: int = 256, device: torch.device | str = "cpu") -> float:
    """Mean cross-entropy of ``model`` (eval mode) on normalized ``images``."""
    model.eval()
    total, count = 0.0, 0
    for start in range(0, len(images), batch_size):
        x = images[start:start + batch_size].to(device)
        y = labels[start:start + batch_size].to(device)
        total += float(F.cross_entropy(model(x), y, reduction="sum"))
        count += len(y)
    return total / max(count, 1)


def resolve_device(name: str) -> torch.device:
    """``auto`` -> CUDA when available, else CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("train.device: expected a device this machine has; 'cuda' asked, "
                          "no CUDA device is available (use auto or cpu)")
    return torch.device(name)


__all__ = ["LocalTraining", "LocalResult", "batch_indices", "evaluate_loss",
           "local_training_plan", "make_optimizer", "predict", "proximal_term", "resolve_device",
           "train_locally"]
