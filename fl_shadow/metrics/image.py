"""PSNR and SSIM per image pair, and the de-normalization that precedes every image metric."""

from __future__ import annotations

from collections.abc import Sequence

import piq
import torch

from fl_shadow.metrics._validation import check_pair

# MSE is floored here so that identical images give a finite PSNR (100 dB), not +inf.
MSE_FLOOR = 1e-10
SSIM_KERNEL_SIZE = 11
SSIM_KERNEL_SIGMA = 1.5


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


def ssim_kernel_size(height: int, width: int) -> int:
    """Gaussian window side used by :func:`ssim`: 11, or the largest odd size that fits.

    Raises:
        ValueError: an image side is below 3 px (no meaningful window).
    """
    side = min(height, width)
    if side < 3:
        raise ValueError(f"SSIM needs images of at least 3x3 px, got {height}x{width}")
    return min(SSIM_KERNEL_SIZE, side if side % 2 == 1 else side - 1)


@torch.no_grad()
def ssim(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Structural similarity of each image pair (Wang et al., 2004), via ``piq.ssim``.

    Gaussian window of side 11 and sigma 1.5, ``K1 = 0.01``, ``K2 = 0.03``, data range 1,
    valid (unpadded) filtering, mean over the SSIM map and then over channels, computed in
    float64. No automatic down-sampling (``downsample=False``), so SSIM means the same at every
    image size. Images smaller than 11 px use the largest odd window that fits
    (:func:`ssim_kernel_size`), sigma unchanged.

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
    kernel_size = ssim_kernel_size(x.shape[-2], x.shape[-1])
    # float64: in float32 the variance terms (E[x^2] - mu^2) lose ~1e-4 to cancellation.
    value = piq.ssim(x.double(), y.double(), kernel_size=kernel_size,
                     kernel_sigma=SSIM_KERNEL_SIGMA, data_range=1.0, reduction="none",
                     downsample=False, k1=0.01, k2=0.03)
    return value.float()
