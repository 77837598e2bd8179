"""SSIM as the metric protocol computes it, for code that is not scoring.

:func:`fl_shadow.metrics.ssim` is the protocol's score (validated inputs, a reconstruction
against its ground truth). A defense that sets its noise by a target SSIM of the noised image
against its own clean image (``input_noise`` with ``budget: ssim``), and the adaptive attacker
that models it on its own candidate, need the same number without the scoring package: the
attacks import the defenses, and nothing the attacks import may load :mod:`fl_shadow.metrics`
(the attacker never scores). Both call :func:`structural_similarity`, so the defense's target
and the reported SSIM are one definition.
"""

from __future__ import annotations

import torch

__all__ = ["SSIM_KERNEL_SIGMA", "SSIM_KERNEL_SIZE", "ssim_kernel_size", "structural_similarity"]

SSIM_KERNEL_SIZE = 11
SSIM_KERNEL_SIGMA = 1.5


def ssim_kernel_size(height: int, width: int) -> int:
    """Gaussian window side of the SSIM: 11, or the largest odd size that fits.

    Raises:
        ValueError: an image side is below 3 px (no meaningful window).
    """
    side = min(height, width)
    if side < 3:
        raise ValueError(f"SSIM needs images of at least 3x3 px, got {height}x{width}")
    return min(SSIM_KERNEL_SIZE, side if side % 2 == 1 else side - 1)


@torch.no_grad()
def structural_similarity(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``(N,)`` float32 SSIM of each pair of ``(N, C, H, W)`` images in [0, 1], unchecked
    (:func:`fl_shadow.metrics.ssim` checks, then calls this): ``piq.ssim`` with the window of
    :func:`ssim_kernel_size`, sigma 1.5, ``K1 = 0.01``, ``K2 = 0.03``, data range 1, valid
    filtering, no down-sampling, in float64."""
    # Imported here: piq loads torchvision (~1.3 s), which every Flower process importing the
    # defenses would pay at start-up; only budget: ssim and scoring compute an SSIM.
    import piq

    kernel_size = ssim_kernel_size(x.shape[-2], x.shape[-1])
    # float64: in float32 the variance terms (E[x^2] - mu^2) lose ~1e-4 to cancellation.
    value = piq.ssim(x.double(), y.double(), kernel_size=kernel_size,
                     kernel_sigma=SSIM_KERNEL_SIGMA, data_range=1.0, reduction="none",
                     downsample=False, k1=0.01, k2=0.03)
    return value.float()
