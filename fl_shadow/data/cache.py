"""On-disk cache for built datasets: one ``.npz`` per content key, written atomically.

The cache folder is, in order of precedence, ``data.cache_dir``, ``$FL_SHADOW_CACHE``, or
``~/.cache/fl_shadow``. Datasets live in its ``datasets/`` subfolder, named
``<dataset>-<hash>.npz`` where the hash covers every parameter that changes the content. Several
client processes may build the same dataset at once: each writes to a temporary file and renames
it into place, so readers never see a half-written file. A cache that cannot be written (read-only
home) only costs a rebuild next time.

A cache file is trusted only after checks, and rebuilt when one fails (logged as one line): it
must be a readable ``.npz`` whose headers announce no more than the loader expects
(``max_bytes``, checked before any array is read), whose content matches the SHA-256 written
with it (:data:`CHECKSUM_KEY`; files of earlier versions have none), and which passes the
loader's own ``check`` (shapes, dtypes, label range, disjoint splits; see
:func:`fl_shadow.data.splits.check_cached_splits`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import tempfile
import zipfile
import zlib
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["CHECKSUM_KEY", "cache_key", "cache_root", "content_digest", "dataset_cache_path",
           "load_arrays", "npz_shapes", "save_arrays"]

CHECKSUM_KEY = "_content_sha256"
#: What reading a damaged archive raises (truncated, not a zip, a bad deflate stream, a header
#: numpy cannot parse).
READ_ERRORS = (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile, zlib.error)

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


def npz_shapes(path: Path) -> dict[str, tuple[tuple[int, ...], np.dtype]] | None:
    """Shape and dtype of every array of an ``.npz`` file, from the headers alone (no array is
    read); None if the file is absent or not a readable ``.npz``."""
    if not path.is_file():
        return None
    try:
        with zipfile.ZipFile(path) as archive:
            out: dict[str, tuple[tuple[int, ...], np.dtype]] = {}
            for info in archive.infolist():
                if not info.filename.endswith(".npy"):
                    continue
                with archive.open(info) as handle:
                    version = np.lib.format.read_magic(handle)
                    read = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                            else np.lib.format.read_array_header_2_0)
                    shape, _, dtype = read(handle)
                out[info.filename[:-len(".npy")]] = (tuple(int(n) for n in shape), dtype)
            return out
    except READ_ERRORS:
        return None


def content_digest(arrays: Mapping[str, np.ndarray]) -> str:
    """SHA-256 of the arrays' names, dtypes, shapes and bytes (name order)."""
    digest = hashlib.sha256()
    for name in sorted(k for k in arrays if k != CHECKSUM_KEY):
        array = np.ascontiguousarray(arrays[name])
        digest.update(f"{name}\0{array.dtype.str}\0{array.shape}\0".encode())
        digest.update(array.reshape(-1).view(np.uint8))  # the bytes, not a copy of them
    return digest.hexdigest()


def load_arrays(path: Path, *, check: Callable[[Mapping[str, np.ndarray]], str | None] | None
                = None, max_bytes: int | None = None) -> dict[str, np.ndarray] | None:
    """Read a cached ``.npz`` fully into memory; ``None`` (rebuild it) if absent or not valid.

    Args:
        path: the cache file.
        check: the loader's own check of the arrays; returns what is wrong, or None.
        max_bytes: the most the arrays may hold (from their headers, before any is read).
    """
    if not path.is_file():
        return None
    shapes = npz_shapes(path)
    problem = None
    if shapes is None:
        problem = "not a readable .npz file"
    elif max_bytes is not None:
        total = sum(math.prod(shape) * dtype.itemsize for shape, dtype in shapes.values())
        if total > max_bytes:
            problem = f"its arrays claim {total} bytes, more than the {max_bytes} expected"
    arrays: dict[str, np.ndarray] = {}
    if problem is None:
        try:
            with np.load(path, allow_pickle=False) as npz:
                arrays = {name: npz[name] for name in npz.files}
        except READ_ERRORS + (MemoryError,) as exc:
            problem = f"unreadable ({type(exc).__name__})"
    if problem is None:
        stored = arrays.pop(CHECKSUM_KEY, None)
        if stored is not None and str(stored) != content_digest(arrays):
            problem = "its content does not match the checksum written with it"
        elif check is not None:
            problem = check(arrays)
    if problem is not None:
        logger.warning("dataset cache %s: %s; rebuilding it", path, problem)
        return None
    return arrays


def save_arrays(path: Path, arrays: Mapping[str, np.ndarray]) -> bool:
    """Write ``arrays`` to ``path`` atomically; returns False (and logs) if it cannot."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
        try:
            with os.fdopen(fd, "wb") as handle:
                np.savez(handle, **arrays, **{CHECKSUM_KEY: np.asarray(content_digest(arrays))})
            os.chmod(tmp, 0o644)  # mkstemp creates 0600; the cache may be shared
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
    except OSError as exc:
        logger.warning("could not write dataset cache %s (%s); continuing without it", path, exc)
        return False
    return True
