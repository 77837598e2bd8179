"""Class-per-folder image datasets, e.g. the Kaggle chest X-ray (pneumonia) layout.

Two layouts are read from ``data.path``:

- **Pre-split**: ``root/train/<class>/*``, ``root/test/<class>/*`` and optionally
  ``root/val/<class>/*``. Train and test are used as they are; val becomes the **public** split
  (``data.public_fraction`` is then unused, and a warning says so if it is set). Without
  ``val``, a stratified ``data.public_fraction`` of train (default :data:`PUBLIC_FRACTION`,
  10%) is set aside as public (generative priors need public data), and logged.
- **Flat**: ``root/<class>/*``. Per class, ``data.public_fraction`` (default 10%) goes to
  public, ``data.test_fraction`` of the rest to test, and the remainder to train (stratified;
  at least one train image per class, and one test image where the class has two or more).

**Patients.** Several images of one patient in two splits let a model (or an attack's prior)
recognise the patient rather than the disease, so ``data.patients`` can say which patient each
image comes from, and the splits are then disjoint by patient. It is either a ``.csv`` table
(a value ending in ``.csv``; UTF-8, a header with the columns ``file``, the image's path
relative to ``data.path`` with ``/`` separators, and ``patient``; other columns and rows of
other files are ignored), or a regular expression searched in each image's relative path
(``train/PNEUMONIA/person12_virus_3.jpeg``) whose one capturing group, or the group named
``patient``, is the patient id (``person(\\d+)_``). Every image must have a patient.

- Flat layout: whole patients are assigned, grouped by their majority class (ties: the first
  class) for approximate stratification: within each group, a seeded order of its patients
  gives the first ones to public until their images come closest to ``data.public_fraction``
  of the group's, the next ones to test likewise (``data.test_fraction`` of the rest) and the
  others to train (at least one train patient per group, and one test patient where the group
  has two or more; a class left without a train image gets its smallest patient moved to
  train).
- Pre-split layout: a patient in two of train/, test/ and val/ is refused (the official split
  leaks patients); without val/, public is set aside from train by patient as above.

Classes are the sorted sub-folder names of ``root/train`` (or ``root``); images are the files
ending in .png, .jpg, .jpeg, .bmp, .tif or .tiff (any case) anywhere below a class folder, in
sorted path order; hidden files and folders are skipped. Splits use a fixed seed, so a folder
always gives the same splits. Each image is converted to ``data.channels`` (RGB -> gray by
BT.601 luma; 16-bit and float images are min-max scaled per image), center-cropped to a square
(the shorter edge, as MedMNIST does) and resized to ``data.image_size`` with antialiasing.

Decoded images are cached in ``<cache>/datasets/imagefolder-<hash>.npz``, keyed by the file list
(paths, sizes, modification times, splits), the parameters and, with ``data.patients``, every
image's patient, so a changed folder or table is re-read. The cache holds ``s_patients`` per
split when patients are given, and one with a patient in two splits is rebuilt.
"""

from __future__ import annotations

import csv
import hashlib
import io
import logging
import posixpath
import re
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fl_shadow.config import DataConfig
from fl_shadow.data.base import DatasetSplits
from fl_shadow.data.cache import dataset_cache_path, load_arrays as load_cached, save_arrays
from fl_shadow.data.splits import SPLITS, assemble_splits, check_cached_splits
from fl_shadow.data.transforms import center_crop_square, quantize, resize_images
from fl_shadow.errors import ConfigError, DataError

__all__ = ["IMAGE_SUFFIXES", "MAX_PATIENT_TABLE_BYTES", "PUBLIC_FRACTION", "image_count",
           "list_classes", "list_images", "load", "load_arrays", "patient_ids", "patient_split",
           "read_image", "stratified_split"]

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
MAX_IMAGE_PIXELS = 89_478_485
"""Pillow's own default limit (``Image.MAX_IMAGE_PIXELS``): a file whose header claims more is
refused unread (a few bytes can claim gigapixels)."""
PUBLIC_FRACTION = 0.1
"""Share of each class set aside as public when ``data.public_fraction`` is None."""
MAX_PATIENT_TABLE_BYTES = 256 * 2**20
"""Largest ``data.patients`` table read (a few million rows); a larger file is refused unread."""
SPLIT_SEED = 0
VERSION = 1
_PATIENT_COLUMNS = ("file", "patient")


def load(cfg: DataConfig, *, seed: int) -> DatasetSplits:
    """The ``imagefolder`` dataset (registered loader; ``seed`` is unused: splits are fixed).

    Raises:
        ConfigError: ``data.patients`` is not a valid regular expression with one group, or a
            table without the ``file`` and ``patient`` columns.
        DataError: missing folder, no class folders, an empty class folder, an unreadable image;
            with ``data.patients``: an image without a patient, a patient in two of the given
            splits, an unreadable table.
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
        relative to ``data.path``) for each split ``s``, and ``class_names``; with
        ``data.patients`` also ``s_patients`` (str ``(N,)``, the image's patient id; no id in
        two splits).
    """
    if not cfg.path:
        raise DataError("data.path: the imagefolder dataset needs a folder")
    root = Path(cfg.path).expanduser()
    if not root.is_dir():
        raise DataError(f"{root}: image folder not found (data.path)")
    plan = _plan(root, cfg)
    files, labels, classes, patients = plan.files, plan.labels, plan.classes, plan.patients
    if plan.public_is_val and cfg.public_fraction is not None:
        warnings.warn(f"data.public_fraction: unused ({cfg.public_fraction:g}); {root / 'val'} "
                      "is the public split", stacklevel=2)
    params = {"version": VERSION, "root": str(root.resolve()), "files": _fingerprint(root, files),
              "image_size": cfg.image_size, "channels": cfg.channels,
              "test_fraction": round(cfg.test_fraction, 6)}
    # Only what changes the content enters the key, so a folder read as before keeps its cache.
    if _public_fraction(cfg) != PUBLIC_FRACTION:
        params["public_fraction"] = _public_fraction(cfg)
    relative = {split: [str(p.relative_to(root)) for p in files[split]] for split in SPLITS}
    if patients is not None:
        params["patients"] = _patients_digest(relative, patients)
    cache = dataset_cache_path(cfg.cache_dir, "imagefolder", params)
    count = sum(len(paths) for paths in relative.values())
    longest = max((len(path) for paths in relative.values() for path in paths), default=1)
    longest_patient = 0 if patients is None else max(
        (len(p) for ids in patients.values() for p in ids), default=1)
    shape = (cfg.channels, cfg.image_size, cfg.image_size)
    arrays = load_cached(cache, max_bytes=count * (int(np.prod(shape)) + 8 + 4 * longest
                                                   + 4 * longest_patient)
                         + 4 * longest * len(classes) + 65536,
                         check=lambda a: _cache_problem(a, relative, classes, shape, patients))
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
        if patients is not None:
            arrays[f"{split}_patients"] = np.asarray(patients[split], dtype=str).reshape(-1)
    save_arrays(cache, arrays)
    return arrays


def image_count(cfg: DataConfig) -> int:
    """How many images (all splits) the folder of ``cfg`` holds (listed, none decoded).

    Raises:
        ConfigError, DataError: the folder's layout or ``data.patients`` is wrong (see
            :func:`load`).
    """
    if not cfg.path:
        raise DataError("data.path: the imagefolder dataset needs a folder")
    plan = _plan(Path(cfg.path).expanduser(), cfg)
    return sum(len(paths) for paths in plan.files.values())


def _cache_problem(arrays: Mapping[str, np.ndarray], relative: Mapping[str, list[str]],
                   classes: Sequence[str], shape: tuple[int, ...],
                   patients: Mapping[str, list[str]] | None) -> str | None:
    """What is wrong with cached arrays of this folder (None: nothing): the splits' structure
    (no file, and with ``patients`` no patient, in two splits), and the very files, classes and
    patients the folder holds now."""
    names = arrays.get("class_names")
    if names is None or [str(c) for c in names.reshape(-1)] != list(classes):
        return "its class names are not the folder's"
    if patients is None:
        problem = check_cached_splits(arrays, image_shape=shape, num_classes=len(classes),
                                      ids="paths")
    else:
        # The files are compared with the folder's (disjoint) plan below; the shared check
        # makes sure no patient is in two splits.
        problem = check_cached_splits(arrays, image_shape=shape, num_classes=len(classes),
                                      ids="patients", extra=("paths",))
    if problem is not None:
        return problem
    for split in SPLITS:
        if [str(p) for p in arrays[f"{split}_paths"]] != relative[split]:
            return f"its {split} files are not the folder's"
        if patients is not None and [str(p) for p in arrays[f"{split}_patients"]] \
                != patients[split]:
            return f"its {split} patients are not data.patients'"
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


def patient_split(labels: Sequence[int], patients: Sequence[str], *, test_fraction: float,
                  public_fraction: float = PUBLIC_FRACTION,
                  seed: int = SPLIT_SEED) -> dict[str, np.ndarray]:
    """Whole patients to public, test and train, approximately stratified by class.

    Each patient counts as its majority class (ties: the lowest label). Within each such group,
    a seeded order of the group's patients (sorted ids, permuted) gives its first patients to
    public, as many as bring their images closest to ``public_fraction`` of the group's, the
    next ones to test likewise (``test_fraction`` of the images left) and the rest to train.
    Like :func:`stratified_split` per image: a group of one or two patients gives none to
    public, every group keeps a train patient, and (if ``test_fraction > 0``) gives a test
    patient when two or more are left. A class then without any train image (present only in
    other groups' public or test patients) gets its smallest such patient moved to train.

    Args:
        labels: ``(N,)`` class of each image.
        patients: ``(N,)`` patient id of each image.
        test_fraction, public_fraction: shares in [0, 1), of the images.
        seed: the split seed (:data:`SPLIT_SEED` for the dataset).

    Returns:
        ``train``/``test``/``public`` -> sorted int64 positions into ``labels``, disjoint,
        covering all of them, and no patient in two of them.
    """
    labels_np = np.asarray(labels, dtype=np.int64).reshape(-1)
    if len(patients) != len(labels_np):
        raise ValueError(f"patients: expected one per label ({len(labels_np)}), got "
                         f"{len(patients)}")
    if len(labels_np) == 0:
        return {s: np.zeros(0, np.int64) for s in SPLITS}
    ids, of_image = np.unique(np.asarray(patients, dtype=str), return_inverse=True)
    of_image = of_image.reshape(-1)
    counts = np.zeros((len(ids), int(labels_np.max()) + 1), np.int64)  # (patients, classes)
    np.add.at(counts, (of_image, labels_np), 1)
    sizes = counts.sum(axis=1)
    majority = counts.argmax(axis=1)
    split_of = np.full(len(ids), SPLITS.index("train"))
    for c in np.unique(majority):
        members = np.random.default_rng([seed, int(c)]).permutation(np.flatnonzero(majority == c))
        total = np.concatenate([[0], np.cumsum(sizes[members])])  # images of the first k
        n_public = _closest_prefix(total, public_fraction * total[-1],
                                   lower=0, upper=max(len(members) - 2, 0))
        rest = total[n_public:] - total[n_public]
        left = len(members) - n_public
        min_test = 1 if test_fraction > 0 and left >= 2 else 0
        n_test = _closest_prefix(rest, test_fraction * rest[-1], lower=min_test, upper=left - 1)
        split_of[members[:n_public]] = SPLITS.index("public")
        split_of[members[n_public:n_public + n_test]] = SPLITS.index("test")
    for c in range(counts.shape[1]):
        in_train = counts[split_of == SPLITS.index("train"), c].sum()
        holders = np.flatnonzero(counts[:, c] > 0)
        if in_train == 0 and len(holders):
            smallest = holders[np.argmin(sizes[holders])]  # first among equals: sorted ids
            split_of[smallest] = SPLITS.index("train")
    split_of_image = split_of[of_image]
    return {s: np.flatnonzero(split_of_image == k).astype(np.int64) for k, s in enumerate(SPLITS)}


def _closest_prefix(cumulative: np.ndarray, target: float, *, lower: int, upper: int) -> int:
    """The ``k`` in ``[lower, upper]`` whose ``cumulative[k]`` is closest to ``target`` (the
    smallest such ``k`` on ties)."""
    return lower + int(np.argmin(np.abs(cumulative[lower:upper + 1] - target)))


def patient_ids(root: Path, paths: Sequence[Path], patients: str) -> list[str]:
    """The patient id of every image, from ``data.patients`` (see the module docstring).

    Args:
        root: ``data.path``; ``paths`` are matched by their path relative to it, ``/``-separated.
        paths: image files below ``root``.
        patients: a ``.csv`` table's path (a value ending in ``.csv``) or a regular expression.

    Returns:
        One non-empty id per path, in order.

    Raises:
        ConfigError: naming ``data.patients``: not a valid regular expression with one
            capturing group (or one named ``patient``), a table without the ``file`` and
            ``patient`` columns.
        DataError: an image without a patient (naming it and how many others), a table that is
            missing, too large, not UTF-8 or not valid CSV.
    """
    relative = [p.relative_to(root).as_posix() for p in paths]
    if _is_table(patients):
        table_path = Path(patients).expanduser()
        table = _read_patient_table(table_path)
        found = [table.get(r) for r in relative]
        why = f"not in the patient table {table_path} (data.patients)"
    else:
        pattern, group = _patient_pattern(patients)
        matches = [pattern.search(r) for r in relative]
        found = [m.group(group) if m is not None else None for m in matches]
        why = f"data.patients {_shown(patients)} finds no patient id in its path"
    missing = [r for r, patient in zip(relative, found) if not patient]
    if missing:
        others = {0: "", 1: "; nor does 1 other image"}.get(
            len(missing) - 1, f"; nor do {len(missing) - 1} other images")
        raise DataError(f"{root / missing[0]}: {why}{others}")
    return [str(patient) for patient in found]


def _is_table(patients: str) -> bool:
    # The same rule as config.resolve_paths, which resolves a table's path like data.path.
    return patients.lower().endswith(".csv")


def _patient_pattern(patients: str) -> tuple[re.Pattern[str], int | str]:
    """The compiled ``data.patients`` expression and its patient group (a number or name)."""
    try:
        pattern = re.compile(patients)
    except (re.error, OverflowError, RecursionError, ValueError) as exc:
        raise ConfigError(f"data.patients: expected a regular expression (or a .csv table), got "
                          f"{_shown(patients)} ({type(exc).__name__}: {exc})") from None
    if "patient" in pattern.groupindex:
        return pattern, "patient"
    if pattern.groups != 1:
        raise ConfigError(f"data.patients: expected a regular expression with exactly one "
                          f"capturing group (or one named 'patient'), got {pattern.groups} "
                          f"groups in {_shown(patients)}")
    return pattern, 1


def _read_patient_table(path: Path) -> dict[str, str]:
    """``file -> patient`` from a ``data.patients`` table (paths ``/``-normalized)."""
    if not path.is_file():  # False for a path with a NUL, too
        raise DataError(f"data.patients: {path}: patient table not found (or not a file)")
    try:
        size = path.stat().st_size
        if size > MAX_PATIENT_TABLE_BYTES:  # refused before it is read
            raise DataError(f"data.patients: {path}: {size} bytes, more than the "
                            f"{MAX_PATIENT_TABLE_BYTES} a patient table may have")
        raw = path.read_bytes()
    except OSError as exc:
        raise DataError(f"data.patients: {path}: not readable ({type(exc).__name__})") from None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise DataError(f"data.patients: {path}: not UTF-8 text (byte {exc.start}); save the "
                        "table as UTF-8 CSV") from None
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)  # strict: refuse bad quoting
    table: dict[str, str] = {}
    try:
        header = [name.strip() for name in next(reader, [])]
        if not all(column in header for column in _PATIENT_COLUMNS):
            shown = ", ".join(_shown(name) for name in header[:8]) or "nothing"
            raise ConfigError(f"data.patients: {path}: expected a header with the columns "
                              f"'file' and 'patient', got {shown}")
        file_column, patient_column = (header.index(c) for c in _PATIENT_COLUMNS)
        for row in reader:
            if not any(cell.strip() for cell in row):
                continue  # a blank line
            if len(row) <= max(file_column, patient_column):
                raise DataError(f"data.patients: {path}, line {reader.line_num}: expected "
                                f"{len(header)} fields, got {len(row)}")
            file = posixpath.normpath(row[file_column].strip())
            patient = row[patient_column].strip()
            if not patient or file == ".":
                raise DataError(f"data.patients: {path}, line {reader.line_num}: an empty "
                                f"{'patient' if file != '.' else 'file'}")
            if table.setdefault(file, patient) != patient:
                raise DataError(f"data.patients: {path}, line {reader.line_num}: {_shown(file)} "
                                f"has two patients, {_shown(table[file])} and {_shown(patient)}")
    except csv.Error as exc:
        raise DataError(f"data.patients: {path}, line {reader.line_num}: not valid CSV "
                        f"({exc})") from None
    return table


def _shown(text: str, limit: int = 80) -> str:
    """``text`` quoted as written (a regular expression's backslashes not doubled; the error
    escapes control characters), cut to about ``limit`` characters."""
    return f"'{text}'" if len(text) <= limit else f"'{text[:limit]}'..."


@dataclass(frozen=True)
class _Plan:
    """Which file goes to which split (no image decoded).

    Attributes:
        files, labels: per split, the image files and their labels.
        classes: the class names (label ``k`` is ``classes[k]``).
        patients: per split, each file's patient id; None without ``data.patients``.
        public_is_val: the public split is the folder's ``val/``.
    """

    files: dict[str, list[Path]]
    labels: dict[str, list[int]]
    classes: list[str]
    patients: dict[str, list[str]] | None
    public_is_val: bool


def _public_fraction(cfg: DataConfig) -> float:
    return PUBLIC_FRACTION if cfg.public_fraction is None else round(cfg.public_fraction, 6)


def _plan(root: Path, cfg: DataConfig) -> _Plan:
    """Which file goes to which split with which label and patient (no image is decoded)."""
    has_train, has_test = (root / "train").is_dir(), (root / "test").is_dir()
    if has_train != has_test:
        present, absent = ("train", "test") if has_train else ("test", "train")
        raise DataError(f"{root}: found {present}/ but no {absent}/ (a pre-split image folder "
                        "needs both)")
    if has_train:
        return _plan_presplit(root, cfg)
    classes = list_classes(root)
    paths, all_labels = list_images(root, classes)
    if cfg.patients is None:
        parts = stratified_split(all_labels, test_fraction=cfg.test_fraction,
                                 public_fraction=_public_fraction(cfg))
        ids = None
    else:
        all_ids = patient_ids(root, paths, cfg.patients)
        parts = patient_split(all_labels, all_ids, test_fraction=cfg.test_fraction,
                              public_fraction=_public_fraction(cfg))
        ids = {s: [all_ids[i] for i in parts[s]] for s in SPLITS}
        _log_patients(root, ids)
        # Per image every class of two or more images has a test image; per patient, a class
        # of few patients may have none.
        missing = sorted(set(classes) - {classes[all_labels[i]] for i in parts["test"]})
        if missing:
            logger.warning("%s: split by patient, the test split has no images of class %s "
                           "(too few patients)", root, ", ".join(missing))
    return _Plan({s: [paths[i] for i in parts[s]] for s in SPLITS},
                 {s: [all_labels[i] for i in parts[s]] for s in SPLITS}, classes, ids,
                 public_is_val=False)


def _plan_presplit(root: Path, cfg: DataConfig) -> _Plan:
    """:func:`_plan` of ``root/train``, ``root/test`` and maybe ``root/val``."""
    classes = list_classes(root / "train")
    given = {"train": list_images(root / "train", classes),
             "test": list_images(root / "test", classes)}
    public_is_val = (root / "val").is_dir()
    if public_is_val:
        given["public"] = list_images(root / "val", classes)
    given_ids: dict[str, list[str]] = {}
    if cfg.patients is not None:
        every = [p for paths, _ in given.values() for p in paths]
        all_ids = iter(patient_ids(root, every, cfg.patients))  # one error names every miss
        given_ids = {split: [next(all_ids) for _ in paths] for split, (paths, _) in given.items()}
        _refuse_shared_patients(root, given, given_ids)
    files = {split: paths for split, (paths, _) in given.items()}
    labels = {split: split_labels for split, (_, split_labels) in given.items()}
    if not public_is_val:
        train_paths, train_labels = given["train"]
        if cfg.patients is None:
            parts = stratified_split(train_labels, test_fraction=0.0,
                                     public_fraction=_public_fraction(cfg))
        else:
            parts = patient_split(train_labels, given_ids["train"], test_fraction=0.0,
                                  public_fraction=_public_fraction(cfg))
            given_ids = {"test": given_ids["test"],
                         **{s: [given_ids["train"][i] for i in parts[s]]
                            for s in ("train", "public")}}
        logger.info("%s: no val/ folder; %d of %d train images set aside as public", root,
                    len(parts["public"]), len(train_paths))
        for split in ("train", "public"):
            files[split] = [train_paths[i] for i in parts[split]]
            labels[split] = [train_labels[i] for i in parts[split]]
    missing = sorted(set(classes) - {classes[k] for k in labels["test"]})
    if missing:
        logger.warning("%s: test/ has no images of class %s", root, ", ".join(missing))
    ids = None
    if cfg.patients is not None:
        ids = {s: given_ids[s] for s in SPLITS}
        _log_patients(root, ids)
    return _Plan({s: files[s] for s in SPLITS}, {s: labels[s] for s in SPLITS}, classes, ids,
                 public_is_val=public_is_val)


def _refuse_shared_patients(root: Path, given: Mapping[str, tuple[list[Path], list[int]]],
                            ids: Mapping[str, list[str]]) -> None:
    """Refuse given splits (train/, test/, val/) that share a patient, naming one of them."""
    folder = {"train": "train/", "test": "test/", "public": "val/"}
    splits = list(given)
    for i, first in enumerate(splits):
        for second in splits[i + 1:]:
            shared = sorted(set(ids[first]) & set(ids[second]))
            if not shared:
                continue
            example = shared[0]
            where = [given[s][0][ids[s].index(example)].relative_to(root).as_posix()
                     for s in (first, second)]
            count = "1 patient has" if len(shared) == 1 else f"{len(shared)} patients have"
            raise DataError(f"{root}: {count} images in both "
                            f"{folder[first]} and {folder[second]}, e.g. {_shown(example)} "
                            f"({where[0]}, {where[1]}); the given split leaks patients "
                            "(data.patients)")


def _log_patients(root: Path, ids: Mapping[str, list[str]]) -> None:
    logger.info("%s: split by patient: %s", root, ", ".join(
        f"{s} {len(set(ids[s]))} patients ({len(ids[s])} images)" for s in SPLITS))


def _patients_digest(relative: Mapping[str, list[str]], patients: Mapping[str, list[str]]
                     ) -> str:
    """Hash of every planned image's split, relative path and patient id."""
    digest = hashlib.sha256()
    for split in SPLITS:
        for path, patient in zip(relative[split], patients[split]):
            digest.update(f"{split}\0{path}\0{patient}\n".encode())
    return digest.hexdigest()


def _fingerprint(root: Path, files: dict[str, list[Path]]) -> str:
    """Hash of every planned file's split, relative path, size and modification time."""
    digest = hashlib.sha256()
    for split in SPLITS:
        for path in files[split]:
            stat = path.stat()
            digest.update(f"{split}\0{path.relative_to(root)}\0{stat.st_size}\0"
                          f"{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()
