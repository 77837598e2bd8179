"""What an attacker shows without the update: the no-information baseline, and leakage above it.

A reconstruction that looks like "a chest X-ray" or "a brain slice" has not leaked a patient's
image: an attacker who never saw the update can draw that much from public data. On a small
hospital of real chest X-rays the public split's mean image scored 18.4 dB / SSIM 0.67, more
than Inverting Gradients' reconstructions. Two baselines, per attacked image:

* ``public_mean``: the pixel-wise mean of the public split, the same picture for every image,
  what a prior-only attacker would show;
* ``public_nearest``: the public image closest to the true image (lowest MSE). It is chosen
  *with* the truth, on purpose: the best single public picture a prior-only attacker could
  show. Reported next to the other, never used as the baseline of leakage (on smooth medical
  images it usually beats the mean image; on noise it does not).

**Leakage** of a score is the attack's value minus the ``public_mean`` baseline's, signed so
that positive means "the reconstruction shows more of this image than the prior does" (for
LPIPS, a distance, baseline minus attack).
"""

from __future__ import annotations

import os
from collections.abc import Mapping

import numpy as np
import torch

from fl_shadow.metrics._validation import check_images
from fl_shadow.metrics.matching import LOWER_MEANS_MORE_LEAKED, pair_scores

BASELINES = ("public_mean", "public_nearest")


@torch.no_grad()
def public_mean(public: torch.Tensor) -> torch.Tensor:
    """``(1, C, H, W)``: the pixel-wise mean of the public images ``(M, C, H, W)`` in [0, 1]."""
    public = check_images(public, "public")
    return public.double().mean(0, keepdim=True).to(public.dtype)


@torch.no_grad()
def nearest_public(public: torch.Tensor, truth: torch.Tensor) -> torch.Tensor:
    """``(N, C, H, W)``: for each true image, the public image with the lowest MSE to it.

    An oracle choice by design (see the module docstring): the best single public picture a
    prior-only attacker could show, not an attack.
    """
    public = check_images(public, "public")
    truth = check_images(truth, "truth")
    if public.shape[1:] != truth.shape[1:]:
        raise ValueError(f"public and truth must have the same (C, H, W), got "
                         f"{tuple(public.shape[1:])} and {tuple(truth.shape[1:])}")
    p = public.double().flatten(1)
    t = truth.double().flatten(1).to(p.device)
    dist = t.pow(2).sum(1, keepdim=True) + p.pow(2).sum(1) - 2.0 * t @ p.T  # (N, M)
    return public[dist.argmin(dim=1)]


def baseline_scores(public: torch.Tensor, truth: torch.Tensor, *,
                    cache_dir: str | os.PathLike[str] | None = None
                    ) -> dict[str, dict[str, np.ndarray]]:
    """Every privacy score of both baselines against each true image.

    Args:
        public: ``(M, C, H, W)`` the public split in [0, 1] (at least one image).
        truth: ``(N, C, H, W)`` the attacked images in [0, 1], in pair order.

    Returns:
        ``{"public_mean": {score: (N,)}, "public_nearest": {score: (N,)}}``.
    """
    truth = check_images(truth, "truth")
    mean = public_mean(public).to(truth.device).expand_as(truth).contiguous()
    nearest = nearest_public(public, truth).to(truth.device)
    return {"public_mean": pair_scores(mean, truth, cache_dir=cache_dir),
            "public_nearest": pair_scores(nearest, truth, cache_dir=cache_dir)}


def leakage(attack: Mapping[str, np.ndarray], baseline: Mapping[str, np.ndarray]
            ) -> dict[str, np.ndarray]:
    """Per score, how much more the attack shows than the baseline (positive = leaked).

    Args:
        attack: ``{score: (P,)}`` of the matched pairs.
        baseline: ``{score: (P,)}`` of the baseline against the same true images.

    Returns:
        ``{score: attack - baseline}``, ``baseline - attack`` for distances (LPIPS).
    """
    out = {}
    for name, values in attack.items():
        if name not in baseline:
            continue
        diff = np.asarray(values, dtype=np.float64) - np.asarray(baseline[name], np.float64)
        out[name] = -diff if name in LOWER_MEANS_MORE_LEAKED else diff
    return out


__all__ = ["BASELINES", "baseline_scores", "leakage", "nearest_public", "public_mean"]
