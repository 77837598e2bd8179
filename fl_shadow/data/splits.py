"""Turn a loader's uint8 arrays into a :class:`DatasetSplits` (float images, channels, stats)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from fl_shadow.data.base import DatasetSplits, ImageSet
from fl_shadow.data.transforms import to_channels

__all__ = ["SPLITS", "STD_FLOOR", "assemble_splits", "channel_stats", "check_cached_splits"]

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


def check_cached_splits(arrays: Mapping[str, np.ndarray], *, image_shape: tuple[int, ...],
                        num_classes: int, ids: str, extra: Sequence[str] = ()) -> str | None:
    """What is wrong with a loader's cached splits (None: nothing), before they are used.

    Each split ``s`` of :data:`SPLITS` must have ``s_images`` uint8 ``(N, *image_shape)``,
    ``s_labels`` integers ``(N,)`` in ``[0, num_classes)``, and ``s_<ids>`` plus every
    ``s_<extra>`` of shape ``(N,)``; no id (a source slice, a file) may be in two splits, so
    that the public split shares nothing with the clients' images or the test split.
    """
    seen: dict[Any, str] = {}
    for split in SPLITS:
        images, labels = arrays.get(f"{split}_images"), arrays.get(f"{split}_labels")
        if images is None or labels is None:
            return f"no {split}_images or {split}_labels"
        if images.dtype != np.uint8 or tuple(images.shape[1:]) != tuple(image_shape):
            return (f"{split}_images are {images.dtype} {tuple(images.shape)}, expected uint8 "
                    f"(N, {', '.join(map(str, image_shape))})")
        n = images.shape[0]
        if labels.dtype.kind not in "iu" or labels.shape != (n,):
            return f"{split}_labels are {labels.dtype} {labels.shape}, expected integers ({n},)"
        if n and (labels.min() < 0 or labels.max() >= num_classes):
            return f"{split}_labels outside 0..{num_classes - 1}"
        for key in (ids, *extra):
            values = arrays.get(f"{split}_{key}")
            if values is None or values.shape != (n,):
                return f"{split}_{key} missing or not ({n},)"
        for value in np.unique(arrays[f"{split}_{ids}"]).tolist():
            if seen.setdefault(value, split) != split:
                return f"{ids} {value!r} is in both the {seen[value]} and the {split} split"
    return None
