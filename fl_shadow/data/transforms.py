"""Array transforms shared by the dataset loaders: channels, cropping, resizing, quantizing.

Loaders work on NumPy arrays in ``(N, C, H, W)`` layout with values in [0, 1] and hand the
result over as uint8 (what is cached), so a freshly built dataset and one read back from the
cache are bit-identical.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["LUMA_WEIGHTS", "center_crop_square", "quantize", "resize_images", "to_channels"]

LUMA_WEIGHTS = (0.299, 0.587, 0.114)
"""ITU-R BT.601 weights used to turn RGB into grayscale."""

_RESIZE_CHUNK = 512


def to_channels(images: np.ndarray, channels: int) -> np.ndarray:
    """Convert between grayscale and RGB.

    Args:
        images: ``(N, C, H, W)`` with ``C`` in {1, 3}.
        channels: 1 (BT.601 luma of RGB) or 3 (gray replicated).

    Returns:
        ``(N, channels, H, W)``, same dtype family (float32 for converted arrays).
    """
    if images.ndim != 4 or images.shape[1] not in (1, 3):
        raise ValueError(f"images must be (N, 1|3, H, W), got shape {images.shape}")
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3, got {channels}")
    have = images.shape[1]
    if have == channels:
        return images
    if channels == 3:
        return np.repeat(images, 3, axis=1)
    weights = np.asarray(LUMA_WEIGHTS, dtype=np.float32).reshape(1, 3, 1, 1)
    return (images.astype(np.float32) * weights).sum(axis=1, keepdims=True)


def center_crop_square(image: np.ndarray) -> np.ndarray:
    """Crop the central square (side = shorter edge) of an ``(H, W)`` or ``(H, W, C)`` image."""
    h, w = image.shape[:2]
    side = min(h, w)
    top, left = (h - side) // 2, (w - side) // 2
    return image[top:top + side, left:left + side]


def resize_images(images: np.ndarray, size: int) -> np.ndarray:
    """Resize to ``size x size`` with antialiased bilinear interpolation.

    Args:
        images: ``(N, C, H, W)`` float in [0, 1].
        size: output side length in pixels.

    Returns:
        ``(N, C, size, size)`` float32 in [0, 1] (a copy-free pass-through when already sized).
    """
    images = np.asarray(images, dtype=np.float32)
    if images.shape[-2:] == (size, size):
        return images
    out = np.empty((*images.shape[:2], size, size), dtype=np.float32)
    for start in range(0, images.shape[0], _RESIZE_CHUNK):
        chunk = torch.from_numpy(np.ascontiguousarray(images[start:start + _RESIZE_CHUNK]))
        resized = F.interpolate(chunk, size=(size, size), mode="bilinear", align_corners=False,
                                antialias=True)
        out[start:start + _RESIZE_CHUNK] = resized.clamp_(0.0, 1.0).numpy()
    return out


def quantize(images: np.ndarray) -> np.ndarray:
    """[0, 1] floats -> uint8 (rounded, clipped)."""
    return np.clip(np.rint(np.asarray(images) * 255.0), 0, 255).astype(np.uint8)
