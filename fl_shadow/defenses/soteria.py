"""Soteria: prune the last layer's gradient where the input representation reveals the input.

Method: Sun, Li, Wang, Yu, Chen & Li, "Soteria: Provable Defense Against Privacy Leakage in
Federated Learning From Representation Perspective" (CVPR 2021); official code
``jeremy313/Soteria`` (``GS_attack/reconstruct_image.py``), reused by GGL and CENSOR
(``perturb_representation``).

The representation ``r`` (``N x D``) is the input of the final linear layer ``fc`` (the
flattened feature map for the ConvNet, the pooled 512-d vector for ResNet-18; see
:func:`fc_input`). Removing feature ``f`` from the shared gradient moves a reconstruction by
about ``|r_f| / ||dr_f/dX||``, so Soteria removes the features where that ratio is largest.
Each step (:meth:`protect_gradient`):

1. for every feature ``f`` and sample ``i``: ``s_if = ||d r_if / d X_i||_2 / (|r_if| + eps)``,
   from one backward pass of the one-hot cotangent ``e_f`` per feature (batched), and
   ``S_f = sum_i s_if``;
2. ``t = pct(S, pruning_rate)``; features with ``S_f < t`` (strict) are pruned;
3. the pruned features' columns of the ``fc.weight`` gradient are set to 0. The bias and every
   other layer are untouched.

Readings chosen:

* **Which end is pruned.** The official code prunes the smallest ``||dr/dX|| / r`` (the
  comment in its source) = the largest ``r / ||dr/dX||``; that is the paper's argument (prune
  where a small representation change moves the input most) and it is what runs here.
* **Magnitude.** The paper's ratio uses ``||r_f||``; the code divides by the signed ``r`` and
  thresholds the signed sum while comparing ``|S|``. Here ``|r|`` is used, so ``S >= 0`` and the
  comparison is consistent for representations that can be negative. ``eps`` defaults to the
  official GS script's 0.1; with ``eps = 0`` a dead feature (``r = 0`` and ``dr/dX = 0``) scores
  0 instead of NaN (NaN made the percentile NaN and silently disabled pruning).
* **Eval mode for the scores**, as in the official script: with train-mode BatchNorm the
  one-hot backward of feature ``f`` would mix samples (and an extra train-mode forward would move
  the running statistics). The gradient itself is the training step's.
* **Per local step.** The references mask the one gradient they share; here every step's
  gradient is masked before the optimizer applies it. With one local step the update's
  ``fc.weight`` columns of the pruned features are exactly 0.
* BatchNorm buffers are not gradients and are not touched.

Cost: the Jacobian of ``r`` with respect to each image, per step: ``min(D, C*H*W)`` batched
passes (``D`` = 8192 for the default ConvNet at 32 px, 512 for ResNet-18). The references run
``D`` reverse passes; forward mode gives the same numbers when the image is smaller than ``D``.
That is 1,024 forward passes per image per step at 32 px: the 128-image client of the default
took ~6 minutes per round on 2 cores.

``jacobian: sketch`` (an option of this project, not of the paper) estimates the row norms
instead: ``||J_f||^2 = E[(J v)_f^2]`` for random sign vectors ``v`` (Hutchinson), with ``probes``
forward-mode passes per image (default 64: each image's squared norms within ~18% relative
standard deviation, the batch's summed score ``S_f`` much tighter); the probes come from the
client's private generator. The pruned set then differs from the exact one only for features
near the threshold (tested: >= 90% of the pruned features agree at 64 probes).
"""

from __future__ import annotations

from typing import Annotated, Literal

import torch
from pydantic import Field
from torch import nn

from fl_shadow.config import Float, Int, settings
from fl_shadow.defenses.base import Defense, DefenseContext, register_defense
from fl_shadow.defenses.sparsification import percentile, zero_pattern_model

# Entries of input-gradient cotangents per batched backward pass (memory bound, not a knob).
_CHUNK_ENTRIES = 1 << 21


def fc_input(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The input ``(N, D)`` of ``model.fc`` for the batch ``x``, computed through
    ``model.forward_head(model.forward_features(x))`` (flattened, after any pooling)."""
    captured: list[torch.Tensor] = []
    handle = model.fc.register_forward_pre_hook(lambda _m, args: captured.append(args[0]))
    try:
        model.forward_head(model.forward_features(x))
    finally:
        handle.remove()
    return captured[0]


def sketched_row_norms(model: nn.Module, x: torch.Tensor, *, probes: int,
                       generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """``r`` and an unbiased estimate of ``||d r_if / d X_i||_2^2``'s root, per sample and
    feature, from ``probes`` Rademacher tangents per sample (forward mode, batched).

    The model must be in eval mode (samples independent). Returns ``(N, D)`` tensors.
    """
    with torch.no_grad():
        r = fc_input(model, x)

    def forward(inp: torch.Tensor) -> torch.Tensor:
        return fc_input(model, inp)

    primal = x.detach()
    squares = torch.zeros_like(r)
    chunk = max(1, _CHUNK_ENTRIES // max(1, x.numel()))
    for start in range(0, probes, chunk):
        k = min(chunk, probes - start)
        signs = torch.randint(0, 2, (k, *x.shape), generator=generator).to(x.dtype) * 2 - 1
        columns = torch.func.vmap(lambda t: torch.func.jvp(forward, (primal,), (t,))[1])(
            signs.to(x.device))
        squares += columns.detach().pow(2).sum(dim=0)
    return r, (squares / probes).sqrt()


def jacobian_row_norms(model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``r = fc_input(model, x)`` and ``||d r_if / d X_i||_2`` for every sample and feature.

    The model must be in eval mode (samples independent). Both returned tensors are ``(N, D)``
    and detached. Uses ``D`` batched reverse-mode passes (one-hot cotangent per feature, as in
    the reference) or, when the image has fewer entries ``P = C*H*W`` than ``D``, ``P`` batched
    forward-mode passes (one-hot tangent per pixel); both give the same Jacobian.
    """
    n, p = x.shape[0], x[0].numel()
    with torch.no_grad():
        r = fc_input(model, x)
    d = r.shape[1]
    chunk = max(1, _CHUNK_ENTRIES // max(1, x.numel()))
    if d <= p:
        inputs = x.detach().clone().requires_grad_(True)
        with torch.enable_grad():
            rep = fc_input(model, inputs)
        norms = torch.empty(n, d, dtype=r.dtype, device=r.device)
        for start in range(0, d, chunk):
            k = min(chunk, d - start)
            cotangent = torch.zeros(k, n, d, dtype=r.dtype, device=r.device)
            cotangent[torch.arange(k), :, start + torch.arange(k)] = 1.0
            (dx,) = torch.autograd.grad(rep, inputs, grad_outputs=cotangent, retain_graph=True,
                                        is_grads_batched=True)
            norms[:, start:start + k] = dx.flatten(2).norm(dim=2).T  # (k, N) -> (N, k)
        return r, norms

    def forward(inp: torch.Tensor) -> torch.Tensor:
        return fc_input(model, inp)

    primal = x.detach()
    squares = torch.zeros(n, d, dtype=r.dtype, device=r.device)
    for start in range(0, p, chunk):
        k = min(chunk, p - start)
        tangents = torch.zeros(k, n, p, dtype=x.dtype, device=x.device)
        tangents[torch.arange(k), :, start + torch.arange(k)] = 1.0
        tangents = tangents.view(k, *x.shape)
        columns = torch.func.vmap(lambda t: torch.func.jvp(forward, (primal,), (t,))[1])(tangents)
        squares += columns.detach().pow(2).sum(dim=0)  # (k, N, D) -> (N, D)
    return r, squares.sqrt()


def representation_scores(model: nn.Module, x: torch.Tensor, *, eps: float,
                          probes: int | None = None,
                          generator: torch.Generator | None = None) -> torch.Tensor:
    """Soteria's per-feature score ``S_f = sum_i ||d r_if / d X_i|| / (|r_if| + eps)``, ``(D,)``.

    Computed in eval mode (restored afterwards); parameter gradients and BatchNorm running
    statistics are untouched. With ``probes`` the norms are sketched
    (:func:`sketched_row_norms`, drawing from ``generator``), else exact.
    """
    was_training = model.training
    model.eval()
    try:
        if probes is None:
            r, norms = jacobian_row_norms(model, x)
        else:
            if generator is None:
                raise ValueError("sketched Soteria scores need a generator")
            r, norms = sketched_row_norms(model, x, probes=probes, generator=generator)
    finally:
        model.train(was_training)
    ratio = norms / (r.abs() + eps)
    return torch.nan_to_num(ratio, nan=0.0).sum(dim=0)


def fc_weight_index(model: nn.Module) -> int:
    """Position of ``model.fc.weight`` among the model's trainable parameters."""
    params = [p for p in model.parameters() if p.requires_grad]
    for i, p in enumerate(params):
        if p is model.fc.weight:
            return i
    raise ValueError("model.fc.weight is not a trainable parameter of the model")


@settings
class SoteriaParams:
    """Parameters of ``soteria``.

    Attributes:
        pruning_rate: percent of representation features whose ``fc.weight`` gradient column is
            zeroed, in [0, 100] (official README example 60; GGL/CENSOR 10; DLG notebook 1).
        eps: added to ``|r|`` in the score's denominator, >= 0 (official GS script 0.1).
        jacobian: ``exact`` (the paper's scores) or ``sketch`` (estimated row norms, see the
            module docstring: ~16x faster at 32 px with 64 probes).
        probes: random probes per image of ``sketch``.
    """

    pruning_rate: Annotated[Float, Field(ge=0, le=100)] = 60.0
    eps: Annotated[Float, Field(ge=0)] = 0.1
    jacobian: Literal["exact", "sketch"] = "exact"
    probes: Annotated[Int, Field(ge=1, le=65536)] = 64


@register_defense("soteria", SoteriaParams, attacker_model=zero_pattern_model)
class Soteria(Defense):
    """Zero the ``fc.weight`` gradient columns of the most revealing representation features."""

    def __init__(self, params: SoteriaParams) -> None:
        self.params = params

    def feature_mask(self, model: nn.Module, x: torch.Tensor,
                     generator: torch.Generator | None = None) -> torch.Tensor:
        """``(D,)`` 1.0 for kept features, 0.0 for pruned ones."""
        p = self.params
        scores = representation_scores(model, x, eps=p.eps,
                                       probes=p.probes if p.jacobian == "sketch" else None,
                                       generator=generator)
        threshold = percentile(scores, self.params.pruning_rate)
        return (scores >= threshold).to(scores.dtype)

    def protect_gradient(self, grads: list[torch.Tensor], model: nn.Module, x: torch.Tensor,
                         y: torch.Tensor, ctx: DefenseContext) -> list[torch.Tensor]:
        if self.params.pruning_rate == 0:
            return grads
        mask = self.feature_mask(model, x, ctx.generator)
        out = list(grads)
        i = fc_weight_index(model)
        out[i] = grads[i] * mask.to(grads[i].dtype)[None, :]
        ctx.metrics["pruned_fraction"] = float(1.0 - mask.mean())
        return out

    def summary(self) -> str:
        p = self.params
        sketch = f", sketch of {p.probes} probes" if p.jacobian == "sketch" else ""
        return f"soteria(pruning_rate={p.pruning_rate:g}, eps={p.eps:g}{sketch})"
