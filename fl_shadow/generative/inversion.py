"""Fitting one latent code per image so that the generator reproduces it.

Used by the shadow defense before federated training (the reference's ``optimize_z``) and by
generative-prior attacks as their latent search. Each image's code is independent: the loss is
the *sum* of per-image MSEs, so an image's gradient does not shrink with the batch size, and
the code returned for each image is the best one it reached (by its own MSE), not the last.

Early stopping (the reference's never triggers: it reads an empty list): after
``min_iterations``, stop once the batch's summed loss has not improved by a relative ``tol``
for ``patience`` iterations in a row.

A fit is a deterministic function of the generator's weights, the images, the settings and the
state of ``rng``. When the environment names a folder in ``FL_SHADOW_LATENT_CACHE`` (a sweep
does, for its workers), fits are memoized there under a digest of all of these, and a cached
fit also leaves ``rng`` in the state the real fit would have left it: the results are the
same, bit for bit. A sweep over a defense's strengths then fits each client's codes once per
seed instead of once per strength (the strength is used after the fit).
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from fl_shadow.generative.networks import ImageGenerator, to_unit
from fl_shadow.progress import Progress

__all__ = ["LATENT_CACHE_ENV", "LatentFit", "fit_latents"]

#: Names a folder in which :func:`fit_latents` memoizes its fits (unset: no cache).
LATENT_CACHE_ENV = "FL_SHADOW_LATENT_CACHE"

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
    cache = os.environ.get(LATENT_CACHE_ENV)
    key = None
    if cache and rng is not None:
        key = _fit_digest(generator, images, rng, (iterations, lr, weight_decay, gamma, patience,
                                                   min_iterations, tol))
        hit = _read_cached(Path(cache) / f"{key}.pt", images.device, rng)
        if hit is not None:
            return hit
    fit = _fit(generator, images, iterations=iterations, lr=lr, weight_decay=weight_decay,
               gamma=gamma, patience=patience, min_iterations=min_iterations, tol=tol, rng=rng,
               progress=progress, desc=desc)
    if key is not None and rng is not None:
        _write_cached(Path(str(cache)) / f"{key}.pt", fit, rng)
    return fit


def _fit_digest(generator: ImageGenerator, images: torch.Tensor, rng: torch.Generator,
                settings: tuple[float, ...]) -> str:
    h = hashlib.sha256(repr(settings).encode())
    for name, tensor in generator.state_dict().items():
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    h.update(images.detach().cpu().contiguous().numpy().tobytes())
    h.update(str(tuple(images.shape)).encode())
    h.update(rng.get_state().numpy().tobytes())
    return h.hexdigest()


def _read_cached(path: Path, device: torch.device, rng: torch.Generator) -> LatentFit | None:
    if not path.is_file():
        return None
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
        fit = LatentFit(blob["latents"].to(device), blob["mse"].to(device),
                        int(blob["iterations"]), bool(blob["stopped_early"]))
        rng.set_state(blob["rng_after"])
    except (OSError, KeyError, RuntimeError, ValueError):  # a torn file: fit again
        return None
    return fit


def _write_cached(path: Path, fit: LatentFit, rng: torch.Generator) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    torch.save({"latents": fit.latents.detach().cpu(), "mse": fit.mse.detach().cpu(),
                "iterations": fit.iterations, "stopped_early": fit.stopped_early,
                "rng_after": rng.get_state()}, buffer)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(buffer.getvalue())
    tmp.replace(path)  # two workers writing the same fit write the same bytes


def _fit(generator: ImageGenerator, images: torch.Tensor, *, iterations: int, lr: float,
         weight_decay: float, gamma: float, patience: int, min_iterations: int, tol: float,
         rng: torch.Generator | None, progress: bool, desc: str) -> LatentFit:
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
