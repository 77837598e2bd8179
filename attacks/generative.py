"""What the generative-prior attacks (GGL, GIAS) share: the generator as a search space.

Both attacks replace free pixels by the output of the project's generator
(:mod:`fl_shadow.generative`, trained on the public split only, handed over as
:attr:`attacks.base.Prior.generator`): a candidate batch is ``K`` latent codes, decoded to
images in [0, 1], normalized the way the clients normalize, and fed to the same differentiable
replay of the client's local training as every matching attack (:mod:`attacks.matching`). The
generator's ``tanh`` output keeps every candidate inside the valid pixel box, so no projection
is needed.

The GAN of the references (BigGAN, StyleGAN2, a WGAN-GP DCGAN) is replaced by the project's
progressive generator: the reference weights cannot be downloaded here, and a generator
trained on public images of the *same* domain is what the threat model of both papers grants
the attacker.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from torch import nn

from attacks.base import Prior, ThreatModelNeeds
from attacks.matching import MatchingProblem
from attacks.objectives import cosine_cost, l2_cost
from fl_shadow.errors import ThreatModelError

GenerativeCost = Literal["l2", "cosine"]


def generative_needs(params: Any) -> ThreatModelNeeds:
    """What GGL and GIAS ask of the threat model: the public-data generator always, labels
    with ``require_labels``."""
    return ThreatModelNeeds(labels="attack.params.require_labels is true"
                            if params.require_labels else None,
                            generator="its prior is the public-data generator")


def require_generator(attack: str, prior: Prior, problem: MatchingProblem) -> nn.Module:
    """The prior's generator, on the problem's device, frozen and in eval mode.

    Raises:
        ThreatModelError: no generator in the prior, or one whose images do not have the
            task's shape.
    """
    generator = prior.generator
    if generator is None:
        raise ThreatModelError(
            f"{attack}: needs the public-data generator (Prior.generator) but none was given; "
            "`fl-shadow run` pretrains it (or `fl-shadow pretrain-generator`)")
    generator = generator.to(problem.device).eval().requires_grad_(False)
    latent_dim = int(getattr(generator, "latent_dim"))
    with torch.no_grad():
        probe = generator(torch.zeros(1, latent_dim, device=problem.device))
    if tuple(probe.shape[1:]) != tuple(problem.shape[1:]):
        raise ThreatModelError(
            f"{attack}: the generator makes images of shape {tuple(probe.shape[1:])}, the task "
            f"has {tuple(problem.shape[1:])} (generator settings vs data.image_size/channels)")
    return generator


def latent_dim(generator: nn.Module) -> int:
    return int(getattr(generator, "latent_dim"))


def decode(generator: nn.Module, z: torch.Tensor, problem: MatchingProblem) -> torch.Tensor:
    """Latents ``(K, d)`` -> candidate images ``(K, C, H, W)`` in the clients' normalized space."""
    unit = (generator(z) + 1) / 2
    return (unit - problem.mean) / problem.std


def gradient_units(problem: MatchingProblem, lr: float) -> float:
    """Divide squared update distances by this to read them in (summed) gradient units."""
    return lr ** 2 * max(problem.replay.num_steps, 1) ** 2


def matching_cost(kind: GenerativeCost, trial: list[torch.Tensor], target: list[torch.Tensor],
                  units: float) -> torch.Tensor:
    """GGL's ``(1/L) sum_l ||g~_l - g_l||^2`` in gradient units, or the global cosine distance.

    ``units`` (:func:`gradient_units`) turns the update difference back into gradient units so
    that the l2 cost has the scale of the references' gradient-matching cost (and weights of
    other terms mean the same for any client learning rate).
    """
    if kind == "cosine":
        return cosine_cost(trial, target)
    return l2_cost(trial, target) / (units * len(trial))


def latent_kld(z: torch.Tensor) -> torch.Tensor:
    """GGL's ``KLD(z)`` per code, summed: ``-0.5 (1 + log s^2 - m^2 - s^2)`` with ``m, s`` the
    mean and standard deviation of each code's entries; 0 for an ``N(0, I)``-like code.

    Keeps latents where the generator was trained when they are not squashed by ``tanh``.
    """
    m = z.mean(dim=1)
    var = z.var(dim=1, unbiased=False)
    return (-0.5 * (1 + torch.log(var + 1e-10) - m.pow(2) - var)).sum()


__all__ = ["GenerativeCost", "decode", "gradient_units", "latent_dim", "latent_kld",
           "matching_cost", "require_generator"]
