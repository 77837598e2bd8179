"""Datasets, registered by name (``data.dataset``), and the client partitioners.

Every loader returns a :class:`DatasetSplits`: float32 images in [0, 1] of shape
``(N, data.channels, data.image_size, data.image_size)``, int64 labels, a held-out ``test``
split, a ``public`` split disjoint from both (what generative attacks and the shadow generator
may train on), human-readable class names, and per-channel ``mean``/``std`` of the train split.

Registered datasets:

- ``mni152`` (default, offline): brain-MRI slices of the MNI152 template that ships in nilearn,
  six plane-by-level classes (:mod:`fl_shadow.data.mni152`).
- ``ct_head``: slices of a real patient's head CT from Debian's ``invesalius-examples``
  package, the same six classes (:mod:`fl_shadow.data.ct_head`; ``make install`` fetches it).
- ``medmnist``: a MedMNIST ``.npz`` (:mod:`fl_shadow.data.medmnist`).
- ``imagefolder``: class-per-folder images (:mod:`fl_shadow.data.imagefolder`).

A new dataset is a module with a function ``load(cfg: DataConfig, *, seed: int) ->
DatasetSplits`` and one line here: ``DATASETS.add(DatasetSpec("name", load, path=...))``.

Example:
    >>> from fl_shadow.config import DataConfig, PartitionConfig
    >>> splits = load_dataset(DataConfig(), seed=0)                       # doctest: +SKIP
    >>> idx, local = client_dataset(splits, PartitionConfig(), 0, seed=0)  # doctest: +SKIP
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from fl_shadow.config import DataConfig
from fl_shadow.errors import ConfigError
from fl_shadow.data import ct_head, imagefolder, medmnist, mni152
from fl_shadow.data.base import DatasetSplits, ImageSet, denormalize, normalize
from fl_shadow.data.cache import cache_root
from fl_shadow.data.partition import (client_dataset, dirichlet_partition, iid_partition,
                                      partition_indices, sizes_partition)
from fl_shadow.registry import Registry

__all__ = ["DATASETS", "DatasetLoader", "DatasetSpec", "DatasetSplits", "ImageSet", "MemoryNeed",
           "cache_dir",
           "client_dataset", "denormalize", "dirichlet_partition", "iid_partition",
           "load_dataset", "normalize", "partition_indices", "sizes_partition"]

DatasetLoader = Callable[..., DatasetSplits]
"""``loader(cfg: DataConfig, *, seed: int) -> DatasetSplits``."""



@dataclass(frozen=True)
class MemoryNeed:
    """What a dataset holds in memory once loaded (estimated before it is).

    Attributes:
        images: images of all splits.
        channels, image_size: each image's ``channels x image_size x image_size``.
        source_bytes: what the loader holds besides the float images (its uint8 arrays, a
            file's arrays before resizing).
    """

    images: int
    channels: int
    image_size: int
    source_bytes: int = 0

    @property
    def bytes(self) -> int:
        """``images x channels x image_size**2 x 4`` (float32) plus :attr:`source_bytes`."""
        return self.images * self.channels * self.image_size ** 2 * 4 + self.source_bytes

    def describe(self) -> str:
        return (f"{self.images:,} images of {self.channels} x {self.image_size} x "
                f"{self.image_size} float32")


@dataclass(frozen=True)
class DatasetSpec:
    """A registered dataset.

    Attributes:
        name: the ``data.dataset`` that selects it.
        loader: ``loader(cfg, *, seed) -> DatasetSplits``.
        path: what ``data.path`` must be: ``none`` (the dataset reads no path), ``file`` or
            ``folder``.
        path_required: ``data.path`` must be set (a ``file`` dataset may download instead).
        suffixes: accepted file suffixes of a ``file`` path.
        memory: ``memory(cfg) -> MemoryNeed`` without loading anything (None: unknown, e.g.
            a file still to download), checked against the machine at load.
        options: the optional ``data`` keys (those that default to None) this dataset reads;
            setting another one is refused at load rather than silently ignored (a
            ``data.patients`` table given to ``mni152`` would otherwise split nothing by patient
            and say nothing).
    """

    name: str
    loader: DatasetLoader
    path: Literal["none", "file", "folder"] = "none"
    path_required: bool = False
    suffixes: tuple[str, ...] = ()
    memory: Callable[[DataConfig], MemoryNeed | None] | None = None
    options: frozenset[str] = frozenset()

    def check_options(self, cfg: DataConfig) -> None:
        """Refuse an optional ``data`` key this dataset does not read (at load)."""
        for key in OPTIONAL_DATA_KEYS - self.options:
            if getattr(cfg, key) is not None:
                reads = ", ".join(f"data.{k}" for k in sorted(self.options)) or "none"
                raise ConfigError(f"data.{key}: the {self.name} dataset does not read it; remove "
                                  f"it (optional data keys it reads: {reads})")

    def check_path(self, path: str | None) -> None:
        """Refuse a ``data.path`` of the wrong kind, before anything loads (at load)."""
        if path is None:
            if self.path_required:
                raise ConfigError(f"data.path: the {self.name} dataset needs a {self.path} "
                                  "(data.path is not set)")
            return
        if self.path == "none":
            raise ConfigError(f"data.path: the {self.name} dataset reads no path; remove it "
                              f"(got {path!r})")
        where = Path(path).expanduser()
        if not where.exists():
            raise ConfigError(f"data.path: {where} does not exist")
        if self.path == "folder" and not where.is_dir():
            raise ConfigError(f"data.path: {where} is a file; the {self.name} dataset needs a "
                              "folder")
        if self.path == "file":
            if not where.is_file():
                raise ConfigError(f"data.path: {where} is a folder; the {self.name} dataset "
                                  f"needs a {'/'.join(self.suffixes) or ''} file")
            if self.suffixes and where.suffix.lower() not in self.suffixes:
                raise ConfigError(f"data.path: {where} is not a {'/'.join(self.suffixes)} file "
                                  f"(the {self.name} dataset)")


OPTIONAL_DATA_KEYS = frozenset({"patients", "public_fraction"})
"""The ``data`` keys that default to None and that only some datasets read."""


def _mni152_memory(cfg: DataConfig) -> MemoryNeed:
    n = mni152.image_count(cfg)
    return MemoryNeed(n, cfg.channels, cfg.image_size, source_bytes=n * cfg.image_size ** 2)


def _ct_head_memory(cfg: DataConfig) -> MemoryNeed | None:
    n = ct_head.image_count(cfg)
    if n is None:
        return None  # the source is missing: loading says so in one line
    return MemoryNeed(n, cfg.channels, cfg.image_size, source_bytes=n * cfg.image_size ** 2)


def _medmnist_memory(cfg: DataConfig) -> MemoryNeed | None:
    if not cfg.path:
        return None  # downloaded at load (online), size unknown before
    path = Path(cfg.path).expanduser()
    return MemoryNeed(medmnist.image_count(path), cfg.channels, cfg.image_size,
                      source_bytes=medmnist.source_bytes(path))


def _imagefolder_memory(cfg: DataConfig) -> MemoryNeed:
    n = imagefolder.image_count(cfg)
    return MemoryNeed(n, cfg.channels, cfg.image_size,
                      source_bytes=n * cfg.channels * cfg.image_size ** 2)


DATASETS: Registry[DatasetSpec] = Registry("dataset", config_key="data.dataset")
DATASETS.add(DatasetSpec("mni152", mni152.load, memory=_mni152_memory,
                         options=frozenset({"public_fraction"})))
DATASETS.add(DatasetSpec("ct_head", ct_head.load, path="file", suffixes=(".deb", ".inv3"),
                         memory=_ct_head_memory, options=frozenset({"public_fraction"})))
# MedMNIST's own val split is the public split: neither key applies
DATASETS.add(DatasetSpec("medmnist", medmnist.load, path="file", suffixes=(".npz",),
                         memory=_medmnist_memory))
DATASETS.add(DatasetSpec("imagefolder", imagefolder.load, path="folder", path_required=True,
                         memory=_imagefolder_memory,
                         options=frozenset({"patients", "public_fraction"})))


def load_dataset(cfg: DataConfig, *, seed: int) -> DatasetSplits:
    """Load the dataset named by ``cfg.dataset``.

    Built datasets are cached on disk (see :func:`cache_dir`) and, within one process, the last
    few results are kept in memory: repeated calls return the same object, so treat its tensors
    as read-only.

    Args:
        cfg: the data section of the experiment config.
        seed: experiment seed, passed to the loader (the built-in datasets do not depend on it:
            their splits and augmentations are fixed, so seeds vary only partitions and training).

    Returns:
        Train, test and public splits; see the module docstring.

    Raises:
        ConfigError: unknown dataset name or invalid data settings.
        DataError: a missing, unreadable or malformed data file, naming it.
    """
    return _load_cached(cfg, seed)


def cache_dir(cfg: DataConfig | None = None) -> Path:
    """``data.cache_dir``, else ``$FL_SHADOW_CACHE``, else ``~/.cache/fl_shadow``."""
    return cache_root(cfg.cache_dir if cfg is not None else None)


@functools.lru_cache(maxsize=4)
def _load_cached(cfg: DataConfig, seed: int) -> DatasetSplits:
    return DATASETS.get(cfg.dataset).loader(cfg, seed=seed)
