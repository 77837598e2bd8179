"""MixUp: each training example is a convex mix of several of the hospital's own images.

The classic input-space baseline against gradient inversion (Zhang et al. 2018, as GradAttack
applies it: Huang et al. 2021, "Evaluating gradient inversion attacks and defenses in federated
learning"). At every local step, the example in the place of local image ``i`` is

    x~_i = sum_k lambda_k x_{s_k},    y~_i = sum_k lambda_k onehot(y_{s_k}),

over ``mixed`` distinct local images ``s_0 = i, s_1, ...`` (the partners drawn at random from
the hospital's other images, fresh at every step) with weights ``lambda ~ Dirichlet(3, 1, ...,
1)`` redrawn until the largest is at most ``max_weight`` (GradAttack's ``klam``, the
concentration 3 on the first image, and ``upper_bound``; its experiments use ``klam = 4``,
``upper_bound = 0.65``). Training uses the soft targets ``y~`` (cross-entropy against class
probabilities). The attacker sees the gradient of mixed images and reconstructs mixtures.

Reading of the method, where GradAttack is silent or differs:

* GradAttack draws all ``klam`` images of an example at random from the dataset; here the first
  is the batch's own image, so every local image is still the largest part of exactly one
  example per epoch (the local-training plan, and the audit of which images a step used, stay
  the same as for every other defense). The weights are the same distribution.
* A hospital with fewer than ``mixed`` images mixes all it has; **a one-image hospital cannot
  mix at all** and trains on its clean image (the metric ``mixup_partners`` says how many images
  each example mixed). ``max_weight`` is then relaxed to what is possible (``1/n`` for ``n``
  images is always feasible; with one image the weight is 1).

Pure math beside the class: :func:`mixing_weights`, :func:`mixing_partners`, :func:`mix`.
The adaptive attacker has no model of it (the partners and weights are private draws), so an
adaptive attack runs as if undefended and says so.
"""

from __future__ import annotations

from typing import Annotated

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from fl_shadow.config import ExperimentConfig, Float, Int, settings
from fl_shadow.defenses.base import Defense, DefenseContext, per_channel, register_defense
from fl_shadow.errors import ConfigError

__all__ = ["MixUp", "MixUpParams", "mix", "mixing_partners", "mixing_weights"]

#: Dirichlet concentration of the example's own image (GradAttack's ``alpha[0] = 3``); the
#: partners have 1.
OWN_CONCENTRATION = 3.0
#: Rejection rounds before the weight bound is declared unreachable (it never is when
#: ``max_weight >= 1/k``: the acceptance rate is then far above 1e-3 for k <= 8).
MAX_REDRAWS = 10_000


def mixing_weights(n: int, k: int, *, max_weight: float, generator: torch.Generator
                   ) -> torch.Tensor:
    """``(n, k)`` mixing weights, each row ``~ Dirichlet(3, 1, ..., 1)`` redrawn until its
    largest weight is at most ``max_weight`` (raised to ``1/k`` when below it, where only the
    uniform row is possible). Rows sum to 1; column 0 is the example's own image."""
    if k < 1:
        raise ValueError(f"k: expected at least 1 image per example, got {k}")
    if k == 1:
        return torch.ones(n, 1)
    bound = max(max_weight, 1.0 / k)
    concentration = torch.ones(k)
    concentration[0] = OWN_CONCENTRATION
    weights = torch.empty(n, k)
    pending = torch.ones(n, dtype=torch.bool)
    for _ in range(MAX_REDRAWS):
        count = int(pending.sum())
        if count == 0:
            return weights
        # Dirichlet by normalized Gammas, from the private generator (torch's Dirichlet
        # sampler takes no generator).
        gammas = torch._standard_gamma(concentration.expand(count, k).contiguous(),
                                       generator=generator)
        draw = gammas / gammas.sum(1, keepdim=True)
        if bound <= 1.0 / k + 1e-9:
            draw = torch.full_like(draw, 1.0 / k)
        weights[pending] = draw
        pending[pending.clone()] = draw.max(1).values > bound + 1e-12
    raise RuntimeError(f"mixing_weights: no draw met max_weight={max_weight} in "
                       f"{MAX_REDRAWS} tries for k={k}")


def mixing_partners(batch_index: torch.Tensor, num_local: int, k: int, *,
                    generator: torch.Generator) -> torch.Tensor:
    """``(B, k)`` local indices: column 0 is ``batch_index`` itself, the others ``k - 1``
    distinct other local images drawn uniformly (``k <= num_local``)."""
    if not 1 <= k <= num_local:
        raise ValueError(f"k: expected 1..{num_local} (the local images), got {k}")
    rows = []
    for own in batch_index.tolist():
        others = torch.randperm(num_local - 1, generator=generator)[:k - 1]
        others = others + (others >= own).long()  # skip the example's own index
        rows.append(torch.cat([torch.tensor([own]), others]))
    return torch.stack(rows).long()


def mix(images: torch.Tensor, targets: torch.Tensor, partners: torch.Tensor,
        weights: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The mixed examples: ``images`` ``(N, C, H, W)`` and ``targets`` ``(N, K)`` (one-hot or
    probabilities) of all local images, ``partners`` ``(B, k)`` indices into them and
    ``weights`` ``(B, k)``; returns ``(B, C, H, W)`` inputs and ``(B, K)`` targets."""
    w = weights.to(images.dtype).to(images.device)
    x = torch.einsum("bk,bkchw->bchw", w, images[partners.to(images.device)])
    y = torch.einsum("bk,bkc->bc", w.to(targets.dtype), targets[partners.to(targets.device)])
    return x, y


def _check(params: MixUpParams, config: ExperimentConfig) -> None:
    if params.max_weight * params.mixed < 1.0 - 1e-9:
        raise ConfigError(f"defense.params.max_weight: expected at least 1/mixed "
                          f"({1 / params.mixed:.3g}; no {params.mixed} weights summing to 1 "
                          f"stay below it), got {params.max_weight!r}")


@settings
class MixUpParams:
    """Parameters of ``mixup`` (GradAttack's names in brackets).

    Attributes:
        mixed: images mixed into each example (``klam``); 1 trains on clean images.
        max_weight: the largest weight any one image may have (``upper_bound``); at least
            ``1/mixed``. Lower hides each image more and costs more utility.
    """

    mixed: Annotated[Int, Field(ge=1, le=16)] = 4
    max_weight: Annotated[Float, Field(gt=0, le=1)] = 0.65


@register_defense("mixup", MixUpParams, check=_check)
class MixUp(Defense):
    """MixUp over the hospital's own images (see the module docstring)."""

    def __init__(self, params: MixUpParams) -> None:
        self.params = params
        self.images: torch.Tensor | None = None   # (N, C, H, W) all local images, normalized
        self.targets: torch.Tensor | None = None  # (N, K) their one-hot labels

    def setup(self, images: torch.Tensor, labels: torch.Tensor, model: nn.Module,
              ctx: DefenseContext) -> None:
        if ctx.num_classes < 1:
            raise ValueError("mixup: the client did not say the number of classes "
                             "(DefenseContext.num_classes)")
        self.images = images
        self.targets = F.one_hot(labels.long(), ctx.num_classes).to(images.dtype)

    def perturb_examples(self, x: torch.Tensor, y: torch.Tensor, model: nn.Module,
                         ctx: DefenseContext) -> tuple[torch.Tensor, torch.Tensor]:
        assert self.images is not None and self.targets is not None
        assert ctx.batch_index is not None
        k = min(self.params.mixed, len(self.images))
        partners = mixing_partners(ctx.batch_index.cpu(), len(self.images), k,
                                   generator=ctx.generator)
        weights = mixing_weights(len(x), k, max_weight=self.params.max_weight,
                                 generator=ctx.generator)
        mixed, targets = mix(self.images, self.targets, partners, weights)
        # The distortion of each example against its own clean image, to set beside the
        # input-noise defenses' (same units: [0, 1] images).
        if k > 1:  # a one-image hospital trains on its clean image: no distortion to report
            unit = (mixed - x) * per_channel(ctx.std, x)
            mse = unit.flatten(1).pow(2).mean(1).clamp_min(1e-20)
            ctx.metrics["mixup_input_psnr"] = float((-10 * torch.log10(mse)).mean())
        ctx.metrics["mixup_partners"] = float(k)
        ctx.metrics["mixup_own_weight"] = float(weights[:, 0].mean())
        return mixed, targets

    def summary(self) -> str:
        return f"mixup(mixed={self.params.mixed}, max_weight={self.params.max_weight:g})"
