"""In-memory image datasets shared by clients, server-side scoring and attacks.

Images are kept as float tensors in [0, 1] (``(N, C, H, W)``); the model sees them normalized
with the dataset's ``mean``/``std``. Every image has a stable integer index into its split, which
is what the simulation's audit record refers to.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class ImageSet:
    """Images and labels of one split.

    Attributes:
        images: ``(N, C, H, W)`` float32 in [0, 1].
        labels: ``(N,)`` int64 class indices.
    """

    images: torch.Tensor
    labels: torch.Tensor

    def __post_init__(self) -> None:
        if self.images.ndim != 4:
            raise ValueError(f"images must be (N, C, H, W), got shape {tuple(self.images.shape)}")
        if self.labels.shape != (self.images.shape[0],):
            raise ValueError(f"labels must be ({self.images.shape[0]},), got "
                             f"{tuple(self.labels.shape)}")

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def subset(self, indices: torch.Tensor | list[int]) -> ImageSet:
        idx = torch.as_tensor(indices, dtype=torch.long)
        return ImageSet(self.images[idx], self.labels[idx])


@dataclass(frozen=True)
class DatasetSplits:
    """A dataset ready for federated training.

    Attributes:
        name: dataset name (as registered).
        train: images the clients' partitions are drawn from.
        test: held-out split for the global model's utility.
        public: public images disjoint from ``train`` and ``test`` (priors for generative
            attacks and the shadow generator); may be empty.
        class_names: one name per label.
        mean, std: per-channel normalization constants.
    """

    name: str
    train: ImageSet
    test: ImageSet
    public: ImageSet
    class_names: tuple[str, ...]
    mean: tuple[float, ...]
    std: tuple[float, ...]

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        c, h, w = self.train.images.shape[1:]
        return int(c), int(h), int(w)

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        """[0, 1] images -> model input space."""
        return normalize(images, self.mean, self.std)

    def denormalize(self, images: torch.Tensor) -> torch.Tensor:
        """Model input space -> [0, 1] (not clamped)."""
        return denormalize(images, self.mean, self.std)


def normalize(images: torch.Tensor, mean: tuple[float, ...], std: tuple[float, ...]) -> torch.Tensor:
    m = torch.as_tensor(mean, dtype=images.dtype, device=images.device).view(1, -1, 1, 1)
    s = torch.as_tensor(std, dtype=images.dtype, device=images.device).view(1, -1, 1, 1)
    return (images - m) / s


def denormalize(images: torch.Tensor, mean: tuple[float, ...], std: tuple[float, ...]) -> torch.Tensor:
    m = torch.as_tensor(mean, dtype=images.dtype, device=images.device).view(1, -1, 1, 1)
    s = torch.as_tensor(std, dtype=images.dtype, device=images.device).view(1, -1, 1, 1)
    return images * s + m
