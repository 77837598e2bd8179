"""Class-per-folder image datasets, as the public chest X-ray sets are laid out.

``root/<class>/*.{png,jpg,jpeg,bmp,tif,tiff}``. If ``root/train`` and ``root/test`` exist they
are the train and test splits (and ``root/val``, if present, the public split); otherwise the
images are split per class by ``test_fraction`` (and 10% public). Files are read in sorted order,
so the dataset is the same on every machine.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from fl_shadow.data.transforms import resize
from fl_shadow.errors import DataError

EXTENSIONS = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff"}


def list_classes(root: Path) -> list[str]:
    classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise DataError(f"{root}: no class folders (expected root/<class>/<image files>)")
    return classes


def read_folder(root: Path, classes: list[str], *, channels: int,
                image_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """All images under ``root/<class>/`` as ``(N, C, S, S)`` in [0, 1] with labels."""
    from PIL import Image, UnidentifiedImageError

    images, labels = [], []
    for label, name in enumerate(classes):
        folder = root / name
        files = sorted(p for p in folder.iterdir() if p.suffix.lower() in EXTENSIONS) \
            if folder.is_dir() else []
        if not files:
            raise DataError(f"{folder}: class folder has no images")
        for file in files:
            try:
                with Image.open(file) as img:
                    img = img.convert("L" if channels == 1 else "RGB")
                    array = np.asarray(img, dtype=np.float32) / 255.0
            except (UnidentifiedImageError, OSError, ValueError) as exc:
                raise DataError(f"{file}: unreadable image ({exc.__class__.__name__})") from None
            x = torch.from_numpy(array)
            x = x[None, None] if x.ndim == 2 else x.permute(2, 0, 1)[None]
            images.append(resize(x, image_size))
            labels.append(label)
    return torch.cat(images), torch.tensor(labels, dtype=torch.long)


def stratified_split(labels: torch.Tensor, fractions: dict[str, float],
                     seed: int) -> dict[str, torch.Tensor]:
    """Per class, shuffle and cut off ``fractions`` (e.g. test, public); the rest is train."""
    rng = np.random.default_rng(seed)
    out: dict[str, list[int]] = {name: [] for name in (*fractions, "train")}
    for c in torch.unique(labels).tolist():
        idx = rng.permutation(np.flatnonzero(labels.numpy() == c))
        start = 0
        for name, frac in fractions.items():
            take = int(round(frac * len(idx)))
            if len(idx) - start - take < 1:
                take = max(0, len(idx) - start - 1)
            out[name] += idx[start:start + take].tolist()
            start += take
        out["train"] += idx[start:].tolist()
    return {k: torch.tensor(sorted(v), dtype=torch.long) for k, v in out.items()}
