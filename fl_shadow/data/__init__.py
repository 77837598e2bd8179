"""Datasets, registered by name (``data.dataset``), and the client partitioners.

All loaders return a :class:`DatasetSplits` with float images in [0, 1] at
``data.image_size`` px and ``data.channels`` channels, a held-out test split, and a public split
disjoint from both (priors for generative attacks and the shadow generator).
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from pathlib import Path

import torch

from fl_shadow.config import DataConfig
from fl_shadow.data import imagefolder, medmnist, mni152
from fl_shadow.data.base import DatasetSplits, ImageSet, denormalize, normalize
from fl_shadow.data.partition import client_dataset, partition_indices
from fl_shadow.data.transforms import per_channel_stats, resize, to_channels
from fl_shadow.errors import DataError
from fl_shadow.registry import Registry

Loader = Callable[[DataConfig, int], DatasetSplits]
DATASETS: Registry[Loader] = Registry("dataset", config_key="data.dataset")


def cache_dir(cfg: DataConfig | None = None) -> Path:
    """``data.cache_dir``, else ``$FL_SHADOW_CACHE``, else ``~/.cache/fl_shadow``."""
    if cfg is not None and cfg.cache_dir:
        return Path(cfg.cache_dir).expanduser()
    return Path(os.environ.get("FL_SHADOW_CACHE", "~/.cache/fl_shadow")).expanduser()


def _finish(name: str, cfg: DataConfig, parts: dict[str, tuple[torch.Tensor, torch.Tensor]],
            class_names: tuple[str, ...]) -> DatasetSplits:
    sets = {}
    for split, (images, labels) in parts.items():
        images = resize(to_channels(images, cfg.channels), cfg.image_size)
        sets[split] = ImageSet(images.contiguous(), labels)
    mean, std = per_channel_stats(sets["train"].images)
    return DatasetSplits(name=name, train=sets["train"], test=sets["test"],
                         public=sets["public"], class_names=class_names, mean=mean, std=std)


@DATASETS.register("mni152")
def load_mni152(cfg: DataConfig, seed: int) -> DatasetSplits:
    arrays = mni152.load_arrays(cfg.image_size, cache_dir(cfg))
    parts = {}
    for split in ("train", "test", "public"):
        images = torch.from_numpy(arrays[f"{split}_images"]).float().div(255)[:, None]
        parts[split] = (images, torch.from_numpy(arrays[f"{split}_labels"]).long())
    return _finish("mni152", cfg, parts, mni152.CLASS_NAMES)


@DATASETS.register("medmnist")
def load_medmnist(cfg: DataConfig, seed: int) -> DatasetSplits:
    if cfg.path:
        path = Path(cfg.path).expanduser()
        flag = medmnist.flag_from_filename(path)
    else:
        flag = cfg.medmnist_flag
        path = medmnist.download(flag, cfg.image_size, cache_dir(cfg) / "medmnist")
    arrays = medmnist.read_npz(path)
    parts = {split: medmnist.to_tensors(arrays[f"{src}_images"], arrays[f"{src}_labels"])
             for split, src in (("train", "train"), ("test", "test"), ("public", "val"))}
    num_classes = int(max(int(p[1].max()) for p in parts.values() if len(p[1])) + 1)
    return _finish("medmnist", cfg, parts, medmnist.class_names(flag, num_classes))


@DATASETS.register("imagefolder")
def load_imagefolder(cfg: DataConfig, seed: int) -> DatasetSplits:
    if not cfg.path:
        raise DataError("data.path: the imagefolder dataset needs a folder")
    root = Path(cfg.path).expanduser()
    if not root.is_dir():
        raise DataError(f"{root}: image folder not found (data.path)")
    if (root / "train").is_dir() and (root / "test").is_dir():
        classes = imagefolder.list_classes(root / "train")
        parts = {split: imagefolder.read_folder(root / folder, classes, channels=cfg.channels,
                                                image_size=cfg.image_size)
                 for split, folder in (("train", "train"), ("test", "test"))}
        if (root / "val").is_dir():
            parts["public"] = imagefolder.read_folder(root / "val", classes,
                                                      channels=cfg.channels,
                                                      image_size=cfg.image_size)
        else:
            empty = torch.empty(0, cfg.channels, cfg.image_size, cfg.image_size)
            parts["public"] = (empty, torch.empty(0, dtype=torch.long))
    else:
        classes = imagefolder.list_classes(root)
        images, labels = imagefolder.read_folder(root, classes, channels=cfg.channels,
                                                 image_size=cfg.image_size)
        split = imagefolder.stratified_split(labels, {"test": cfg.test_fraction, "public": 0.1},
                                             seed=0)
        parts = {name: (images[idx], labels[idx]) for name, idx in split.items()}
    return _finish("imagefolder", cfg, parts, tuple(classes))


@functools.lru_cache(maxsize=2)
def _load_cached(cfg: DataConfig, seed: int) -> DatasetSplits:
    return DATASETS.get(cfg.dataset)(cfg, seed)


def load_dataset(cfg: DataConfig, *, seed: int) -> DatasetSplits:
    """Load (and cache in this process) the dataset named by ``cfg.dataset``."""
    return _load_cached(cfg, seed)


__all__ = ["DATASETS", "DatasetSplits", "ImageSet", "cache_dir", "client_dataset",
           "denormalize", "load_dataset", "normalize", "partition_indices"]
