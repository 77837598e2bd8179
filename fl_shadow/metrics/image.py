"""PSNR and SSIM per image pair, and the de-normalization that precedes every image metric."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from fl_shadow.metrics._validation import check_pair
from fl_shadow.structural_similarity import (  # noqa: F401  (SSIM_* re-exported)
    SSIM_KERNEL_SIGMA,
    SSIM_KERNEL_SIZE,
    ssim_kernel_size,
    structural_similarity,
)

# MSE is floored here so that identical images give a finite PSNR (100 dB), not +inf.
MSE_FLOOR = 1e-10


def denormalize(x: torch.Tensor, *, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """Undo ``(x - mean) / std`` channel-wise and clamp to [0, 1].

    This is the first step of the metric protocol: attacks and models work on normalized
    tensors, every metric on images in ``[0, 1]``.

    Args:
        x: ``(N, C, H, W)`` normalized images.
        mean: per-channel mean, ``C`` values (or one for all channels).
        std: per-channel standard deviation, ``C`` values (or one), all ``> 0``.

    Returns:
        ``(N, C, H, W)`` images in ``[0, 1]``, detached, same dtype and device.

    Raises:
        ValueError: wrong shape, a count of ``mean``/``std`` values that fits neither 1 nor C,
            or a non-positive ``std``.
    """
    if x.dim() != 4:
        raise ValueError(f"x must have shape (N, C, H, W), got {tuple(x.shape)}")
    channels = x.shape[1]
    for arg_name, values in (("mean", mean), ("std", std)):
        if len(values) not in (1, channels):
            raise ValueError(f"{arg_name} must have 1 or {channels} values, got {len(values)}")
    if min(std) <= 0:
        raise ValueError(f"std values must be > 0, got {list(std)}")
    m = torch.as_tensor(list(mean), dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    s = torch.as_tensor(list(std), dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    return (x.detach() * s + m).clamp(0.0, 1.0)


@torch.no_grad()
def psnr(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Peak signal-to-noise ratio of each image pair, in dB.

    ``PSNR = 10 * log10(1 / MSE)`` with the MSE over the ``C * H * W`` values of one image
    (data range 1), computed in float64. The MSE is floored at :data:`MSE_FLOOR`, so identical
    images give 100 dB instead of +inf.

    Args:
        x: ``(N, C, H, W)`` images in ``[0, 1]``, ``C`` in {1, 3}.
        y: same shape as ``x``.

    Returns:
        ``(N,)`` float32 tensor of PSNR values in dB (symmetric in ``x`` and ``y``).

    Raises:
        TypeError, ValueError: see :func:`fl_shadow.metrics.check_images`.
    """
    x, y = check_pair(x, y)
    mse = (x.double() - y.double()).pow(2).flatten(1).mean(dim=1)
    return (10.0 * torch.log10(1.0 / mse.clamp_min(MSE_FLOOR))).float()


@torch.no_grad()
def ssim(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Structural similarity of each image pair (Wang et al., 2004), via ``piq.ssim``.

    Gaussian window of side 11 and sigma 1.5, ``K1 = 0.01``, ``K2 = 0.03``, data range 1,
    valid (unpadded) filtering, mean over the SSIM map and then over channels, computed in
    float64. No automatic down-sampling (``downsample=False``), so SSIM means the same at every
    image size. Images smaller than 11 px use the largest odd window that fits
    (:func:`~fl_shadow.structural_similarity.ssim_kernel_size`), sigma unchanged.

    Args:
        x: ``(N, C, H, W)`` images in ``[0, 1]``, ``C`` in {1, 3}, ``H, W >= 3``.
        y: same shape as ``x``.

    Returns:
        ``(N,)`` float32 tensor, 1 for identical images, at most 1 (symmetric).

    Raises:
        TypeError, ValueError: see :func:`fl_shadow.metrics.check_images`; images below 3 px.

    References:
        Wang, Bovik, Sheikh, Simoncelli. Image quality assessment: from error visibility to
        structural similarity. IEEE TIP 13(4), 2004. DOI: 10.1109/TIP.2003.819861
    """
    x, y = check_pair(x, y)
    return structural_similarity(x, y)
