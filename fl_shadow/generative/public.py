"""The experiment's generator pretrained on its public split, from the cache.

Apart from :mod:`~fl_shadow.generative.pretrain` because it loads the dataset: the attacks
and defenses import the generator's networks, never the data loaders (the attacker must not
import ground truth), while the builder that hands the generator to them imports this module.
"""

from __future__ import annotations

import fcntl
import functools

import torch

from fl_shadow.config import ExperimentConfig
from fl_shadow.data import cache_dir, load_dataset
from fl_shadow.generative.pretrain import (
    GeneratorCheckpoint,
    checkpoint_path,
    load_checkpoint,
    train_and_save,
)


def pretrained_generator(config: ExperimentConfig, *, device: torch.device | str = "cpu",
                         progress: bool = True) -> GeneratorCheckpoint:
    """The experiment's pretrained generator: loaded from the cache, trained there if missing."""
    splits = load_dataset(config.data, seed=config.seed)
    public = splits.public.images
    path = checkpoint_path(cache_dir(config.data), config.data.dataset, config.generator,
                           public)
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path.with_suffix(".lock"), "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # others wait here, then find the file
            if not path.exists():
                train_and_save(path, config.data.dataset, public, config.generator,
                                device=device, progress=progress)
    return _load_cached(str(path), path.stat().st_mtime_ns)


@functools.lru_cache(maxsize=2)
def _load_cached(path: str, mtime_ns: int) -> GeneratorCheckpoint:
    return load_checkpoint(path)


__all__ = ["pretrained_generator"]
