"""The offline default: labelled 2D brain-MRI slices from the MNI152 T1 template.

Source: ``mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz``, the ICBM 2009a nonlinear
*symmetric* T1 template (skull-stripped, 1 mm isotropic, 197 x 233 x 189 voxels, RAS), which
ships inside nilearn's wheel: the default needs no download. Everything below is deterministic
and independent of the experiment seed (augmentations use a fixed construction seed), so all
runs at one image size see the same images; the experiment seed varies partitions and training.

Construction:

1. **Source slices.** Intensities are scaled to [0, 1]; the brain is the voxels above 0.1. From
   each plane (sagittal = x, coronal = y, axial = z) every slice whose brain cross-section is at
   least 10% of that plane's largest is a source slice. The template is exactly left/right
   symmetric (sagittal slice ``x = +d`` equals ``x = -d``), so sagittal slices come from one
   hemisphere only (the midline and the right hemisphere); mirrored duplicates would otherwise
   straddle splits. About 70 sagittal, 172 coronal and 137 axial source slices result.
2. **Classes** (six, by plane and anatomical level; the level boundary is the median level of
   the plane's source slices, so each plane's two classes are about equally many slices):

   ===  ===================  ==========================================================
   0    sagittal medial      distance from the midsagittal plane < ~35 mm
   1    sagittal lateral     distance from the midsagittal plane >= ~35 mm
   2    coronal posterior    MNI y < ~-16 mm (occipital, parietal, cerebellum)
   3    coronal anterior     MNI y >= ~-16 mm (frontal, temporal poles)
   4    axial inferior       MNI z < ~+8 mm (cerebellum, brainstem, temporal lobes)
   5    axial superior       MNI z >= ~+8 mm (ventricles and above)
   ===  ===================  ==========================================================

   Left versus right is deliberately not a class: the template is symmetric.
3. **Splits, by source slice.** Within each class the slices, in level order, are cut into
   blocks of about 5 consecutive slices; 15% of the blocks go to **public**, ``test_fraction``
   of the rest to **test**, the remainder to **train**, spread evenly over the levels. Where two
   neighbouring blocks belong to different splits, one slice on either side of the boundary is
   dropped, so any two slices of different splits lie at least 3 mm apart (neighbouring 1 mm
   slices are near-duplicates). Splitting happens before augmentation: copies of one slice
   never straddle splits.
4. **Images.** Each plane is cropped to one square field of view around the union of its brain
   masks (so the brain's size in the image still tells its level) and shown anterior or
   superior up. Every source slice yields ``k`` images: the slice itself and ``k - 1`` seeded
   variants (rotation within +-10 degrees, scale 0.92-1.08, shift within +-4% of the side),
   warped at 1 mm, resized to ``image_size`` with antialiasing, then given a seeded intensity
   gamma in 0.8-1.25. ``k`` is per class, the smallest giving every class at least 300 training
   images. At the default ``test_fraction`` 0.2 this gives 1,902 train images (212 source
   slices), 304 test (35) and 312 public (36).

The built arrays (uint8, grayscale) are cached in ``<cache>/datasets/mni152-<hash>.npz``, keyed
by the construction version, image size and test fraction. Each split also carries its
source-slice ids (``plane * 1000 + voxel index along the plane's axis``), see
:func:`load_arrays`.
"""

from __future__ import annotations

import functools
import importlib.util
import logging
import math
import time
import warnings
from pathlib import Path

import numpy as np

from fl_shadow.config import DataConfig
from fl_shadow.data.base import DatasetSplits
from fl_shadow.data.cache import (
    dataset_cache_path,
    npz_shapes,
    save_arrays,
)
from fl_shadow.data.cache import load_arrays as load_cached
from fl_shadow.data.splits import SPLITS, assemble_splits, check_cached_splits
from fl_shadow.data.transforms import quantize, resize_images
from fl_shadow.errors import DataError

__all__ = ["CLASS_NAMES", "PLANES", "TEMPLATE_FILE", "build_arrays", "image_count", "load",
           "load_arrays", "source_plane_and_index", "template_path"]

logger = logging.getLogger(__name__)

TEMPLATE_FILE = "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz"
VERSION = 1
PLANES = ("sagittal", "coronal", "axial")
"""Plane names, indexed by the volume axis normal to the plane (x, y, z)."""
CLASS_NAMES = ("sagittal medial", "sagittal lateral", "coronal posterior", "coronal anterior",
               "axial inferior", "axial superior")
"""Class ``2 * plane + (level >= plane median)``."""

CONSTRUCTION_SEED = 152
PUBLIC_FRACTION = 0.15
BLOCK_SLICES = 5
GUARD_SLICES = 2
TRAIN_IMAGES_PER_CLASS = 300
MIN_AREA_FRACTION = 0.10
BRAIN_THRESHOLD = 0.1
FOV_MARGIN = 1.05
MAX_ROTATION_DEG = 10.0
SCALE_RANGE = (0.92, 1.08)
MAX_SHIFT = 0.04
MAX_GAMMA = 1.25
MAX_IMAGES = 200_000
"""More images than any test fraction gives (~52,000 at 0.99): a cache claiming more is not one."""
_SOURCE_STRIDE = 1000
_CODES = {"train": 0, "test": 1, "public": 2}
_GUARD = -1


def template_path() -> Path:
    """Path of the MNI152 T1 template inside the installed nilearn (nilearn is not imported).

    Raises:
        DataError: nilearn is not installed or its wheel lacks the template.
    """
    spec = importlib.util.find_spec("nilearn")
    if spec is None or not spec.submodule_search_locations:
        raise DataError("data.dataset 'mni152' needs the nilearn package, which ships the MNI152 "
                        "template: pip install nilearn")
    path = Path(next(iter(spec.submodule_search_locations))) / "datasets" / "data" / TEMPLATE_FILE
    if not path.is_file():
        raise DataError(f"{path}: MNI152 template not found in the installed nilearn")
    return path


def load(cfg: DataConfig, *, seed: int) -> DatasetSplits:
    """The ``mni152`` dataset (registered loader; ``seed`` does not change the images).

    Returns:
        Splits with images ``(N, cfg.channels, cfg.image_size, cfg.image_size)`` in [0, 1] and
        the six classes of :data:`CLASS_NAMES`.
    """
    del seed  # the construction seed is fixed; see the module docstring
    arrays = load_arrays(cfg)
    parts = {split: (arrays[f"{split}_images"][:, None], arrays[f"{split}_labels"])
             for split in SPLITS}
    return assemble_splits("mni152", parts, CLASS_NAMES, channels=cfg.channels)


def load_arrays(cfg: DataConfig) -> dict[str, np.ndarray]:
    """The built arrays, from the cache or built (and cached) now.

    Returns:
        For each split ``s`` in train/test/public: ``s_images`` uint8 ``(N, S, S)`` (grayscale,
        ``S = cfg.image_size``), ``s_labels`` int64 ``(N,)``, ``s_sources`` int64 ``(N,)``
        source-slice ids (see :func:`source_plane_and_index`) and ``s_variants`` int64 ``(N,)``
        (0 = the unaugmented slice).
    """
    path = template_path()
    cache = _cache_path(cfg, path)
    size = cfg.image_size
    arrays = load_cached(cache, max_bytes=MAX_IMAGES * (size * size + 4 * 8) + 65536,
                         check=lambda a: check_cached_splits(
                             a, image_shape=(size, size), num_classes=len(CLASS_NAMES),
                             ids="sources", extra=("variants",)))
    if arrays is not None:
        logger.debug("mni152: loaded %s", cache)
        return arrays
    start = time.perf_counter()
    arrays = build_arrays(image_size=cfg.image_size, test_fraction=cfg.test_fraction,
                          template=path)
    logger.info("mni152: built %s images at %d px in %.1f s -> %s",
                "/".join(str(len(arrays[f"{s}_labels"])) for s in SPLITS), cfg.image_size,
                time.perf_counter() - start, cache)
    save_arrays(cache, arrays)
    return arrays


def source_plane_and_index(source_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Split source-slice ids into the plane (index into :data:`PLANES`) and voxel index."""
    ids = np.asarray(source_ids)
    return ids // _SOURCE_STRIDE, ids % _SOURCE_STRIDE


def build_arrays(*, image_size: int, test_fraction: float,
                 template: Path | None = None) -> dict[str, np.ndarray]:
    """Build the dataset from the template (see the module docstring); no caching.

    Args:
        image_size: output side length in pixels.
        test_fraction: share of the non-public source-slice blocks of each class held out.
        template: template file; default :func:`template_path`.

    Returns:
        The arrays described in :func:`load_arrays`.
    """
    slices, sources, labels, codes, copies = _plan(_read_volume(template or template_path()),
                                                   test_fraction)
    arrays: dict[str, np.ndarray] = {}
    for split, code in _CODES.items():
        images, lab, src, var = [], [], [], []
        for plane_slices, plane_sources, plane_labels, plane_codes in zip(
                slices, sources, labels, codes):
            for i in np.flatnonzero(plane_codes == code):
                k = int(copies[plane_labels[i]])
                variants, gammas = _variants(plane_slices[i], int(plane_sources[i]), k)
                small = resize_images(variants[:, None], image_size)[:, 0]
                images.append(quantize(small ** gammas[:, None, None]))
                lab += [plane_labels[i]] * k
                src += [plane_sources[i]] * k
                var += range(k)
        arrays[f"{split}_images"] = np.concatenate(images) if images else \
            np.zeros((0, image_size, image_size), np.uint8)
        arrays[f"{split}_labels"] = np.asarray(lab, dtype=np.int64)
        arrays[f"{split}_sources"] = np.asarray(src, dtype=np.int64)
        arrays[f"{split}_variants"] = np.asarray(var, dtype=np.int64)
    if any(len(arrays[f"{s}_labels"]) == 0 for s in SPLITS):
        raise DataError(f"mni152: a split came out empty (test_fraction={test_fraction})")
    return arrays


def image_count(cfg: DataConfig) -> int:
    """How many images (all splits) the dataset of ``cfg`` holds, without building it: read
    from the cached file's headers, else planned from the template (no slice is warped)."""
    shapes = npz_shapes(_cache_path(cfg, template_path()))
    if shapes is not None and all(f"{s}_labels" in shapes for s in SPLITS):
        count = sum(int(np.prod(shapes[f"{s}_labels"][0])) for s in SPLITS)
        if count <= MAX_IMAGES:
            return count
    return _planned_count(template_path(), round(cfg.test_fraction, 6))


# --------------------------------------------------------------------------------------------
# Internals
# --------------------------------------------------------------------------------------------
def _cache_path(cfg: DataConfig, template: Path) -> Path:
    params = {"version": VERSION, "image_size": cfg.image_size,
              "test_fraction": round(cfg.test_fraction, 6),
              "template_bytes": template.stat().st_size}
    return dataset_cache_path(cfg.cache_dir, "mni152", params)


@functools.lru_cache(maxsize=4)
def _planned_count(template: Path, test_fraction: float) -> int:
    _, _, labels, codes, copies = _plan(_read_volume(template), test_fraction)
    return sum(int(copies[label]) for plane_labels, plane_codes in zip(labels, codes)
               for label, code in zip(plane_labels, plane_codes) if code != _GUARD)


def _plan(volume: np.ndarray, test_fraction: float
          ) -> tuple[list[np.ndarray], list[np.ndarray], list[np.ndarray], list[np.ndarray],
                     np.ndarray]:
    """Per plane: the cropped source slices ``(S, L, L)``, their source ids, labels and split
    codes (:data:`_GUARD` = dropped); and the copies each class's slices get."""
    slices: list[np.ndarray] = []
    sources: list[np.ndarray] = []
    labels: list[np.ndarray] = []
    codes: list[np.ndarray] = []
    for axis in range(3):
        plane_slices, positions, levels = _plane_sources(volume, axis)
        high = levels >= np.median(levels)
        plane_labels = 2 * axis + high.astype(np.int64)
        slices.append(plane_slices)
        sources.append(axis * _SOURCE_STRIDE + positions)
        labels.append(plane_labels)
        codes.append(_assign_splits(plane_labels, test_fraction))
    all_labels, all_codes = np.concatenate(labels), np.concatenate(codes)
    copies = np.zeros(len(CLASS_NAMES), dtype=np.int64)
    for c in range(len(CLASS_NAMES)):
        n_train = int(np.sum((all_labels == c) & (all_codes == _CODES["train"])))
        copies[c] = math.ceil(TRAIN_IMAGES_PER_CLASS / max(n_train, 1))
    return slices, sources, labels, codes, copies


def _read_volume(path: Path) -> np.ndarray:
    """The template as float32 in [0, 1], shape (197, 233, 189) = (x, y, z), RAS."""
    import nibabel

    try:
        volume = np.asarray(nibabel.load(str(path)).dataobj, dtype=np.float32)
    except Exception as exc:  # nibabel raises many types for a damaged file
        raise DataError(f"{path}: cannot read the MNI152 template ({type(exc).__name__})") \
            from None
    if volume.ndim != 3 or volume.max() <= 0:
        raise DataError(f"{path}: expected a non-empty 3D volume, got shape {volume.shape}")
    return volume / volume.max()


def _plane_sources(volume: np.ndarray, axis: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Source slices of one plane, cropped to the plane's square field of view.

    Returns:
        slices ``(S, L, L)`` float32 in [0, 1] (display orientation), voxel positions ``(S,)``
        along ``axis`` and levels ``(S,)`` (distance from the midline for sagittal slices).
    """
    stack = np.moveaxis(volume, axis, 0)
    start = (volume.shape[0] - 1) // 2 if axis == 0 else 0  # one hemisphere: x == -x
    area = (stack[start:] > BRAIN_THRESHOLD).sum(axis=(1, 2))
    positions = start + np.flatnonzero(area >= MIN_AREA_FRACTION * area.max())
    planes = np.rot90(stack[positions], axes=(1, 2))  # (S, rows, cols): anterior/superior up
    brain = (planes > BRAIN_THRESHOLD).any(axis=0)
    rows, cols = np.flatnonzero(brain.any(axis=1)), np.flatnonzero(brain.any(axis=0))
    side = int(math.ceil(FOV_MARGIN * max(rows[-1] - rows[0] + 1, cols[-1] - cols[0] + 1)))
    top = (rows[0] + rows[-1] + 1 - side) // 2
    left = (cols[0] + cols[-1] + 1 - side) // 2
    padded = np.pad(planes, ((0, 0), (side, side), (side, side)))
    crop = padded[:, side + top:2 * side + top, side + left:2 * side + left]
    levels = positions - start if axis == 0 else positions
    return np.ascontiguousarray(crop, dtype=np.float32), positions.astype(np.int64), \
        levels.astype(np.float64)


def _assign_splits(labels: np.ndarray, test_fraction: float) -> np.ndarray:
    """Split code per source slice of one plane (slices in level order, classes contiguous)."""
    codes = np.empty(len(labels), dtype=np.int64)
    for c in np.unique(labels):
        members = np.flatnonzero(labels == c)
        if np.any(np.diff(members) != 1):
            raise DataError("mni152: a class is not a contiguous range of levels")
        blocks = np.array_split(members, max(3, round(len(members) / BLOCK_SLICES)))
        for block, code in zip(blocks, _block_codes(len(blocks), test_fraction)):
            codes[block] = code
    guarded = codes.copy()
    left_drop, right_drop = GUARD_SLICES - GUARD_SLICES // 2, GUARD_SLICES // 2
    for i in np.flatnonzero(codes[1:] != codes[:-1]):  # boundary between slices i and i + 1
        guarded[max(i + 1 - left_drop, 0):i + 1] = _GUARD
        guarded[i + 1:i + 1 + right_drop] = _GUARD
    return guarded


def _block_codes(num_blocks: int, test_fraction: float) -> list[int]:
    """Split codes of ``num_blocks`` consecutive blocks, each split spread evenly over them."""
    n_public = max(1, round(PUBLIC_FRACTION * num_blocks))
    n_test = max(1, round(test_fraction * (num_blocks - n_public)))
    if n_public + n_test > num_blocks - 1:
        n_test = max(1, num_blocks - 1 - n_public)
        warnings.warn(f"data.test_fraction={test_fraction} leaves too few mni152 training "
                      f"slices; using {n_test} of {num_blocks} blocks per class for test",
                      stacklevel=2)
    n_train = num_blocks - n_public - n_test
    # ideal centres: train (j+.5)/k, public (j+.25)/k, test (j+.75)/k, so the held-out blocks
    # of a class sit at different levels rather than side by side
    centres = [((j + 0.5) / n_train, _CODES["train"]) for j in range(n_train)]
    centres += [((j + 0.25) / n_public, _CODES["public"]) for j in range(n_public)]
    centres += [((j + 0.75) / n_test, _CODES["test"]) for j in range(n_test)]
    return [code for _, code in sorted(centres)]


def _variants(image: np.ndarray, source_id: int, copies: int) -> tuple[np.ndarray, np.ndarray]:
    """``copies`` warped copies of one ``(L, L)`` slice (the first unchanged) and their gammas.

    Returns:
        ``(copies, L, L)`` float32 in [0, 1] and ``(copies,)`` float32 gamma exponents (applied
        by the caller after resizing, which is cheaper at the output size).
    """
    import cv2

    side = image.shape[0]
    out = np.empty((copies, side, side), dtype=np.float32)
    gammas = np.ones(copies, dtype=np.float32)
    out[0] = image
    for v in range(1, copies):
        rng = np.random.default_rng([CONSTRUCTION_SEED, source_id, v])
        angle = rng.uniform(-MAX_ROTATION_DEG, MAX_ROTATION_DEG)
        scale = rng.uniform(*SCALE_RANGE)
        shift = rng.uniform(-MAX_SHIFT, MAX_SHIFT, size=2) * side
        gammas[v] = math.exp(rng.uniform(-math.log(MAX_GAMMA), math.log(MAX_GAMMA)))
        centre = ((side - 1) / 2.0, (side - 1) / 2.0)
        matrix = cv2.getRotationMatrix2D(centre, angle, scale)
        matrix[:, 2] += shift
        warped = cv2.warpAffine(image, matrix, (side, side), flags=cv2.INTER_LINEAR,
                                borderMode=cv2.BORDER_CONSTANT, borderValue=0.0)
        out[v] = np.clip(warped, 0.0, 1.0)
    return out, gammas
