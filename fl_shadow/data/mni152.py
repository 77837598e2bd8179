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
import time
from pathlib import Path

import numpy as np

from fl_shadow.config import DataConfig
from fl_shadow.data import volume_slices
from fl_shadow.data.base import DatasetSplits
from fl_shadow.data.cache import dataset_cache_path, npz_shapes, save_arrays
from fl_shadow.data.cache import load_arrays as load_cached
from fl_shadow.data.splits import SPLITS, assemble_splits, check_cached_splits
from fl_shadow.data.volume_slices import CLASS_NAMES, PLANES, source_plane_and_index
from fl_shadow.errors import DataError

__all__ = ["CLASS_NAMES", "PLANES", "TEMPLATE_FILE", "build_arrays", "image_count", "load",
           "load_arrays", "source_plane_and_index", "template_path"]

logger = logging.getLogger(__name__)

TEMPLATE_FILE = "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz"
VERSION = 1
CONSTRUCTION_SEED = 152
BRAIN_THRESHOLD = 0.1
MAX_IMAGES = 200_000
"""More images than any test fraction gives (~52,000 at 0.99): a cache claiming more is not one."""


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
                          public_fraction=_public_fraction(cfg), template=path)
    logger.info("mni152: built %s images at %d px in %.1f s -> %s",
                "/".join(str(len(arrays[f"{s}_labels"])) for s in SPLITS), cfg.image_size,
                time.perf_counter() - start, cache)
    save_arrays(cache, arrays)
    return arrays


def build_arrays(*, image_size: int, test_fraction: float,
                 public_fraction: float = volume_slices.DEFAULT_PUBLIC_FRACTION,
                 template: Path | None = None) -> dict[str, np.ndarray]:
    """Build the dataset from the template (see the module docstring); no caching.

    Args:
        image_size: output side length in pixels.
        test_fraction: share of the non-public source-slice blocks of each class held out.
        public_fraction: share of each class's source-slice blocks set aside as public.
        template: template file; default :func:`template_path`.

    Returns:
        The arrays described in :func:`load_arrays`.
    """
    plan = _plan(template or template_path(), test_fraction, public_fraction)
    return volume_slices.build_arrays(plan, image_size=image_size,
                                      construction_seed=CONSTRUCTION_SEED, dataset="mni152")


def image_count(cfg: DataConfig) -> int:
    """How many images (all splits) the dataset of ``cfg`` holds, without building it: read
    from the cached file's headers, else planned from the template (no slice is warped)."""
    shapes = npz_shapes(_cache_path(cfg, template_path()))
    if shapes is not None and all(f"{s}_labels" in shapes for s in SPLITS):
        count = sum(int(np.prod(shapes[f"{s}_labels"][0])) for s in SPLITS)
        if count <= MAX_IMAGES:
            return count
    return _planned_count(template_path(), round(cfg.test_fraction, 6), _public_fraction(cfg))


# --------------------------------------------------------------------------------------------
# Internals
# --------------------------------------------------------------------------------------------
def _public_fraction(cfg: DataConfig) -> float:
    return round(cfg.public_fraction or volume_slices.DEFAULT_PUBLIC_FRACTION, 6)


def _cache_path(cfg: DataConfig, template: Path) -> Path:
    params = {"version": VERSION, "image_size": cfg.image_size,
              "test_fraction": round(cfg.test_fraction, 6),
              "template_bytes": template.stat().st_size}
    if _public_fraction(cfg) != volume_slices.DEFAULT_PUBLIC_FRACTION:
        params["public_fraction"] = _public_fraction(cfg)  # the default keeps earlier caches
    return dataset_cache_path(cfg.cache_dir, "mni152", params)


def _plan(template: Path, test_fraction: float, public_fraction: float
          ) -> volume_slices.SlicePlan:
    volume = _read_volume(template)
    return volume_slices.plan_slices(volume, volume > BRAIN_THRESHOLD, dataset="mni152",
                                     hemispheres="one", test_fraction=test_fraction,
                                     public_fraction=public_fraction)


@functools.lru_cache(maxsize=4)
def _planned_count(template: Path, test_fraction: float, public_fraction: float) -> int:
    return volume_slices.planned_count(_plan(template, test_fraction, public_fraction))


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
