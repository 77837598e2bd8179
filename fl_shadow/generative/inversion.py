"""Fitting one latent code per image so that the generator reproduces it.

Used by the shadow defense before federated training (the reference's ``optimize_z``) and by
generative-prior attacks as their latent search. Each image's code is independent: the loss is
the *sum* of per-image MSEs, so an image's gradient does not shrink with the batch size, and
the code returned for each image is the best one it reached (by its own MSE), not the last.

Early stopping (the reference's never triggers: it reads an empty list): after
``min_iterations``, stop once the batch's summed loss has not improved by a relative ``tol``
for ``patience`` iterations in a row.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch

from fl_shadow.generative.networks import ImageGenerator, to_unit
from fl_shadow.progress import Progress

__all__ = ["LatentFit", "fit_latents"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class LatentFit:
    """Result of :func:`fit_latents`.

    Attributes:
        latents: ``(N, latent_dim)`` best code per image.
        mse: ``(N,)`` each image's MSE (in [0, 1] pixel space) at its best code.
        iterations: iterations run before stopping.
        stopped_early: True when the patience rule ended the fit.
    """

    latents: torch.Tensor
    mse: torch.Tensor
    iterations: int
    stopped_early: bool


def fit_latents(generator: ImageGenerator, images: torch.Tensor, *, iterations: int = 500,
                lr: float = 0.05, weight_decay: float = 0.01, gamma: float = 0.5,
                patience: int = 5, min_iterations: int = 50, tol: float = 1e-3,
                rng: torch.Generator | None = None, progress: bool = False,
                desc: str = "latent fit") -> LatentFit:
    """Fit ``z`` per image by AdamW on ``MSE(to_unit(G(z)), image)``.

    Args:
        generator: kept frozen (its ``requires_grad`` flags are restored afterwards).
        images: ``(N, C, H, W)`` targets in [0, 1], on the generator's device.
        iterations: most iterations.
        lr, weight_decay: AdamW settings.
        gamma: learning-rate decay at 3/8, 5/8 and 7/8 of ``iterations`` (the reference's
            milestones 187/312/437 of 500).
        patience, min_iterations, tol: early stopping (see the module docstring).
        rng: draws the initial codes from N(0, I).
        progress: show progress.
    """
    device = images.device
    flags = [p.requires_grad for p in generator.parameters()]
    generator.requires_grad_(False)
    was_training = generator.training
    generator.eval()
    z = generator.sample_latents(len(images), rng, device).requires_grad_(True)
    best_z = z.detach().clone()
    best_mse = torch.full((len(images),), float("inf"), device=device)
    optimizer = torch.optim.AdamW([z], lr=lr, weight_decay=weight_decay)
    milestones = [int(iterations * f) for f in (3 / 8, 5 / 8, 7 / 8)]
    scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones, gamma=gamma)
    best_total, stale, it, stopped = float("inf"), 0, 0, False
    bar = Progress(iterations, desc, logger, enabled=progress)
    try:
        for it in bar:
            per_image = (to_unit(generator(z)) - images).pow(2).flatten(1).mean(1)
            with torch.no_grad():
                better = per_image < best_mse
                best_mse = torch.where(better, per_image, best_mse)
                best_z[better] = z[better]
            total = per_image.sum()
            optimizer.zero_grad(set_to_none=True)
            total.backward()
            optimizer.step()
            scheduler.step()
            bar.report(mse=total.detach() / len(images))
            value = float(total.detach())
            if value < best_total * (1 - tol):
                best_total, stale = value, 0
            else:
                stale += 1
            if it + 1 >= min_iterations and stale >= patience:
                stopped = True
                break
    finally:
        for p, flag in zip(generator.parameters(), flags, strict=True):
            p.requires_grad_(flag)
        generator.train(was_training)
    return LatentFit(best_z, best_mse.detach(), it + 1, stopped)
