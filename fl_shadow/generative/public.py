"""The experiment's generator pretrained on its public split, from the cache.

Apart from :mod:`~fl_shadow.generative.pretrain` because it loads the dataset: the attacks
and defenses import the generator's networks, never the data loaders (the attacker must not
import ground truth), while the builder that hands the generator to them imports this module.
"""

from __future__ import annotations

import fcntl
import functools
import hashlib
import json
import os
from pathlib import Path

import torch

from fl_shadow.config import ExperimentConfig
from fl_shadow.data import DatasetSplits, cache_dir, load_dataset
from fl_shadow.generative.quality import GeneratorQuality, generator_quality
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


def cached_generator_quality(config: ExperimentConfig, splits: DatasetSplits
                             ) -> GeneratorQuality | None:
    """:func:`~fl_shadow.generative.quality.generator_quality` of the experiment's cached
    generator against the test split (None: no checkpoint cached yet, or no test images).

    Measured once per checkpoint and held-out set (seconds) and kept beside the checkpoint;
    a damaged file is measured again.
    """
    public, held_out = splits.public.images, splits.test.images
    path = checkpoint_path(cache_dir(config.data), config.data.dataset, config.generator,
                           public)
    if not path.exists() or len(held_out) == 0 or len(public) == 0:
        return None
    digest = hashlib.sha256(held_out[:32].contiguous().numpy().tobytes()).hexdigest()[:12]
    file = path.with_name(f"{path.stem}.quality-{digest}.json")
    try:
        return GeneratorQuality(**json.loads(file.read_text())["quality"])
    except (OSError, ValueError, KeyError, TypeError):
        pass
    quality = generator_quality(_load_cached(str(path), path.stat().st_mtime_ns).generator,
                                public, held_out)
    tmp = Path(f"{file}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps({"checkpoint": path.name, "quality": {
        k: v for k, v in quality.to_json().items() if k not in ("fit_gap_db",
                                                                 "memorisation_db")}}))
    tmp.replace(file)
    return quality


__all__ = ["cached_generator_quality", "pretrained_generator"]
