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

if TYPE_CHECKING:
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
    """

    lr: float
    batch_size: int
    local_epochs: int = 1
    local_steps: int | None = None
    momentum: float = 0.0
    weight_decay: float = 0.0
    optimizer: str = "sgd"

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

    Args:
        model: the (possibly defense-wrapped) model, in place; put in train mode here.
        images: ``(N, C, H, W)`` normalized local images, on the model's device.
        labels: ``(N,)`` labels.
        plan: the round's local-training plan.
        defense: its ``perturb_batch`` sees each clean batch and returns the inputs to train
            on; its ``protect_gradient`` sees each step's gradient before the optimizer does.
        ctx: round/client context handed to the defense; ``ctx.step`` is updated per step.
        generator: the client's private randomness (batch order).
    """
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = make_optimizer(params, plan)
    batches = batch_indices(len(labels), plan, generator)
    losses = []
    for step, idx in enumerate(batches):
        ctx.step, ctx.batch_index = step, idx
        x, y = images[idx.to(images.device)], labels[idx.to(labels.device)]
        x = defense.perturb_batch(x, y, model, ctx)
        model.train()
        loss = F.cross_entropy(model(x), y)
        grads = list(torch.autograd.grad(loss, params))
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
        raise RuntimeError("train.device is 'cuda' but no CUDA device is available")
    return torch.device(name)


__all__ = ["LocalTraining", "LocalResult", "batch_indices", "train_locally", "predict",
           "evaluate_loss", "make_optimizer", "resolve_device"]
