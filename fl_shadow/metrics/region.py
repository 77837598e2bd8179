"""Privacy metrics inside a region of each image (e.g. the Grad-CAM++ foreground).

Same images and matching as the whole-image protocol (:mod:`fl_shadow.metrics`); only what
each metric looks at changes:

* **region PSNR** ``= 10 log10(1 / MSE)`` with the MSE over the region's pixels (all channels);
* **region SSIM / LPIPS** compare the truth with a *composite* that is the reconstruction
  inside the region and the truth outside it, so only in-region differences count while both
  metrics keep their usual windows and features (they have no masked form).
"""

from __future__ import annotations

import os

import torch

from fl_shadow.metrics._validation import check_pair
from fl_shadow.metrics.image import MSE_FLOOR, ssim
from fl_shadow.metrics.lpips import lpips_alex

__all__ = ["region_scores"]


@torch.no_grad()
def region_scores(recon: torch.Tensor, truth: torch.Tensor, region: torch.Tensor, *,
                  cache_dir: str | os.PathLike[str] | None = None) -> dict[str, torch.Tensor]:
    """Per-pair ``psnr``, ``ssim`` and ``lpips`` inside ``region``.

    Args:
        recon: ``(P, C, H, W)`` matched reconstructions in [0, 1].
        truth: ``(P, C, H, W)`` their true images in [0, 1].
        region: ``(P, H, W)`` bool; every image needs at least one pixel in its region.

    Returns:
        ``{"psnr", "ssim", "lpips"}``, each ``(P,)``.
    """
    recon, truth = check_pair(recon, truth)
    if region.shape != (truth.shape[0], *truth.shape[2:]):
        raise ValueError(f"region must have shape {(truth.shape[0], *truth.shape[2:])}, "
                         f"got {tuple(region.shape)}")
    inside = region.to(truth.device).bool().unsqueeze(1).expand_as(truth)
    if not bool(inside.flatten(1).any(dim=1).all()):
        raise ValueError("every image needs at least one pixel in its region")
    sq = (recon.double() - truth.double()).pow(2) * inside
    mse = sq.flatten(1).sum(1) / inside.flatten(1).sum(1)
    composite = torch.where(inside, recon, truth)
    return {"psnr": (10.0 * torch.log10(1.0 / mse.clamp_min(MSE_FLOOR))).float(),
            "ssim": ssim(composite, truth),
            "lpips": lpips_alex(composite, truth, cache_dir=cache_dir)}
