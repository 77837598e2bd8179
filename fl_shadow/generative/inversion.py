"""Fitting one latent code per image so that the generator reproduces it.

Used by the shadow defense before federated training (the reference's ``optimize_z``) and by
generative-prior attacks as their latent search. Each image's code is independent: the loss is
the *sum* of per-image MSEs, so an image's gradient does not shrink with the batch size, and
the code returned for each image is the best one it reached (by its own MSE), not the last.

All of a hospital's images are fitted in one vectorised optimisation, with early stopping
*per image* (the reference's never triggers: it reads an empty list): after
``min_iterations``, an image stops once its own MSE has not improved by a relative ``tol`` for
``patience`` iterations in a row; from then on its code is no longer passed through the
generator, and the fit ends when every image has stopped (or at ``iterations``). Because
AdamW is elementwise, the learning-rate schedule is global and the generator is in eval mode,
an image's code follows the same path as in a fit of that image alone: fitting a batch
returns, within float tolerance, what fitting each image alone does (tested), and a batch
costs what its slowest image needs, not ``iterations`` for all.

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

#: Part of every cached fit's key: a change to the fit's algorithm must not read old fits
#: (2: early stopping per image instead of on the batch's summed loss).
FIT_VERSION = 2


@dataclass(frozen=True)
class LatentFit:
    """Result of :func:`fit_latents`.

    Attributes:
        latents: ``(N, latent_dim)`` best code per image.
        mse: ``(N,)`` each image's MSE (in [0, 1] pixel space) at its best code.
        iterations: iterations run before the last image stopped.
        stopped_early: True when the patience rule stopped every image before ``iterations``.
        image_iterations: ``(N,)`` iterations each image ran (its generator passes).
    """

    latents: torch.Tensor
    mse: torch.Tensor
    iterations: int
    stopped_early: bool
    image_iterations: torch.Tensor | None = None


def fit_latents(generator: ImageGenerator, images: torch.Tensor, *, iterations: int = 500,
                lr: float = 0.05, weight_decay: float = 0.01, gamma: float = 0.5,
                patience: int = 5, min_iterations: int = 50, tol: float = 1e-3,
                rng: torch.Generator | None = None, initial: torch.Tensor | None = None,
                progress: bool = False, desc: str = "latent fit") -> LatentFit:
    """Fit ``z`` per image by AdamW on ``MSE(to_unit(G(z)), image)``.

    Args:
        generator: kept frozen (its ``requires_grad`` flags are restored afterwards).
        images: ``(N, C, H, W)`` targets in [0, 1], on the generator's device.
        iterations: most iterations.
        lr, weight_decay: AdamW settings.
        gamma: learning-rate decay at 3/8, 5/8 and 7/8 of ``iterations`` (the reference's
            milestones 187/312/437 of 500).
        patience, min_iterations, tol: early stopping per image (see the module docstring).
        rng: draws the initial codes from N(0, I).
        initial: ``(N, latent_dim)`` initial codes instead of drawing them (``rng`` unused).
        progress: show progress.
    """
    if initial is not None and tuple(initial.shape) != (len(images), generator.latent_dim):
        raise ValueError(f"initial: expected shape {(len(images), generator.latent_dim)}, got "
                         f"{tuple(initial.shape)}")
    cache = os.environ.get(LATENT_CACHE_ENV)
    key = None
    if cache and rng is not None and initial is None:
        key = _fit_digest(generator, images, rng, (FIT_VERSION, iterations, lr, weight_decay,
                                                   gamma, patience, min_iterations, tol))
        hit = _read_cached(Path(cache) / f"{key}.pt", images.device, rng)
        if hit is not None:
            return hit
    fit = _fit(generator, images, iterations=iterations, lr=lr, weight_decay=weight_decay,
               gamma=gamma, patience=patience, min_iterations=min_iterations, tol=tol, rng=rng,
               initial=initial, progress=progress, desc=desc)
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
                        int(blob["iterations"]), bool(blob["stopped_early"]),
                        blob["image_iterations"])
        rng.set_state(blob["rng_after"])
    except (OSError, KeyError, RuntimeError, ValueError):  # a torn file: fit again
        return None
    return fit


def _write_cached(path: Path, fit: LatentFit, rng: torch.Generator) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    torch.save({"latents": fit.latents.detach().cpu(), "mse": fit.mse.detach().cpu(),
                "iterations": fit.iterations, "stopped_early": fit.stopped_early,
                "image_iterations": fit.image_iterations, "rng_after": rng.get_state()},
               buffer)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(buffer.getvalue())
    tmp.replace(path)  # two workers writing the same fit write the same bytes


def _fit(generator: ImageGenerator, images: torch.Tensor, *, iterations: int, lr: float,
         weight_decay: float, gamma: float, patience: int, min_iterations: int, tol: float,
         rng: torch.Generator | None, initial: torch.Tensor | None, progress: bool,
         desc: str) -> LatentFit:
    device, n = images.device, len(images)
    flags = [p.requires_grad for p in generator.parameters()]
    generator.requires_grad_(False)
    was_training = generator.training
    generator.eval()
    z = (initial.detach().clone().to(device) if initial is not None
         else generator.sample_latents(n, rng, device)).requires_grad_(True)
    best_z = z.detach().clone()
    best_mse = torch.full((n,), float("inf"), device=device)
    reference = torch.full((n,), float("inf"), device=device)  # the last loss that counted
    stale = torch.zeros(n, dtype=torch.long, device=device)
    active = torch.ones(n, dtype=torch.bool, device=device)
    ran = torch.zeros(n, dtype=torch.long, device=device)
    optimizer = torch.optim.AdamW([z], lr=lr, weight_decay=weight_decay)
    milestones = [int(iterations * f) for f in (3 / 8, 5 / 8, 7 / 8)]
    scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones, gamma=gamma)
    it, stopped = 0, False
    bar = Progress(iterations, desc, logger, enabled=progress)
    try:
        for it in bar:
            rows = active.nonzero().squeeze(1)
            # Only the images still running go through the generator; a stopped image's code
            # gets no gradient and its best code is already kept (AdamW's decay and momentum
            # may still move the stale copy in z, which is never read again).
            per_image = (to_unit(generator(z[rows])) - images[rows]).pow(2).flatten(1).mean(1)
            with torch.no_grad():
                loss = per_image.detach()
                better = loss < best_mse[rows]
                best_mse[rows] = torch.where(better, loss, best_mse[rows])
                best_z[rows[better]] = z[rows[better]]
                counts = loss < reference[rows] * (1 - tol)
                reference[rows] = torch.where(counts, loss, reference[rows])
                stale[rows] = torch.where(counts, 0, stale[rows] + 1)
                ran[rows] += 1
            total = per_image.sum()
            optimizer.zero_grad(set_to_none=True)
            total.backward()
            optimizer.step()
            scheduler.step()
            bar.report(mse=total.detach() / len(rows), running=len(rows))
            if it + 1 >= min_iterations:
                active &= stale < patience
                if not bool(active.any()):
                    stopped = it + 1 < iterations
                    break
    finally:
        for p, flag in zip(generator.parameters(), flags, strict=True):
            p.requires_grad_(flag)
        generator.train(was_training)
    return LatentFit(best_z, best_mse.detach(), it + 1, stopped, ran.cpu())
