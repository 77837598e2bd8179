"""Gradient sparsification: per-layer magnitude pruning of the update that leaves the client.

Method: Aji & Heafield, "Sparse Communication for Distributed Gradient Descent" (EMNLP 2017),
evaluated as a gradient-leakage defense ("gradient pruning") by Zhu, Liu & Han, "Deep Leakage
from Gradients" (NeurIPS 2019) and used as the "compression" baseline of GGL (Li et al., CVPR
2022), Soteria (Sun et al., CVPR 2021) and CENSOR (Zhang et al., NDSS 2025).

Reading chosen:

* **Per layer.** Every public variant prunes each tensor against its own percentile, not one
  global threshold: for each trainable tensor ``u_l``, ``t_l = pct(|u_l|, prune_percent)``
  (numpy's linear-interpolation percentile) and entries with ``|u_l| < t_l`` become 0. The
  comparison is strict, so ties at the threshold survive: a tensor whose entries are all equal
  keeps everything. ``prune_percent`` is the share *removed* (GGL's ``percentage``), so 90
  keeps about 10%; exactly ``prune_percent`` % of a tensor's ``n`` distinct entries are removed
  whenever ``prune_percent * n / 100`` is an integer, in general ``ceil(p * (n - 1) / 100)``.
* **On the round's update** (:meth:`protect_update`), because that is what leaves the client;
  the references prune the single gradient they share, which with one local SGD step is the
  same thing up to the factor ``-lr``. Pruning each step instead would leave the summed update
  dense again.
* **BatchNorm buffers** (running statistics, step counters) are not gradients and are sent
  unchanged, as in every reference. They still carry the batches' feature statistics; use
  ``model.norm: none`` where that matters.

Differences from the public code: GGL/CENSOR round-trip through numpy, which drops the dtype,
device and autograd graph; here the threshold is computed in torch on the tensor's own device
(and not with ``torch.quantile``, which refuses tensors above 16M entries).
"""

from __future__ import annotations

import math
from typing import Annotated

import torch
from pydantic import Field
from torch import nn

from fl_shadow.config import Float, settings
from fl_shadow.defenses.base import Defense, DefenseContext, DefenseModel, register_defense
from fl_shadow.threat_model import DefenseKnowledge


def percentile(values: torch.Tensor, q: float) -> torch.Tensor:
    """numpy's default (linear) ``percentile`` of all entries of ``values``, as a 0-d tensor.

    Args:
        values: any shape, at least one entry.
        q: percentile in [0, 100].

    Raises:
        ValueError: ``values`` is empty or ``q`` is outside [0, 100].
    """
    if not 0.0 <= q <= 100.0:
        raise ValueError(f"q must be in [0, 100], got {q}")
    flat = values.detach().flatten()
    if flat.numel() == 0:
        raise ValueError("percentile of an empty tensor")
    ordered = torch.sort(flat).values
    pos = q / 100.0 * (flat.numel() - 1)
    lo = math.floor(pos)
    hi = min(lo + 1, flat.numel() - 1)
    frac = pos - lo
    if frac == 0.0:
        return ordered[lo]
    return ordered[lo] + (ordered[hi] - ordered[lo]) * frac


def prune_by_magnitude(tensor: torch.Tensor, prune_percent: float) -> torch.Tensor:
    """Zero the entries of ``tensor`` whose magnitude is strictly below its ``prune_percent``-th
    percentile of magnitudes; a new tensor, same shape, dtype and device."""
    threshold = percentile(tensor.abs(), prune_percent)
    return torch.where(tensor.abs() < threshold, torch.zeros_like(tensor), tensor)


@settings
class SparsificationParams:
    """Parameters of ``sparsification``.

    Attributes:
        prune_percent: share of each trainable tensor's update entries removed, in [0, 100]
            (GGL/CENSOR default 20; Soteria's and DLG's experiments use 10-90).
    """

    prune_percent: Annotated[Float, Field(ge=0, le=100)] = 20.0


class ZeroPatternModel(DefenseModel):
    """The adaptive attacker's model of a pruning defense: the entries the client zeroed
    (exact zeros of the received update) are zeroed in the simulated update too (GGL's
    adaptive mode; the pattern itself is visible on the wire)."""

    modelled = True

    def __init__(self, received: list[torch.Tensor]) -> None:
        self.masks = [(r != 0).to(r.dtype) for r in received]

    def protect_update(self, update: list[torch.Tensor]) -> list[torch.Tensor]:
        return [u * m for u, m in zip(update, self.masks, strict=True)]


def zero_pattern_model(params: object, knowledge: DefenseKnowledge,
                       received: list[torch.Tensor], seed: int) -> ZeroPatternModel:
    """The attacker model of ``sparsification`` and ``soteria``."""
    return ZeroPatternModel(received)


@register_defense("sparsification", SparsificationParams, attacker_model=zero_pattern_model)
class Sparsification(Defense):
    """Keep the largest-magnitude entries of each trainable tensor's update, zero the rest."""

    def __init__(self, params: SparsificationParams) -> None:
        self.params = params

    def protect_update(self, update: dict[str, torch.Tensor], model: nn.Module,
                       ctx: DefenseContext) -> dict[str, torch.Tensor]:
        trainable = {name for name, p in model.named_parameters() if p.requires_grad}
        out = dict(update)
        kept, total = 0, 0
        for name, value in update.items():
            if name not in trainable or value.numel() == 0:
                continue
            out[name] = prune_by_magnitude(value, self.params.prune_percent)
            kept += int(torch.count_nonzero(out[name]))
            total += value.numel()
        if total:
            ctx.metrics["density"] = kept / total
        return out

    def summary(self) -> str:
        return f"sparsification(prune_percent={self.params.prune_percent:g})"
