"""A second real modality: labelled 2D slices of a real head CT from Debian's package registry.

Source: ``Cranium.inv3`` of the Debian package ``invesalius-examples`` 3.1.99998-4
(bookworm, section graphics, 18.7 MB; licence GPL-2, ``Files: *`` of the package's
``copyright``; upstream InVesalius, CTI Renato Archer, Brazil). The file is an InVesalius 3
project: a gzip'd tar holding ``main.plist`` (metadata) and ``matrix.dat``, the raw int16
Hounsfield units of one patient's non-contrast head CT ("ProMED CT 0051"), 108 axial slices of
256 x 256, 0.957 x 0.957 x 1.5 mm, from the skull base (orbits, sinuses) to the vertex.

Where it is found, in order: ``data.path`` (the ``.deb`` itself, or any InVesalius 3 project
``.inv3``: another patient's CT works the same way); the installed package
(``apt-get install invesalius-examples``); the ``.deb`` in ``<cache>/sources/`` (what
``make install`` fetches with ``apt-get download``: nothing downloads at run time). The
``.deb`` is read directly (``ar`` archive, then ``data.tar.xz``); nothing is unpacked. The
default source is checked against its SHA-256 (:data:`CRANIUM_SHA256`).

Construction (deterministic; the shared slice recipe of :mod:`fl_shadow.data.volume_slices`):

1. **Intensities**: Hounsfield units windowed to [-100, 200] HU -> [0, 1] (soft tissue and
   brain grey-white contrast visible, bone white, air and fat black). **Head mask**: HU > -300,
   then a 5 x 5 opening per axial slice that removes the thin arcs of the CT head rest; every
   pixel more than 2 px outside the mask is set to 0 (head rest and table blanked).
2. **Isotropic voxels**: linear resampling along z to the in-plane spacing (1.5 -> 0.957 mm,
   108 -> 169 slices); the mask by the same interpolation, > 0.5.
3. **Slices, classes, splits, images** as in :mod:`~fl_shadow.data.volume_slices`, with
   sagittal slices from both hemispheres (a real head is not symmetric; the level is the
   distance from the head's centre along x) and **3 guard slices** at split boundaries:
   resampled neighbours share original slices, and with 4 resampled voxels (3.8 mm, 2.5
   original spacings) between slices of different splits no two of them interpolate a common
   original slice. ``data.test_fraction`` and ``data.public_fraction`` (default 0.15) as for
   ``mni152``.

This is **one patient**: the splits are disjoint by source slice, not by patient (no public
multi-patient CT ships in a package registry); the public split is this patient's other slices.
Read the results as "slices of one head", the same as the MNI152 template (an average of 152
heads, itself one image).

The built arrays are cached in ``<cache>/datasets/ct_head-<hash>.npz``, keyed by the
construction version, image size, fractions and the source file (path, size, modification
time).
"""

from __future__ import annotations

import functools
import hashlib
import io
import logging
import math
import plistlib
import tarfile
import time
from pathlib import Path

import numpy as np

from fl_shadow.config import DataConfig
from fl_shadow.data import volume_slices
from fl_shadow.data.base import DatasetSplits
from fl_shadow.data.cache import cache_root, dataset_cache_path, npz_shapes, save_arrays
from fl_shadow.data.cache import load_arrays as load_cached
from fl_shadow.data.splits import SPLITS, assemble_splits, check_cached_splits
from fl_shadow.data.volume_slices import CLASS_NAMES
from fl_shadow.errors import DataError

__all__ = ["CLASS_NAMES", "CRANIUM_SHA256", "DEB_NAME", "DEB_SHA256", "HU_WINDOW",
           "build_arrays", "find_source", "image_count", "load", "load_arrays", "read_deb_member",
           "read_inv3", "source_volume"]

logger = logging.getLogger(__name__)

PACKAGE = "invesalius-examples"
DEB_NAME = "invesalius-examples_3.1.99998-4_all.deb"
DEB_SHA256 = "f2f14bdfef6dc3812eafc5013d133c6c18370aaab5666b78d54af2e7db432f97"
CRANIUM_MEMBER = "usr/share/doc/invesalius-examples/examples/Cranium.inv3"
CRANIUM_SHA256 = "3b34f11f7c4f557f4c65cd6543c412a2f6ceb0cfecfd9c41184420e02d9b7e2a"
INSTALLED_PATH = Path("/") / CRANIUM_MEMBER
VERSION = 1
CONSTRUCTION_SEED = 51
HU_WINDOW = (-100.0, 200.0)
HEAD_HU = -300.0
HEAD_OPENING_PX = 2
BLANK_MARGIN_PX = 2
GUARD_SLICES = 3
MAX_VOXELS = 1024 ** 3
"""Larger than any CT series (a 1024^3 volume of int16 is 2 GiB): a header claiming more is
refused before it is read."""
MAX_MEMBER_BYTES = 2 * 2 ** 30
MAX_IMAGES = 200_000
INSTALL_HINT = (f"install it with `make install` (apt-get download {PACKAGE} into "
                f"<cache>/sources/) or `apt-get install {PACKAGE}`, or give data.path")


def load(cfg: DataConfig, *, seed: int) -> DatasetSplits:
    """The ``ct_head`` dataset (registered loader; ``seed`` does not change the images).

    Returns:
        Splits with images ``(N, cfg.channels, cfg.image_size, cfg.image_size)`` in [0, 1] and
        the six classes of :data:`CLASS_NAMES`.
    """
    del seed  # the construction seed is fixed; see the module docstring
    arrays = load_arrays(cfg)
    parts = {split: (arrays[f"{split}_images"][:, None], arrays[f"{split}_labels"])
             for split in SPLITS}
    return assemble_splits("ct_head", parts, CLASS_NAMES, channels=cfg.channels)


def load_arrays(cfg: DataConfig) -> dict[str, np.ndarray]:
    """The built arrays, from the cache or built (and cached) now; the same keys as
    :func:`fl_shadow.data.mni152.load_arrays`."""
    source = find_source(cfg)
    cache = _cache_path(cfg, source)
    size = cfg.image_size
    arrays = load_cached(cache, max_bytes=MAX_IMAGES * (size * size + 4 * 8) + 65536,
                         check=lambda a: check_cached_splits(
                             a, image_shape=(size, size), num_classes=len(CLASS_NAMES),
                             ids="sources", extra=("variants",)))
    if arrays is not None:
        logger.debug("ct_head: loaded %s", cache)
        return arrays
    start = time.perf_counter()
    arrays = build_arrays(source, image_size=size, test_fraction=cfg.test_fraction,
                          public_fraction=_public_fraction(cfg))
    logger.info("ct_head: built %s images at %d px in %.1f s -> %s",
                "/".join(str(len(arrays[f"{s}_labels"])) for s in SPLITS), size,
                time.perf_counter() - start, cache)
    save_arrays(cache, arrays)
    return arrays


def build_arrays(source: Path, *, image_size: int, test_fraction: float,
                 public_fraction: float = volume_slices.DEFAULT_PUBLIC_FRACTION
                 ) -> dict[str, np.ndarray]:
    """Build the dataset from ``source`` (a ``.deb`` or ``.inv3``); no caching."""
    plan = _plan(source, test_fraction, public_fraction)
    return volume_slices.build_arrays(plan, image_size=image_size,
                                      construction_seed=CONSTRUCTION_SEED, dataset="ct_head")


def image_count(cfg: DataConfig) -> int | None:
    """How many images (all splits) the dataset of ``cfg`` holds, without building it (None:
    the source is not there; loading says so)."""
    try:
        source = find_source(cfg)
    except DataError:
        return None
    shapes = npz_shapes(_cache_path(cfg, source))
    if shapes is not None and all(f"{s}_labels" in shapes for s in SPLITS):
        count = sum(int(np.prod(shapes[f"{s}_labels"][0])) for s in SPLITS)
        if count <= MAX_IMAGES:
            return count
    return _planned_count(source, round(cfg.test_fraction, 6), _public_fraction(cfg))


def find_source(cfg: DataConfig) -> Path:
    """The CT's file: ``data.path``, the installed package, or the ``.deb`` in the cache.

    Raises:
        DataError: none of them exists (with how to install it).
    """
    if cfg.path:
        path = Path(cfg.path).expanduser()
        if not path.is_file():
            raise DataError(f"{path}: no such file (data.path of the ct_head dataset: "
                            f"{DEB_NAME} or an InVesalius 3 project .inv3)")
        return path
    cached = cache_root(cfg.cache_dir) / "sources" / DEB_NAME
    for candidate in (INSTALLED_PATH, cached):
        if candidate.is_file():
            return candidate
    raise DataError(f"ct_head: the head CT ({PACKAGE}) is not on this machine; "
                    + INSTALL_HINT)


def source_volume(source: Path) -> tuple[np.ndarray, tuple[float, float, float], dict]:
    """The CT of ``source`` as int16 Hounsfield units ``(z, y, x)``, its voxel spacing
    ``(x, y, z)`` in mm and its metadata (``main.plist``).

    A ``.deb`` is checked against :data:`DEB_SHA256` and its ``Cranium.inv3`` against
    :data:`CRANIUM_SHA256`; an ``.inv3`` given directly is read as it is.

    Raises:
        DataError: the file is not what it claims (one line naming it).
    """
    if source.suffix == ".deb":
        data = source.read_bytes()
        digest = hashlib.sha256(data).hexdigest()
        if source.name == DEB_NAME and digest != DEB_SHA256:
            raise DataError(f"{source}: SHA-256 {digest[:12]}... is not that of {DEB_NAME} "
                            f"({DEB_SHA256[:12]}...): a damaged download; delete it and "
                            "reinstall")
        project = read_deb_member(source, data, CRANIUM_MEMBER)
        digest = hashlib.sha256(project).hexdigest()
        if digest != CRANIUM_SHA256:
            raise DataError(f"{source}: its Cranium.inv3 has SHA-256 {digest[:12]}..., not "
                            f"{CRANIUM_SHA256[:12]}... ({DEB_NAME})")
    else:
        project = source.read_bytes()
    return read_inv3(project, where=str(source))


def read_deb_member(source: Path, data: bytes, member: str) -> bytes:
    """The bytes of ``member`` (a path inside the package) of a Debian package's contents.

    A ``.deb`` is an ``ar`` archive of ``debian-binary``, ``control.tar.*`` and
    ``data.tar.{xz,gz,bz2}``; the member is read from the last, in memory.
    """
    if not data.startswith(b"!<arch>\n"):
        raise DataError(f"{source}: not a Debian package (no ar header)")
    offset = 8
    while offset + 60 <= len(data):
        header = data[offset:offset + 60]
        name = header[:16].decode("ascii", "replace").strip().rstrip("/")
        try:
            size = int(header[48:58].decode("ascii").strip())
        except ValueError:
            raise DataError(f"{source}: damaged ar member header at byte {offset}") from None
        body = data[offset + 60:offset + 60 + size]
        offset += 60 + size + (size % 2)  # members are padded to an even length
        if not name.startswith("data.tar"):
            continue
        try:
            with tarfile.open(fileobj=io.BytesIO(body), mode="r:*") as tar:
                for info in tar:
                    if info.isfile() and info.name.lstrip("./") == member:
                        if info.size > MAX_MEMBER_BYTES:
                            break
                        return tar.extractfile(info).read()
        except (tarfile.TarError, EOFError, OSError) as exc:
            raise DataError(f"{source}: unreadable {name} ({type(exc).__name__})") from None
        raise DataError(f"{source}: the package holds no {member}")
    raise DataError(f"{source}: no data.tar member (a truncated package?)")


def read_inv3(project: bytes, *, where: str) -> tuple[np.ndarray, tuple[float, float, float],
                                                      dict]:
    """Read an InVesalius 3 project (gzip'd tar of ``main.plist`` and the raw matrix).

    Returns:
        The volume ``(z, y, x)`` in its stored dtype, spacing ``(x, y, z)`` mm, the metadata.
    """
    try:
        with tarfile.open(fileobj=io.BytesIO(project), mode="r:gz") as tar:
            members = {Path(m.name).name: m for m in tar.getmembers() if m.isfile()}
            if "main.plist" not in members:
                raise DataError(f"{where}: not an InVesalius 3 project (no main.plist)")
            meta = plistlib.loads(tar.extractfile(members["main.plist"]).read())
            matrix = meta["matrix"]
            shape = tuple(int(s) for s in matrix["shape"])
            dtype = np.dtype(matrix["dtype"]).newbyteorder("<")
            spacing = tuple(float(s) for s in meta["spacing"])
            if len(shape) != 3 or min(shape) < 1 or math.prod(shape) > MAX_VOXELS:
                raise DataError(f"{where}: matrix shape {shape} is not a 3D volume of at most "
                                f"{MAX_VOXELS:,} voxels")
            if dtype.kind not in "iuf" or len(spacing) != 3 or min(spacing) <= 0:
                raise DataError(f"{where}: matrix dtype {dtype} or spacing {spacing} unusable")
            info = members.get(str(matrix["filename"]))
            expected = math.prod(shape) * dtype.itemsize
            if info is None or info.size != expected:
                raise DataError(f"{where}: the matrix file {matrix['filename']!r} is missing or "
                                f"not {expected:,} bytes ({shape} {dtype})")
            raw = tar.extractfile(info).read()
    except DataError:
        raise
    except (tarfile.TarError, EOFError, OSError, KeyError, TypeError, ValueError,
            plistlib.InvalidFileException) as exc:
        raise DataError(f"{where}: not a readable InVesalius 3 project "
                        f"({type(exc).__name__})") from None
    volume = np.frombuffer(raw, dtype=dtype).reshape(shape)
    return volume, spacing, meta  # type: ignore[return-value]


def preprocess(hounsfield: np.ndarray, spacing: tuple[float, float, float]
               ) -> tuple[np.ndarray, np.ndarray]:
    """Window, mask and resample (steps 1-2 of the module docstring).

    Args:
        hounsfield: ``(z, y, x)`` Hounsfield units.
        spacing: ``(x, y, z)`` voxel size in mm.

    Returns:
        The volume ``(X, Y, Z)`` float32 in [0, 1] with isotropic voxels of the smallest
        spacing, and its head mask (bool, same shape).
    """
    import cv2

    hu = np.asarray(hounsfield, dtype=np.float32)
    square = np.ones((2 * HEAD_OPENING_PX + 1,) * 2, np.uint8)
    margin = np.ones((2 * BLANK_MARGIN_PX + 1,) * 2, np.uint8)
    head = np.empty(hu.shape, dtype=bool)
    near_head = np.empty(hu.shape, dtype=bool)
    for z in range(hu.shape[0]):  # the head rest is thin in every axial slice
        opened = cv2.morphologyEx((hu[z] > HEAD_HU).astype(np.uint8), cv2.MORPH_OPEN, square)
        head[z] = opened > 0
        near_head[z] = cv2.dilate(opened, margin) > 0
    low, high = HU_WINDOW
    volume = np.clip((hu - low) / (high - low), 0.0, 1.0) * near_head
    volume = np.ascontiguousarray(volume.transpose(2, 1, 0))  # (z, y, x) -> (x, y, z)
    mask = head.transpose(2, 1, 0).astype(np.float32)
    target = min(spacing)
    for axis, step in enumerate(spacing):
        if not math.isclose(step, target, rel_tol=1e-3):
            volume = _resample(volume, axis, step / target)
            mask = _resample(mask, axis, step / target)
    return volume.astype(np.float32), mask > 0.5


# --------------------------------------------------------------------------------------------
# Internals
# --------------------------------------------------------------------------------------------
def _resample(volume: np.ndarray, axis: int, factor: float) -> np.ndarray:
    """Linear resampling of one axis to ``round(n * factor)`` samples, centres aligned."""
    n = volume.shape[axis]
    m = max(1, int(round(n * factor)))
    position = np.clip((np.arange(m) + 0.5) / factor - 0.5, 0, n - 1)
    lower = np.floor(position).astype(int)
    upper = np.minimum(lower + 1, n - 1)
    weight = (position - lower).astype(np.float32)
    shape = [1] * volume.ndim
    shape[axis] = m
    weight = weight.reshape(shape)
    return np.take(volume, lower, axis=axis) * (1 - weight) + \
        np.take(volume, upper, axis=axis) * weight


def _public_fraction(cfg: DataConfig) -> float:
    return round(cfg.public_fraction or volume_slices.DEFAULT_PUBLIC_FRACTION, 6)


def _cache_path(cfg: DataConfig, source: Path) -> Path:
    stat = source.stat()
    params = {"version": VERSION, "image_size": cfg.image_size,
              "test_fraction": round(cfg.test_fraction, 6),
              "public_fraction": _public_fraction(cfg),
              "source": str(source.resolve()), "source_bytes": stat.st_size,
              "source_mtime_ns": stat.st_mtime_ns}
    return dataset_cache_path(cfg.cache_dir, "ct_head", params)


def _plan(source: Path, test_fraction: float, public_fraction: float
          ) -> volume_slices.SlicePlan:
    hounsfield, spacing, _ = source_volume(source)
    volume, head = preprocess(hounsfield, spacing)
    return volume_slices.plan_slices(volume, head, dataset="ct_head", hemispheres="both",
                                     test_fraction=test_fraction,
                                     public_fraction=public_fraction, guard_slices=GUARD_SLICES)


@functools.lru_cache(maxsize=4)
def _planned_count(source: Path, test_fraction: float, public_fraction: float) -> int:
    return volume_slices.planned_count(_plan(source, test_fraction, public_fraction))
