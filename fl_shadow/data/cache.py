"""On-disk cache for built datasets: one ``.npz`` per content key, written atomically.

The cache folder is, in order of precedence, ``data.cache_dir``, ``$FL_SHADOW_CACHE``, or
``~/.cache/fl_shadow``. Datasets live in its ``datasets/`` subfolder, named
``<dataset>-<hash>.npz`` where the hash covers every parameter that changes the content. Several
client processes may build the same dataset at once: each writes to a temporary file and renames
it into place, so readers never see a half-written file. A cache that cannot be written (read-only
home) only costs a rebuild next time; a cache file that cannot be read is rebuilt.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["cache_root", "cache_key", "dataset_cache_path", "load_arrays", "save_arrays"]

CACHE_ENV = "FL_SHADOW_CACHE"

logger = logging.getLogger(__name__)


def cache_root(cache_dir: str | None) -> Path:
    """The cache folder: ``cache_dir``, else ``$FL_SHADOW_CACHE``, else ``~/.cache/fl_shadow``."""
    if cache_dir:
        return Path(cache_dir).expanduser()
    env = os.environ.get(CACHE_ENV)
    if env:
        return Path(env).expanduser()
    return Path.home() / ".cache" / "fl_shadow"


def cache_key(params: Mapping[str, Any]) -> str:
    """A short stable hash of JSON-serializable ``params`` (key order does not matter)."""
    text = json.dumps(dict(params), sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def dataset_cache_path(cache_dir: str | None, dataset: str, params: Mapping[str, Any]) -> Path:
    """Where the dataset built from ``params`` is cached."""
    return cache_root(cache_dir) / "datasets" / f"{dataset}-{cache_key(params)}.npz"


def load_arrays(path: Path) -> dict[str, np.ndarray] | None:
    """Read a cached ``.npz`` fully into memory; ``None`` if absent or unreadable."""
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as npz:
            return {name: npz[name] for name in npz.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        logger.warning("ignoring unreadable cache file %s (%s); rebuilding", path, exc)
        return None


def save_arrays(path: Path, arrays: Mapping[str, np.ndarray]) -> bool:
    """Write ``arrays`` to ``path`` atomically; returns False (and logs) if it cannot."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
        try:
            with os.fdopen(fd, "wb") as handle:
                np.savez(handle, **arrays)
            os.chmod(tmp, 0o644)  # mkstemp creates 0600; the cache may be shared
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
    except OSError as exc:
        logger.warning("could not write dataset cache %s (%s); continuing without it", path, exc)
        return False
    return True
