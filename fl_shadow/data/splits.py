"""Turn a loader's uint8 arrays into a :class:`DatasetSplits` (float images, channels, stats)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch

from fl_shadow.data.base import DatasetSplits, ImageSet
from fl_shadow.data.transforms import to_channels

__all__ = ["SPLITS", "STD_FLOOR", "assemble_splits", "channel_stats"]

SPLITS = ("train", "test", "public")
STD_FLOOR = 1e-3
"""Smallest per-channel std reported, so normalizing a constant channel stays finite."""


def assemble_splits(name: str, parts: Mapping[str, tuple[np.ndarray, np.ndarray]],
                    class_names: Sequence[str], *, channels: int) -> DatasetSplits:
    """Build the splits from uint8 images and integer labels.

    Args:
        name: dataset name as registered.
        parts: for each of ``train``, ``test``, ``public``: images uint8 ``(N, C, H, W)``
            (``C`` in {1, 3}; all splits one size) and labels ``(N,)`` in
            ``[0, len(class_names))``.
        class_names: one name per label.
        channels: output channels (1 or 3); gray <-> RGB converted as needed.

    Returns:
        Float32 images in [0, 1], int64 labels, and ``mean``/``std`` per channel measured on the
        train split (std floored at :data:`STD_FLOOR`).
    """
    sets: dict[str, ImageSet] = {}
    for split in SPLITS:
        images, labels = parts[split]
        floats = np.asarray(images, dtype=np.float32) / np.float32(255.0)
        floats = to_channels(floats, channels)
        sets[split] = ImageSet(torch.from_numpy(np.ascontiguousarray(floats, dtype=np.float32)),
                               torch.from_numpy(np.asarray(labels, dtype=np.int64).reshape(-1)))
    mean, std = channel_stats(sets["train"].images)
    return DatasetSplits(name=name, train=sets["train"], test=sets["test"],
                         public=sets["public"], class_names=tuple(class_names), mean=mean,
                         std=std)


def channel_stats(images: torch.Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std (population, floored at :data:`STD_FLOOR`) of ``(N, C, H, W)``."""
    flat = images.transpose(0, 1).reshape(images.shape[1], -1).double()
    if flat.shape[1] == 0:
        raise ValueError("cannot compute channel statistics of an empty image set")
    mean = flat.mean(dim=1)
    std = flat.std(dim=1, correction=0).clamp_min(STD_FLOOR)
    return tuple(float(m) for m in mean), tuple(float(s) for s in std)
