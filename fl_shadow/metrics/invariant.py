"""Scores that ignore brightness and contrast: what a reconstruction shows up to ``a·x + b``.

Why: the default ConvNet's first convolution has no bias and feeds BatchNorm in train mode, so
the update a client sends is (almost exactly) the same for an image ``x`` and for ``a·x + b``.
An attack can recover the structure of an image perfectly and still be off in brightness and
contrast; raw PSNR then calls a near-perfect reconstruction bad (Inverting Gradients at 2,000
iterations scored 16.7 dB raw against 23.0 at 500 on the same update, while its picture was the
better one). These scores are computed next to the raw ones, never instead of them:

* :func:`affine_fit`: per image, the least-squares ``a, b`` minimizing ``||a·r + b - t||^2``
  over all of its ``C*H*W`` values, with ``a >= 0`` (a negative contrast is a different image,
  not a brighter one: where the unconstrained slope is negative, ``a = 0`` and ``b`` is the
  truth's mean, i.e. the reconstruction explains nothing);
* :func:`psnr_affine`, :func:`ssim_affine`: PSNR and SSIM of ``clamp(a·r + b, 0, 1)`` against
  the truth ("structure recovered up to brightness and contrast"; clamping to the valid range
  can only move the mapped image closer to a truth in ``[0, 1]``);
* :func:`ncc`: normalized cross-correlation, the cosine of the mean-centred images, in
  ``[-1, 1]`` (1: the same image up to ``a > 0, b``).

The fit uses the truth, so these are scores (computed in :mod:`fl_shadow.scoring`, outside the
attack), never something an attack may use.

Example:
    >>> import torch
    >>> t = torch.rand(2, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    >>> r = 0.5 * t + 0.2                          # the right structure, wrong intensities
    >>> bool(psnr_affine(r, t).min() > 90), bool(ncc(r, t).min() > 0.999)
    (True, True)
"""

from __future__ import annotations

import torch

from fl_shadow.metrics._validation import check_pair
from fl_shadow.metrics.image import psnr, ssim


@torch.no_grad()
def affine_fit(recon: torch.Tensor, truth: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per image, the least-squares ``(a, b)`` with ``a >= 0`` mapping ``recon`` onto ``truth``.

    Args:
        recon: ``(N, C, H, W)`` reconstructions in ``[0, 1]``.
        truth: same shape, the true images in ``[0, 1]``.

    Returns:
        ``(a, b)``, each ``(N,)`` float64: ``a = max(0, cov(r, t) / var(r))`` (0 for a constant
        reconstruction), ``b = mean(t) - a * mean(r)``.

    Raises:
        TypeError, ValueError: see :func:`fl_shadow.metrics.check_images`.
    """
    recon, truth = check_pair(recon, truth)
    r = recon.double().flatten(1)
    t = truth.double().flatten(1)
    rc, tc = r - r.mean(1, keepdim=True), t - t.mean(1, keepdim=True)
    var = rc.pow(2).mean(1)
    cov = (rc * tc).mean(1)
    a = torch.where(var > 1e-12, cov / var.clamp_min(1e-12), torch.zeros_like(var))
    a = a.clamp_min(0.0)
    b = t.mean(1) - a * r.mean(1)
    return a, b


@torch.no_grad()
def affine_map(recon: torch.Tensor, truth: torch.Tensor) -> torch.Tensor:
    """``clamp(a·recon + b, 0, 1)`` with the per-image :func:`affine_fit` (same dtype)."""
    a, b = affine_fit(recon, truth)
    mapped = a.view(-1, 1, 1, 1) * recon.double() + b.view(-1, 1, 1, 1)
    return mapped.clamp(0.0, 1.0).to(recon.dtype)


def psnr_affine(recon: torch.Tensor, truth: torch.Tensor) -> torch.Tensor:
    """``(N,)`` PSNR in dB of the brightness/contrast-mapped reconstruction (:func:`affine_map`).

    Equals :func:`~fl_shadow.metrics.psnr` when the best map is the identity, and is at least
    the PSNR of the best constant image (the truth's mean).
    """
    return psnr(affine_map(recon, truth), truth)


def ssim_affine(recon: torch.Tensor, truth: torch.Tensor) -> torch.Tensor:
    """``(N,)`` SSIM of the brightness/contrast-mapped reconstruction (:func:`affine_map`)."""
    return ssim(affine_map(recon, truth), truth)


@torch.no_grad()
def ncc(recon: torch.Tensor, truth: torch.Tensor) -> torch.Tensor:
    """``(N,)`` normalized cross-correlation: cosine of the mean-centred images, in [-1, 1].

    A constant image (no variation) has 0.
    """
    recon, truth = check_pair(recon, truth)
    r = recon.double().flatten(1)
    t = truth.double().flatten(1)
    rc, tc = r - r.mean(1, keepdim=True), t - t.mean(1, keepdim=True)
    norms = rc.norm(dim=1) * tc.norm(dim=1)
    value = torch.where(norms > 1e-12, (rc * tc).sum(1) / norms.clamp_min(1e-12),
                        torch.zeros_like(norms))
    return value.clamp(-1.0, 1.0).float()


__all__ = ["affine_fit", "affine_map", "ncc", "psnr_affine", "ssim_affine"]
