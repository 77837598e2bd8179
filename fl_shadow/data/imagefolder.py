"""Class-per-folder image datasets, e.g. the Kaggle chest X-ray (pneumonia) layout.

Two layouts are read from ``data.path``:

- **Pre-split**: ``root/train/<class>/*``, ``root/test/<class>/*`` and optionally
  ``root/val/<class>/*``. Train and test are used as they are; val becomes the **public** split.
  Without ``val``, a stratified 10% of train is set aside as public (generative priors need
  public data), and logged.
- **Flat**: ``root/<class>/*``. Per class, 10% goes to public, ``data.test_fraction`` of the rest
  to test, and the remainder to train (stratified; at least one train image per class, and one
  test image where the class has two or more).

Classes are the sorted sub-folder names of ``root/train`` (or ``root``); images are the files
ending in .png, .jpg, .jpeg, .bmp, .tif or .tiff (any case) anywhere below a class folder, in
sorted path order; hidden files and folders are skipped. Splits use a fixed seed, so a folder
always gives the same splits. Each image is converted to ``data.channels`` (RGB -> gray by
BT.601 luma; 16-bit and float images are min-max scaled per image), center-cropped to a square
(the shorter edge, as MedMNIST does) and resized to ``data.image_size`` with antialiasing.

Decoded images are cached in ``<cache>/datasets/imagefolder-<hash>.npz``, keyed by the file list
(paths, sizes, modification times) and the parameters, so a changed folder is re-read.
"""

from __future__ import annotations

import hashlib
import logging
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from fl_shadow.config import DataConfig
from fl_shadow.data.base import DatasetSplits
from fl_shadow.data.cache import dataset_cache_path, load_arrays as load_cached, save_arrays
from fl_shadow.data.splits import SPLITS, assemble_splits, check_cached_splits
from fl_shadow.data.transforms import center_crop_square, quantize, resize_images
from fl_shadow.errors import DataError

__all__ = ["IMAGE_SUFFIXES", "PUBLIC_FRACTION", "image_count", "list_classes", "list_images",
           "load", "load_arrays", "read_image", "stratified_split"]

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
MAX_IMAGE_PIXELS = 89_478_485
"""Pillow's own default limit (``Image.MAX_IMAGE_PIXELS``): a file whose header claims more is
refused unread (a few bytes can claim gigapixels)."""
PUBLIC_FRACTION = 0.1
SPLIT_SEED = 0
VERSION = 1


def load(cfg: DataConfig, *, seed: int) -> DatasetSplits:
    """The ``imagefolder`` dataset (registered loader; ``seed`` is unused: splits are fixed).

    Raises:
        DataError: missing folder, no class folders, an empty class folder, an unreadable image.
    """
    del seed
    arrays = load_arrays(cfg)
    parts = {s: (arrays[f"{s}_images"], arrays[f"{s}_labels"]) for s in SPLITS}
    return assemble_splits("imagefolder", parts, [str(c) for c in arrays["class_names"]],
                           channels=cfg.channels)


def load_arrays(cfg: DataConfig) -> dict[str, np.ndarray]:
    """Decoded splits, from the cache or read (and cached) now.

    Returns:
        ``s_images`` uint8 ``(N, C, S, S)``, ``s_labels`` int64 ``(N,)`` and ``s_paths`` (str,
        relative to ``data.path``) for each split ``s``, and ``class_names``.
    """
    if not cfg.path:
        raise DataError("data.path: the imagefolder dataset needs a folder")
    root = Path(cfg.path).expanduser()
    if not root.is_dir():
        raise DataError(f"{root}: image folder not found (data.path)")
    files, labels, classes = _plan(root, cfg.test_fraction)
    params = {"version": VERSION, "root": str(root.resolve()), "files": _fingerprint(root, files),
              "image_size": cfg.image_size, "channels": cfg.channels,
              "test_fraction": round(cfg.test_fraction, 6)}
    cache = dataset_cache_path(cfg.cache_dir, "imagefolder", params)
    relative = {split: [str(p.relative_to(root)) for p in files[split]] for split in SPLITS}
    count = sum(len(paths) for paths in relative.values())
    longest = max((len(path) for paths in relative.values() for path in paths), default=1)
    shape = (cfg.channels, cfg.image_size, cfg.image_size)
    arrays = load_cached(cache, max_bytes=count * (int(np.prod(shape)) + 8 + 4 * longest)
                         + 4 * longest * len(classes) + 65536,
                         check=lambda a: _cache_problem(a, relative, classes, shape))
    if arrays is not None:
        return arrays
    arrays = {"class_names": np.asarray(classes, dtype=str)}
    for split in SPLITS:
        paths = files[split]
        images = np.zeros((len(paths), cfg.channels, cfg.image_size, cfg.image_size), np.uint8)
        for i, path in enumerate(paths):
            images[i] = read_image(path, channels=cfg.channels, image_size=cfg.image_size)
        arrays[f"{split}_images"] = images
        arrays[f"{split}_labels"] = np.asarray(labels[split], dtype=np.int64)
        arrays[f"{split}_paths"] = np.asarray(relative[split], dtype=str).reshape(-1)
    save_arrays(cache, arrays)
    return arrays


def image_count(cfg: DataConfig) -> int:
    """How many images (all splits) the folder of ``cfg`` holds (listed, none decoded).

    Raises:
        DataError: the folder's layout is wrong (see :func:`load`).
    """
    if not cfg.path:
        raise DataError("data.path: the imagefolder dataset needs a folder")
    files, _, _ = _plan(Path(cfg.path).expanduser(), cfg.test_fraction)
    return sum(len(paths) for paths in files.values())


def _cache_problem(arrays: Mapping[str, np.ndarray], relative: Mapping[str, list[str]],
                   classes: Sequence[str], shape: tuple[int, ...]) -> str | None:
    """What is wrong with cached arrays of this folder (None: nothing): the splits' structure,
    and the very files and classes the folder holds now."""
    names = arrays.get("class_names")
    if names is None or [str(c) for c in names.reshape(-1)] != list(classes):
        return "its class names are not the folder's"
    problem = check_cached_splits(arrays, image_shape=shape, num_classes=len(classes),
                                  ids="paths")
    if problem is not None:
        return problem
    for split in SPLITS:
        if [str(p) for p in arrays[f"{split}_paths"]] != relative[split]:
            return f"its {split} files are not the folder's"
    return None


def list_classes(folder: Path) -> list[str]:
    """Sorted names of the non-hidden sub-folders of ``folder``.

    Raises:
        DataError: ``folder`` has no class sub-folders.
    """
    classes = sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise DataError(f"{folder}: no class sub-folders (expected {folder}/<class>/<image>)")
    return classes


def list_images(folder: Path, classes: Sequence[str]) -> tuple[list[Path], list[int]]:
    """Image files below ``folder/<class>`` for each class present, sorted, with labels.

    Args:
        folder: a split folder (or the root of a flat layout).
        classes: the dataset's classes; the label of ``folder/<classes[k]>`` is ``k``.

    Raises:
        DataError: a class folder of ``folder`` is not in ``classes``, or holds no images.
    """
    present = list_classes(folder)
    unknown = [c for c in present if c not in classes]
    if unknown:
        raise DataError(f"{folder / unknown[0]}: class folder not among the training classes "
                        f"({', '.join(classes)})")
    paths: list[Path] = []
    labels: list[int] = []
    for name in present:
        class_dir = folder / name
        found = sorted(p for p in class_dir.rglob("*")
                       if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
                       and not any(part.startswith(".") for part in p.relative_to(class_dir).parts))
        if not found:
            raise DataError(f"{class_dir}: class folder holds no images "
                            f"({', '.join(IMAGE_SUFFIXES)})")
        paths += found
        labels += [classes.index(name)] * len(found)
    return paths, labels


def read_image(path: Path, *, channels: int, image_size: int) -> np.ndarray:
    """Decode, convert, center-crop and resize one image.

    Returns:
        uint8 ``(channels, image_size, image_size)``.

    Raises:
        DataError: naming the file if it cannot be decoded, or claims more than
            :data:`MAX_IMAGE_PIXELS` pixels (checked from its header, before decoding).
    """
    from PIL import Image

    try:
        with warnings.catch_warnings():
            # Pillow warns, then refuses, past its own limit; a header's claim is refused here.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            array = _decode(path, channels=channels, image_size=image_size)
    except DataError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise DataError(f"{path}: its header claims more than {MAX_IMAGE_PIXELS} pixels "
                        f"({exc}); not decoded") from None
    except Exception as exc:  # a damaged file raises whatever its decoder meets first
        raise DataError(f"{path}: not a readable image ({type(exc).__name__})") from None
    square = center_crop_square(array)                         # (L, L, C)
    chw = np.ascontiguousarray(square.transpose(2, 0, 1))[None]  # (1, C, L, L)
    return quantize(resize_images(chw, image_size))[0]


def _decode(path: Path, *, channels: int, image_size: int) -> np.ndarray:
    """The image as float32 ``(H, W, channels)`` in [0, 1] (what :func:`read_image` crops)."""
    from PIL import Image

    with Image.open(path) as image:
        width, height = image.size
        if width * height > MAX_IMAGE_PIXELS or min(width, height) < 1:
            raise DataError(f"{path}: its header claims {width} x {height} pixels (at most "
                            f"{MAX_IMAGE_PIXELS} are decoded); not decoded")
        if image.format == "JPEG":
            image.draft("L" if channels == 1 else "RGB", (2 * image_size, 2 * image_size))
        image.load()
        if image.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):
            array = np.asarray(image, dtype=np.float32)
            low, high = float(array.min()), float(array.max())
            array = (array - low) / (high - low) if high > low else np.zeros_like(array)
            array = array[..., None] if channels == 1 else np.repeat(array[..., None], 3, -1)
        else:
            converted = image.convert("L" if channels == 1 else "RGB")
            array = np.asarray(converted, dtype=np.float32) / 255.0
            if array.ndim == 2:
                array = array[..., None]
    return array


def stratified_split(labels: Sequence[int], *, test_fraction: float,
                     public_fraction: float = PUBLIC_FRACTION,
                     seed: int = SPLIT_SEED) -> dict[str, np.ndarray]:
    """Per class: ``public_fraction`` public, ``test_fraction`` of the rest test, rest train.

    Every class keeps at least one train image, and (if ``test_fraction > 0``) gives one test
    image when it has two or more.

    Returns:
        ``train``/``test``/``public`` -> sorted int64 positions into ``labels``, disjoint and
        covering all of them.
    """
    labels_np = np.asarray(labels, dtype=np.int64)
    out: dict[str, list[np.ndarray]] = {s: [] for s in SPLITS}
    for c in np.unique(labels_np):
        members = np.random.default_rng([seed, int(c)]).permutation(
            np.flatnonzero(labels_np == c))
        n = len(members)
        n_public = min(round(public_fraction * n), max(n - 2, 0))
        min_test = 1 if test_fraction > 0 and n - n_public >= 2 else 0
        n_test = min(max(round(test_fraction * (n - n_public)), min_test), n - n_public - 1)
        out["public"].append(members[:n_public])
        out["test"].append(members[n_public:n_public + n_test])
        out["train"].append(members[n_public + n_test:])
    return {s: np.sort(np.concatenate(v)).astype(np.int64) if v else np.zeros(0, np.int64)
            for s, v in out.items()}


def _plan(root: Path, test_fraction: float
          ) -> tuple[dict[str, list[Path]], dict[str, list[int]], list[str]]:
    """Which file goes to which split with which label (no image is decoded)."""
    has_train, has_test = (root / "train").is_dir(), (root / "test").is_dir()
    if has_train != has_test:
        present, absent = ("train", "test") if has_train else ("test", "train")
        raise DataError(f"{root}: found {present}/ but no {absent}/ (a pre-split image folder "
                        "needs both)")
    if has_train:
        classes = list_classes(root / "train")
        files: dict[str, list[Path]] = {}
        labels: dict[str, list[int]] = {}
        train_paths, train_labels = list_images(root / "train", classes)
        files["test"], labels["test"] = list_images(root / "test", classes)
        if (root / "val").is_dir():
            files["public"], labels["public"] = list_images(root / "val", classes)
            files["train"], labels["train"] = train_paths, train_labels
        else:
            parts = stratified_split(train_labels, test_fraction=0.0)
            logger.info("%s: no val/ folder; %d of %d train images set aside as public", root,
                        len(parts["public"]), len(train_paths))
            for split in ("train", "public"):
                files[split] = [train_paths[i] for i in parts[split]]
                labels[split] = [train_labels[i] for i in parts[split]]
        missing = sorted(set(classes) - {classes[k] for k in labels["test"]})
        if missing:
            logger.warning("%s: test/ has no images of class %s", root, ", ".join(missing))
        return files, labels, classes
    classes = list_classes(root)
    paths, all_labels = list_images(root, classes)
    parts = stratified_split(all_labels, test_fraction=test_fraction)
    return ({s: [paths[i] for i in parts[s]] for s in SPLITS},
            {s: [all_labels[i] for i in parts[s]] for s in SPLITS}, classes)


def _fingerprint(root: Path, files: dict[str, list[Path]]) -> str:
    """Hash of every planned file's split, relative path, size and modification time."""
    digest = hashlib.sha256()
    for split in SPLITS:
        for path in files[split]:
            stat = path.stat()
            digest.update(f"{split}\0{path.relative_to(root)}\0{stat.st_size}\0"
                          f"{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()
