"""MedMNIST ``.npz`` files (Yang et al., Scientific Data 2023), e.g. PneumoniaMNIST.

A file holds ``train_images``, ``train_labels``, ``val_images``, ``val_labels``, ``test_images``
and ``test_labels``; images are uint8 ``(N, H, W)`` or ``(N, H, W, 3)``, labels ``(N, 1)``. The
train split feeds the clients, test is the held-out split, and val is the public split (disjoint
from both). Without a local path the ``medmnist`` package downloads the file (online only).
"""

from __future__ import annotations

import re
import zipfile
from pathlib import Path

import numpy as np
import torch

from fl_shadow.errors import DataError

KEYS = ("train_images", "train_labels", "val_images", "val_labels", "test_images",
        "test_labels")


def read_npz(path: Path) -> dict[str, np.ndarray]:
    """The six arrays of a MedMNIST file; DataError naming the file on any problem."""
    if not path.is_file():
        raise DataError(f"{path}: MedMNIST file not found (data.path)")
    try:
        with np.load(path, allow_pickle=False) as f:
            missing = [k for k in KEYS if k not in f.files]
            if missing:
                raise DataError(f"{path}: not a MedMNIST file, missing key {missing[0]!r}")
            arrays = {k: np.asarray(f[k]) for k in KEYS}
    except DataError:
        raise
    except (zipfile.BadZipFile, OSError, ValueError, EOFError) as exc:
        raise DataError(f"{path}: unreadable .npz ({exc.__class__.__name__}: {exc})") from None
    for split in ("train", "val", "test"):
        images, labels = arrays[f"{split}_images"], arrays[f"{split}_labels"]
        if images.ndim not in (3, 4) or (images.ndim == 4 and images.shape[-1] != 3):
            raise DataError(f"{path}: {split}_images must be (N, H, W) or (N, H, W, 3), got "
                            f"{images.shape}")
        if labels.ndim == 2 and labels.shape[1] > 1:
            raise DataError(f"{path}: multi-label MedMNIST sets (e.g. ChestMNIST) are not "
                            "supported; labels have shape " f"{labels.shape}")
        if len(labels) != len(images):
            raise DataError(f"{path}: {split}_labels has {len(labels)} rows, {split}_images "
                            f"{len(images)}")
    return arrays


def to_tensors(images: np.ndarray, labels: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 ``(N, H, W[, 3])`` -> float ``(N, C, H, W)`` in [0, 1]; labels -> ``(N,)``."""
    x = torch.from_numpy(images.astype(np.float32) / 255.0)
    x = x[:, None] if x.ndim == 3 else x.permute(0, 3, 1, 2)
    return x.contiguous(), torch.from_numpy(labels.reshape(-1).astype(np.int64))


def class_names(flag: str | None, num_classes: int) -> tuple[str, ...]:
    """Label names from the medmnist package's INFO when it is installed, else ``class-k``."""
    if flag:
        try:
            from medmnist import INFO

            names = INFO[flag]["label"]
            return tuple(names[str(k)] for k in range(num_classes))
        except Exception:
            pass
    return tuple(f"class-{k}" for k in range(num_classes))


def flag_from_filename(path: Path) -> str | None:
    """``pneumoniamnist_64.npz`` -> ``pneumoniamnist``."""
    match = re.match(r"([a-z0-9]+mnist)", path.stem.lower())
    return match.group(1) if match else None


def download(flag: str, size: int, root: Path) -> Path:
    """Fetch a MedMNIST file with the medmnist package (needs the internet)."""
    try:
        from medmnist import INFO
    except ImportError:
        raise DataError("data.path is not set and the medmnist package is not installed; give "
                        "a local .npz in data.path or pip install medmnist") from None
    if flag not in INFO:
        raise DataError(f"data.medmnist_flag: unknown MedMNIST set {flag!r}")
    import medmnist

    cls = getattr(medmnist, INFO[flag]["python_class"])
    root.mkdir(parents=True, exist_ok=True)
    kwargs = {"size": size} if size in (64, 128, 224) else {}
    try:
        dataset = cls(split="train", download=True, root=str(root), **kwargs)
    except Exception as exc:
        raise DataError(f"data.medmnist_flag: could not download {flag!r} (offline? give a "
                        f"local .npz in data.path): {exc.__class__.__name__}") from None
    return Path(dataset._npz_path if hasattr(dataset, "_npz_path") else
                root / f"{flag}{'_' + str(size) if kwargs else ''}.npz")
