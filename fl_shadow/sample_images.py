"""Natural test images for attack checks and benchmarks: scikit-image's bundled samples.

The attack tests and the attack-speed benchmark reconstruct the same kind of image: a central
square of a scikit-image sample (shipped inside the package, so nothing downloads), in gray,
min-max scaled to [0, 1] and resized. scikit-image is an optional dependency (the ``test`` and
``bench`` extras); it is imported only when images are asked for.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

__all__ = ["SAMPLE_NAMES", "sample_images"]

#: The samples, in the order images are taken: gray first, then colour ones (averaged to gray).
SAMPLE_NAMES = ("camera", "moon", "coins", "text", "astronaut", "coffee", "chelsea", "rocket")


def sample_images(count: int, size: int, names: Sequence[str] = SAMPLE_NAMES) -> torch.Tensor:
    """``(count, 1, size, size)`` float32 images in [0, 1], the first ``count`` of ``names``.

    Raises:
        ValueError: more images asked for than names.
        ModuleNotFoundError: scikit-image is not installed (the message names the extra).
    """
    if not 0 < count <= len(names):
        raise ValueError(f"count: expected 1..{len(names)} sample images, got {count}")
    try:
        from skimage import data as skdata
        from skimage.transform import resize
    except ModuleNotFoundError as exc:
        raise ModuleNotFoundError("sample_images needs scikit-image: pip install -e "
                                  "'.[test]' (or '.[bench]')") from exc
    out = []
    for name in names[:count]:
        image = getattr(skdata, name)().astype(np.float64)
        if image.ndim == 3:
            image = image[..., :3].mean(-1)
        side = min(image.shape)
        top, left = (image.shape[0] - side) // 2, (image.shape[1] - side) // 2
        image = image[top:top + side, left:left + side]
        image = (image - image.min()) / (image.max() - image.min())
        out.append(torch.tensor(resize(image, (size, size), anti_aliasing=True),
                                dtype=torch.float32).view(1, 1, size, size))
    return torch.cat(out)
