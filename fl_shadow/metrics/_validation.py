"""Input checks shared by the image metrics (one validator, clear messages, never ``assert``)."""

from __future__ import annotations

import torch

# Values may leave [0, 1] by this much (float round-off of a de-normalization) before they are
# rejected; inside the tolerance they are clamped.
RANGE_TOLERANCE = 1e-3


def check_images(x: torch.Tensor, name: str) -> torch.Tensor:
    """Check one image batch and return it clamped to [0, 1], detached.

    Args:
        x: ``(N, C, H, W)`` floating tensor, ``C`` in {1, 3}, values in ``[0, 1]``
            (up to :data:`RANGE_TOLERANCE`).
        name: argument name used in error messages.

    Returns:
        ``x`` detached and clamped to ``[0, 1]``, same dtype and device.

    Raises:
        TypeError: ``x`` is not a floating-point tensor.
        ValueError: wrong number of dimensions or channels, empty, non-finite values, or values
            outside ``[0, 1]`` beyond the tolerance (e.g. still normalized, or in ``[-1, 1]``).
    """
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor with values in [0, 1], got "
                        f"dtype {x.dtype} (convert e.g. uint8 images with x.float() / 255)")
    if x.dim() != 4:
        raise ValueError(f"{name} must have shape (N, C, H, W), got {tuple(x.shape)}")
    if x.shape[1] not in (1, 3):
        raise ValueError(f"{name} must have 1 or 3 channels, got {x.shape[1]} "
                         f"(shape {tuple(x.shape)})")
    if x.numel() == 0:
        raise ValueError(f"{name} must hold at least one image with at least one pixel, "
                         f"got shape {tuple(x.shape)}")
    x = x.detach()
    if not bool(torch.isfinite(x).all()):
        raise ValueError(f"{name} contains NaN or Inf values")
    low, high = float(x.min()), float(x.max())
    if low < -RANGE_TOLERANCE or high > 1.0 + RANGE_TOLERANCE:
        raise ValueError(f"{name} must have values in [0, 1] (de-normalize first), "
                         f"got min {low:.4g} and max {high:.4g}")
    return x.clamp(0.0, 1.0)


def check_pair(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Check two image batches that are compared image by image (same shape and device)."""
    x = check_images(x, "x")
    y = check_images(y, "y")
    if x.shape != y.shape:
        raise ValueError(f"x and y must have the same shape, got {tuple(x.shape)} and "
                         f"{tuple(y.shape)}")
    if x.device != y.device:
        raise ValueError(f"x and y must be on the same device, got {x.device} and {y.device}")
    return x, y
