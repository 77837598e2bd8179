"""MedMNIST ``.npz`` files (Yang et al., "MedMNIST v2", Scientific Data 2023), e.g. PneumoniaMNIST.

A file holds ``train_images``, ``train_labels``, ``val_images``, ``val_labels``, ``test_images``
and ``test_labels``: images uint8 ``(N, H, W)`` (gray) or ``(N, H, W, 3)`` (RGB), labels
``(N, 1)``. The file's train split feeds the clients, its test split is the held-out split, and
its val split is the **public** split (disjoint from both by MedMNIST's construction).

With ``data.path`` set, that file is read; the subset name (for class names) is taken from the
file name (``pneumoniamnist_64.npz`` -> ``pneumoniamnist``), and a file with another name gets
``class 0``, ``class 1``, ... Without ``data.path``, ``data.medmnist_flag`` is fetched by the
``medmnist`` package into ``<cache>/medmnist/`` (online only), at the smallest published size
(28, 64, 128, 224) not below ``data.image_size``; a file already there is used offline.
Multi-label subsets (ChestMNIST) and 3D subsets are rejected.
"""

from __future__ import annotations

import ast
import functools
import importlib.util
import logging
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from fl_shadow.config import DataConfig
from fl_shadow.data.base import DatasetSplits
from fl_shadow.data.cache import READ_ERRORS, cache_root, npz_shapes
from fl_shadow.data.splits import assemble_splits
from fl_shadow.data.transforms import quantize, resize_images
from fl_shadow.errors import ConfigError, DataError

__all__ = ["KEYS", "SIZES", "class_names", "download", "flag_from_filename", "load",
           "medmnist_info", "read_npz"]

logger = logging.getLogger(__name__)

KEYS = ("train_images", "train_labels", "val_images", "val_labels", "test_images",
        "test_labels")
SIZES = (28, 64, 128, 224)
_SPLIT_SOURCES = {"train": "train", "test": "test", "public": "val"}


def load(cfg: DataConfig, *, seed: int) -> DatasetSplits:
    """The ``medmnist`` dataset (registered loader; ``seed`` is unused: the splits are fixed).

    Raises:
        DataError: missing, unreadable or malformed file; multi-label data; offline download.
        ConfigError: unknown ``data.medmnist_flag``.
    """
    del seed
    if cfg.path:
        path = Path(cfg.path).expanduser()
        flag = flag_from_filename(path)
    else:
        flag = cfg.medmnist_flag
        _check_flag(flag)
        path = download(flag, image_size=cfg.image_size,
                        root=cache_root(cfg.cache_dir) / "medmnist")
    info = medmnist_info().get(flag or "", {})
    arrays = read_npz(path)
    num_classes = max(len(info.get("label", {})),
                      1 + max(int(arrays[f"{s}_labels"].max(initial=-1)) for s in
                              ("train", "val", "test")))
    parts = {}
    for split, source in _SPLIT_SOURCES.items():
        images = _to_nchw(arrays[f"{source}_images"])
        if images.shape[-1] != cfg.image_size:
            images = quantize(resize_images(images.astype(np.float32) / 255.0, cfg.image_size))
        parts[split] = (images, arrays[f"{source}_labels"].reshape(-1))
    return assemble_splits("medmnist", parts, class_names(flag, num_classes),
                           channels=cfg.channels)


def read_npz(path: Path) -> dict[str, np.ndarray]:
    """The six arrays of a MedMNIST file, checked.

    Returns:
        ``KEYS`` -> arrays; images uint8 ``(N, H, W)`` or ``(N, H, W, 3)``, labels int64
        ``(N, 1)`` with values >= 0.

    Raises:
        DataError: naming the file (and the key) if the file is missing, not a readable npz,
            lacks a key, or holds arrays of the wrong shape, dtype or size.
    """
    if not path.is_file():
        raise DataError(f"{path}: MedMNIST file not found (data.path)")
    shapes = npz_shapes(path)
    if shapes is None:
        raise DataError(f"{path}: not a readable .npz file (a MedMNIST file is a zip of .npy "
                        "arrays)")
    missing = [k for k in KEYS if k not in shapes]
    if missing:
        raise DataError(f"{path}: missing key {missing[0]!r} (a MedMNIST file has "
                        f"{', '.join(KEYS)})")
    for key in KEYS:  # from the headers: nothing of a wrong kind is read into memory
        shape, dtype = shapes[key]
        if key.endswith("_images") and dtype != np.uint8:
            raise DataError(f"{path}: {key} must be uint8, got {dtype}")
        if key.endswith("_labels") and dtype.kind not in "iu":
            raise DataError(f"{path}: {key.split('_')[0]}_labels must be integers >= 0")
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {k: np.asarray(npz[k]) for k in KEYS}
    except (*READ_ERRORS, MemoryError) as exc:
        raise DataError(f"{path}: not a readable .npz file ({type(exc).__name__})") from None
    for split in ("train", "val", "test"):
        images, labels = arrays[f"{split}_images"], arrays[f"{split}_labels"]
        if images.dtype != np.uint8:
            raise DataError(f"{path}: {split}_images must be uint8, got {images.dtype}")
        if not (images.ndim == 3 or (images.ndim == 4 and images.shape[-1] in (1, 3))) \
                or images.shape[1] != images.shape[2]:
            raise DataError(f"{path}: {split}_images must be (N, H, H) or (N, H, H, 3), got "
                            f"shape {images.shape}")
        if labels.ndim == 2 and labels.shape[1] > 1:
            raise DataError(f"{path}: {split}_labels has shape {labels.shape}: multi-label "
                            "data (e.g. ChestMNIST) is not supported")
        if labels.ndim not in (1, 2) or len(labels) != len(images):
            raise DataError(f"{path}: {split}_labels must be ({len(images)}, 1), got shape "
                            f"{labels.shape}")
        if not np.issubdtype(labels.dtype, np.integer) or (labels.size and labels.min() < 0):
            raise DataError(f"{path}: {split}_labels must be integers >= 0")
        arrays[f"{split}_labels"] = labels.reshape(-1, 1).astype(np.int64)
    if len(arrays["train_labels"]) == 0 or len(arrays["test_labels"]) == 0:
        raise DataError(f"{path}: train_images and test_images must not be empty")
    shapes = {arrays[f"{s}_images"].shape[1:] for s in ("train", "val", "test")
              if len(arrays[f"{s}_images"])}
    if len(shapes) > 1:
        raise DataError(f"{path}: splits have different image shapes {sorted(shapes)}")
    return arrays


def source_bytes(path: Path) -> int:
    """Bytes of the file's image arrays once read (their headers say; 0 if unreadable)."""
    shapes = npz_shapes(path) or {}
    return sum(int(np.prod(shape)) * dtype.itemsize for key, (shape, dtype) in shapes.items()
               if key.endswith("_images"))


def image_count(path: Path) -> int:
    """Images in the file's three splits (from the headers; 0 if unreadable)."""
    shapes = npz_shapes(path) or {}
    return sum(int(shape[0]) for key, (shape, _) in shapes.items()
               if key.endswith("_images") and shape)


def flag_from_filename(path: Path) -> str | None:
    """``pneumoniamnist_64.npz`` -> ``pneumoniamnist``; ``None`` if not a known subset name."""
    stem = re.sub(r"_\d+$", "", path.stem.lower())
    return stem if stem in medmnist_info() else None


def class_names(flag: str | None, num_classes: int) -> tuple[str, ...]:
    """Label names from the medmnist package's ``INFO`` (when known), else ``class k``."""
    labels: Mapping[str, str] = medmnist_info().get(flag or "", {}).get("label", {})
    return tuple(str(labels.get(str(k), f"class {k}")) for k in range(num_classes))


@functools.lru_cache(maxsize=1)
def medmnist_info() -> dict[str, dict[str, Any]]:
    """The medmnist package's ``INFO`` dict, read from its source without importing it.

    Importing ``medmnist`` takes seconds (it pulls in pandas and scikit-learn) and creates
    ``~/.medmnist``; the dict is a literal, so it is parsed instead. Empty if not installed.
    """
    spec = importlib.util.find_spec("medmnist")
    if spec is None or not spec.submodule_search_locations:
        return {}
    source = Path(next(iter(spec.submodule_search_locations))) / "info.py"
    try:
        tree = ast.parse(source.read_text())
        for node in tree.body:
            if isinstance(node, ast.Assign) and any(
                    isinstance(t, ast.Name) and t.id == "INFO" for t in node.targets):
                return ast.literal_eval(node.value)
    except (OSError, SyntaxError, ValueError) as exc:
        logger.warning("could not read MedMNIST class names from %s (%s)", source, exc)
    return {}


def download(flag: str, *, image_size: int, root: Path) -> Path:
    """The MedMNIST file for ``flag``, fetched by the medmnist package unless already in ``root``.

    Raises:
        DataError: the package is missing or the download failed (e.g. offline).
    """
    size = next((s for s in SIZES if s >= image_size), SIZES[-1])
    path = root / (f"{flag}.npz" if size == 28 else f"{flag}_{size}.npz")
    if path.is_file():
        return path
    if importlib.util.find_spec("medmnist") is None:
        raise DataError("data.path is not set and the medmnist package is not installed: give "
                        "a local .npz in data.path, or pip install medmnist")
    try:
        root.mkdir(parents=True, exist_ok=True)
        _fetch(flag, size, root)
    except Exception as exc:  # the package wraps network errors in RuntimeError
        raise DataError(f"data.medmnist_flag: could not download MedMNIST {flag!r} at {size} px "
                        f"({type(exc).__name__}; offline?); download {path.name} elsewhere and "
                        "set data.path to it") from None
    if not path.is_file():
        raise DataError(f"{path}: the medmnist package reported success but wrote no file")
    return path


def _fetch(flag: str, size: int, root: Path) -> None:
    """Let the medmnist package download ``flag`` at ``size`` px into ``root`` (online)."""
    import medmnist

    dataset_cls = getattr(medmnist, medmnist_info()[flag]["python_class"])
    dataset_cls(split="train", download=True, root=str(root), size=size)


def _check_flag(flag: str) -> None:
    info = medmnist_info()
    if info and flag not in info:
        known = ", ".join(sorted(k for k in info if not k.endswith("3d")))
        raise ConfigError(f"data.medmnist_flag: unknown MedMNIST subset {flag!r}; expected one "
                          f"of: {known}")
    if flag.endswith("3d"):
        raise ConfigError(f"data.medmnist_flag: {flag!r} is a 3D subset; only 2D subsets are "
                          "supported")
    task = str(info.get(flag, {}).get("task", ""))
    if "multi-label" in task:
        raise ConfigError(f"data.medmnist_flag: {flag!r} is multi-label ({task}); only "
                          "single-label classification is supported")


def _to_nchw(images: np.ndarray) -> np.ndarray:
    """uint8 ``(N, H, W)`` or ``(N, H, W, C)`` -> ``(N, C, H, W)``."""
    return images[:, None] if images.ndim == 3 else np.ascontiguousarray(
        images.transpose(0, 3, 1, 2))
