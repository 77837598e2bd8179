"""Datasets, registered by name (``data.dataset``), and the client partitioners.

Every loader returns a :class:`DatasetSplits`: float32 images in [0, 1] of shape
``(N, data.channels, data.image_size, data.image_size)``, int64 labels, a held-out ``test``
split, a ``public`` split disjoint from both (what generative attacks and the shadow generator
may train on), human-readable class names, and per-channel ``mean``/``std`` of the train split.

Registered datasets:

- ``mni152`` (default, offline): brain-MRI slices of the MNI152 template that ships in nilearn,
  six plane-by-level classes (:mod:`fl_shadow.data.mni152`).
- ``medmnist``: a MedMNIST ``.npz`` (:mod:`fl_shadow.data.medmnist`).
- ``imagefolder``: class-per-folder images (:mod:`fl_shadow.data.imagefolder`).

A new dataset is a function ``load(cfg: DataConfig, *, seed: int) -> DatasetSplits`` added with
``DATASETS.register("name")(load)``.

Example:
    >>> from fl_shadow.config import DataConfig, PartitionConfig
    >>> splits = load_dataset(DataConfig(), seed=0)                       # doctest: +SKIP
    >>> idx, local = client_dataset(splits, PartitionConfig(), 0, seed=0)  # doctest: +SKIP
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path

from fl_shadow.config import DataConfig
from fl_shadow.data import imagefolder, medmnist, mni152
from fl_shadow.data.base import DatasetSplits, ImageSet, denormalize, normalize
from fl_shadow.data.cache import cache_root
from fl_shadow.data.partition import (client_dataset, dirichlet_partition, iid_partition,
                                      partition_indices, sizes_partition)
from fl_shadow.registry import Registry

__all__ = ["DATASETS", "DatasetLoader", "DatasetSplits", "ImageSet", "cache_dir",
           "client_dataset", "denormalize", "dirichlet_partition", "iid_partition",
           "load_dataset", "normalize", "partition_indices", "sizes_partition"]

DatasetLoader = Callable[..., DatasetSplits]
"""``loader(cfg: DataConfig, *, seed: int) -> DatasetSplits``."""

DATASETS: Registry[DatasetLoader] = Registry("dataset", config_key="data.dataset")
DATASETS.register("mni152")(mni152.load)
DATASETS.register("medmnist")(medmnist.load)
DATASETS.register("imagefolder")(imagefolder.load)


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
    cfg.validate("data")
    return _load_cached(cfg, seed)


def cache_dir(cfg: DataConfig | None = None) -> Path:
    """``data.cache_dir``, else ``$FL_SHADOW_CACHE``, else ``~/.cache/fl_shadow``."""
    return cache_root(cfg.cache_dir if cfg is not None else None)


@functools.lru_cache(maxsize=4)
def _load_cached(cfg: DataConfig, seed: int) -> DatasetSplits:
    return DATASETS.get(cfg.dataset)(cfg, seed=seed)
