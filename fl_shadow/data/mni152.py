"""The offline default: labelled 2D brain-MRI slices from the MNI152 T1 template.

Source: ``mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz`` (ICBM 2009a nonlinear symmetric
T1 template, 1 mm, 197x233x189), which ships inside nilearn's wheel, so the default needs no
download.

Construction (deterministic; a fixed construction seed, independent of the experiment seed):

1. Intensities scaled to [0, 1] by the 99.5th percentile; a brain mask at 15% of that.
2. Every slice of the three planes whose brain area exceeds 5% of the slice is a *source slice*
   (about 440 in all). Slices of a plane are cropped to that plane's common brain bounding box,
   padded to a square, and resized to ``image_size``.
3. Six classes, by plane and anatomical level: ``axial-inferior`` / ``axial-superior`` (below
   or above the median axial level), ``coronal-posterior`` / ``coronal-anterior``, and
   ``sagittal-medial`` / ``sagittal-lateral`` (distance from the midline below or above its
   median). Left and right are not classes: the template is symmetric.
4. Source slices are split before any augmentation, so copies of one slice never straddle
   splits: every 10th source slice (position 0 mod 10) is **public** (disjoint data for
   generative priors), positions 3 and 7 mod 10 are **test**, the rest **train**.
5. Each source slice yields several images: the slice itself plus seeded variants (rotation
   within +-12 degrees, scale 0.9-1.1, shift within +-6% of the side, gamma 0.8-1.25): 6 per
   train slice, 2 per test slice, 3 per public slice — about 1,900 train, 180 test, 130 public.

The built arrays are cached as ``mni152_<size>px_v1.npz`` (uint8) in the cache folder.
"""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from fl_shadow.errors import DataError

log = logging.getLogger(__name__)

CLASS_NAMES = ("axial-inferior", "axial-superior", "coronal-posterior", "coronal-anterior",
               "sagittal-medial", "sagittal-lateral")
CONSTRUCTION_SEED = 152
VERSION = 1
COPIES = {"train": 6, "test": 2, "public": 3}
TEMPLATE = "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz"


def template_path() -> Path:
    try:
        import nilearn
    except ImportError as exc:  # pragma: no cover - nilearn is a dependency
        raise DataError("data.dataset 'mni152' needs the nilearn package (pip install nilearn)") \
            from exc
    path = Path(nilearn.__file__).parent / "datasets" / "data" / TEMPLATE
    if not path.is_file():
        raise DataError(f"{path}: MNI152 template not found in the installed nilearn")
    return path


def load_volume() -> np.ndarray:
    """The template as float32 in [0, 1], shape (197, 233, 189) = (x, y, z)."""
    import nibabel

    path = template_path()
    try:
        volume = np.asarray(nibabel.load(str(path)).dataobj, dtype=np.float32)
    except Exception as exc:
        raise DataError(f"{path}: cannot read the MNI152 template ({exc})") from None
    return np.clip(volume / np.percentile(volume, 99.5), 0.0, 1.0)


def source_slices(volume: np.ndarray, image_size: int) -> tuple[np.ndarray, np.ndarray]:
    """All source slices resized to ``image_size`` (S, H, W) in [0, 1] and their labels (S,)."""
    mask = volume > 0.15
    images: list[torch.Tensor] = []
    labels: list[int] = []
    for axis, (low_class, high_class) in enumerate(((4, 5), (2, 3), (0, 1))):
        # axis 0 = x (sagittal), 1 = y (coronal), 2 = z (axial)
        other = tuple(a for a in range(3) if a != axis)
        area = mask.mean(axis=other)
        kept = np.flatnonzero(area > 0.05)
        plane_mask = mask.any(axis=axis)
        rows, cols = np.flatnonzero(plane_mask.any(axis=1)), np.flatnonzero(plane_mask.any(axis=0))
        r0, r1, c0, c1 = rows[0], rows[-1] + 1, cols[0], cols[-1] + 1
        if axis == 0:
            midline = (volume.shape[0] - 1) / 2
            level = np.abs(kept - midline)
        else:
            level = kept.astype(float)
        threshold = np.median(level)
        planes = np.moveaxis(volume, axis, 0)[kept, r0:r1, c0:c1]
        planes = np.rot90(planes, axes=(1, 2))  # anatomical "up" on top for display
        images.append(_square(torch.from_numpy(planes.copy()), image_size))
        labels += [high_class if lv > threshold else low_class for lv in level]
    return torch.cat(images).numpy(), np.asarray(labels, dtype=np.int64)


def _square(planes: torch.Tensor, size: int) -> torch.Tensor:
    """Zero-pad (S, h, w) planes to squares and resize them to (S, size, size)."""
    n, h, w = planes.shape
    side = max(h, w)
    padded = torch.zeros(n, 1, side, side)
    top, left = (side - h) // 2, (side - w) // 2
    padded[:, 0, top:top + h, left:left + w] = planes
    out = F.interpolate(padded, size=(size, size), mode="bilinear", align_corners=False,
                        antialias=side > size)
    return out[:, 0].clamp(0, 1)


def augment(images: torch.Tensor, copies: int, generator: torch.Generator) -> torch.Tensor:
    """``copies`` images per input (S, H, W): the original, then seeded random variants."""
    variants = [images]
    n = images.shape[0]
    for _ in range(copies - 1):
        angle = (torch.rand(n, generator=generator) * 2 - 1) * math.radians(12)
        scale = 0.9 + torch.rand(n, generator=generator) * 0.2
        shift = (torch.rand(n, 2, generator=generator) * 2 - 1) * 0.12
        gamma = torch.exp((torch.rand(n, generator=generator) * 2 - 1) * math.log(1.25))
        cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
        theta = torch.stack([torch.stack([cos, -sin, shift[:, 0]], 1),
                             torch.stack([sin, cos, shift[:, 1]], 1)], 1)
        grid = F.affine_grid(theta, [n, 1, *images.shape[1:]], align_corners=False)
        warped = F.grid_sample(images[:, None], grid, mode="bilinear", padding_mode="zeros",
                               align_corners=False)[:, 0]
        variants.append(warped.clamp(0, 1) ** gamma.view(-1, 1, 1))
    # interleave so that copies of one slice are adjacent: (S, copies, H, W) -> (S*copies, H, W)
    return torch.stack(variants, dim=1).reshape(-1, *images.shape[1:])


def split_of(position: int) -> str:
    r = position % 10
    if r == 0:
        return "public"
    if r in (3, 7):
        return "test"
    return "train"


def build(image_size: int) -> dict[str, np.ndarray]:
    """Build the dataset arrays (uint8 images, int64 labels, source-slice ids) per split."""
    start = time.perf_counter()
    volume = load_volume()
    slices, labels = source_slices(volume, image_size)
    generator = torch.Generator().manual_seed(CONSTRUCTION_SEED)
    arrays: dict[str, np.ndarray] = {}
    splits = np.array([split_of(i) for i in range(len(labels))])
    for split, copies in COPIES.items():
        chosen = np.flatnonzero(splits == split)
        images = augment(torch.from_numpy(slices[chosen]), copies, generator)
        arrays[f"{split}_images"] = (images.numpy() * 255).round().astype(np.uint8)
        arrays[f"{split}_labels"] = np.repeat(labels[chosen], copies)
        arrays[f"{split}_sources"] = np.repeat(chosen, copies)
    log.info("built the MNI152 slice dataset at %d px in %.1fs", image_size,
             time.perf_counter() - start)
    return arrays


def load_arrays(image_size: int, cache_dir: Path) -> dict[str, np.ndarray]:
    """Cached :func:`build`: the first call builds and saves, later calls read the npz."""
    path = cache_dir / f"mni152_{image_size}px_v{VERSION}.npz"
    if path.is_file():
        try:
            with np.load(path) as f:
                return {k: f[k] for k in f.files}
        except Exception:
            log.warning("%s: unreadable cache, rebuilding", path)
    arrays = build(image_size)
    cache_dir.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.npz")
    np.savez_compressed(tmp, **arrays)
    tmp.replace(path)
    return arrays
