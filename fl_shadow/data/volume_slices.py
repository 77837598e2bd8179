"""Labelled 2D slices from one 3D head volume: the construction shared by ``mni152`` and
``ct_head``.

A volume of voxels ``(x, y, z)`` (x left-right, y posterior->anterior, z inferior->superior, one
voxel the same length along every axis) with values in [0, 1] and a foreground mask (the brain,
the head) becomes six classes of slices, split by source slice and augmented:

1. **Source slices.** From each plane (sagittal = x, coronal = y, axial = z) every slice whose
   foreground cross-section is at least :data:`MIN_AREA_FRACTION` of that plane's largest.
   Sagittal slices come either from one hemisphere (``hemispheres="one"``: a left/right
   symmetric volume, whose mirrored slices would otherwise straddle splits; the level is the
   distance from the midline) or from both (``"both"``: a real head is not symmetric; the level
   is the distance ``|x - midline|``).
2. **Classes**: ``2 * plane + (level >= the plane's median level)``: sagittal medial/lateral,
   coronal posterior/anterior, axial inferior/superior (:data:`CLASS_NAMES`).
3. **Splits, by source slice.** Within each class, every run of consecutive slices is cut into
   blocks of about :data:`BLOCK_SLICES`; the blocks, in level order, go ``public_fraction`` to
   public, ``test_fraction`` of the rest to test and the remainder to train, each split spread
   evenly over the levels. Where two neighbouring slices belong to different splits,
   ``guard_slices`` slices at the boundary are dropped (default 2, so slices of two splits lie
   at least 3 voxels apart: neighbouring slices are near-duplicates). Splitting comes before
   augmentation: copies of one slice never straddle splits.
4. **Images.** Each plane is cropped to one square field of view around the union of its
   foreground masks (the cross-section's size in the image still tells its level), anterior or
   superior up. Every source slice yields ``k`` images: itself and ``k - 1`` seeded variants
   (rotation within +-10 degrees, scale 0.92-1.08, shift within +-4% of the side), warped at
   the voxel size, resized to ``image_size`` with antialiasing, then given a seeded gamma in
   0.8-1.25; ``k`` per class is the smallest giving each class at least
   :data:`TRAIN_IMAGES_PER_CLASS` training images.

Everything is deterministic given the volume and the construction seed. Source-slice ids are
``plane * 1000 + voxel index along the plane's axis`` (:func:`source_plane_and_index`).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Literal

import numpy as np

from fl_shadow.data.splits import SPLITS
from fl_shadow.data.transforms import quantize, resize_images
from fl_shadow.errors import DataError

__all__ = ["CLASS_NAMES", "DEFAULT_PUBLIC_FRACTION", "PLANES", "SlicePlan", "build_arrays",
           "plan_slices", "planned_count", "source_plane_and_index"]

PLANES = ("sagittal", "coronal", "axial")
"""Plane names, indexed by the volume axis normal to the plane (x, y, z)."""
CLASS_NAMES = ("sagittal medial", "sagittal lateral", "coronal posterior", "coronal anterior",
               "axial inferior", "axial superior")
"""Class ``2 * plane + (level >= plane median)``."""

DEFAULT_PUBLIC_FRACTION = 0.15
BLOCK_SLICES = 5
MIN_BLOCKS_PER_CLASS = 3
GUARD_SLICES = 2
"""Slices dropped at each boundary between two splits (the default; see :func:`plan_slices`)."""
TRAIN_IMAGES_PER_CLASS = 300
MIN_AREA_FRACTION = 0.10
FOV_MARGIN = 1.05
MAX_ROTATION_DEG = 10.0
SCALE_RANGE = (0.92, 1.08)
MAX_SHIFT = 0.04
MAX_GAMMA = 1.25
SOURCE_STRIDE = 1000
CODES = {"train": 0, "test": 1, "public": 2}
GUARD = -1


@dataclass(frozen=True)
class SlicePlan:
    """Per plane (lists indexed like :data:`PLANES`): the cropped source slices ``(S, L, L)``
    float32 in [0, 1], their source ids, labels and split codes (:data:`CODES`, :data:`GUARD` =
    dropped) ``(S,)``; and ``copies`` ``(6,)``, the images each class's source slice gives."""

    slices: list[np.ndarray]
    sources: list[np.ndarray]
    labels: list[np.ndarray]
    codes: list[np.ndarray]
    copies: np.ndarray


def source_plane_and_index(source_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Split source-slice ids into the plane (index into :data:`PLANES`) and voxel index."""
    ids = np.asarray(source_ids)
    return ids // SOURCE_STRIDE, ids % SOURCE_STRIDE


def plan_slices(volume: np.ndarray, foreground: np.ndarray, *, dataset: str,
                hemispheres: Literal["one", "both"], test_fraction: float,
                public_fraction: float = DEFAULT_PUBLIC_FRACTION,
                guard_slices: int = GUARD_SLICES) -> SlicePlan:
    """Source slices, classes and splits of one volume (steps 1-3 of the module docstring).

    Args:
        volume: ``(X, Y, Z)`` float32 in [0, 1], isotropic voxels.
        foreground: ``(X, Y, Z)`` bool, what counts as the head (area, field of view).
        dataset: its name, for messages.
        hemispheres: sagittal slices from ``"one"`` hemisphere (x from the middle voxel up) or
            ``"both"`` (level = distance from the foreground's centre of mass along x).
        test_fraction, public_fraction: shares of each class's blocks (see the docstring).
        guard_slices: slices dropped at each boundary between two splits, so that slices of
            different splits lie ``guard_slices + 1`` voxels apart or more.
    """
    if volume.shape != foreground.shape or volume.ndim != 3:
        raise DataError(f"{dataset}: expected a 3D volume and a mask of one shape, got "
                        f"{volume.shape} and {foreground.shape}")
    slices, sources, labels, codes = [], [], [], []
    for axis in range(3):
        plane_slices, positions, levels = _plane_sources(volume, foreground, axis, hemispheres)
        high = levels >= np.median(levels)
        plane_labels = 2 * axis + high.astype(np.int64)
        slices.append(plane_slices)
        sources.append(axis * SOURCE_STRIDE + positions)
        labels.append(plane_labels)
        codes.append(_assign_splits(positions, levels, plane_labels, dataset=dataset,
                                    test_fraction=test_fraction,
                                    public_fraction=public_fraction,
                                    guard_slices=guard_slices))
    all_labels, all_codes = np.concatenate(labels), np.concatenate(codes)
    copies = np.zeros(len(CLASS_NAMES), dtype=np.int64)
    for c in range(len(CLASS_NAMES)):
        n_train = int(np.sum((all_labels == c) & (all_codes == CODES["train"])))
        copies[c] = math.ceil(TRAIN_IMAGES_PER_CLASS / max(n_train, 1))
    return SlicePlan(slices, sources, labels, codes, copies)


def planned_count(plan: SlicePlan) -> int:
    """How many images (all splits) :func:`build_arrays` makes of ``plan``, without warping."""
    return sum(int(plan.copies[label]) for plane_labels, plane_codes in zip(plan.labels, plan.codes)
               for label, code in zip(plane_labels, plane_codes) if code != GUARD)


def build_arrays(plan: SlicePlan, *, image_size: int, construction_seed: int,
                 dataset: str) -> dict[str, np.ndarray]:
    """The images of ``plan`` (step 4 of the module docstring).

    Returns:
        For each split ``s`` in train/test/public: ``s_images`` uint8 ``(N, S, S)`` (grayscale,
        ``S = image_size``), ``s_labels`` int64 ``(N,)``, ``s_sources`` int64 ``(N,)`` source-slice
        ids and ``s_variants`` int64 ``(N,)`` (0 = the unaugmented slice).

    Raises:
        DataError: a split came out empty.
    """
    arrays: dict[str, np.ndarray] = {}
    for split in SPLITS:
        code = CODES[split]
        images, lab, src, var = [], [], [], []
        for plane_slices, plane_sources, plane_labels, plane_codes in zip(
                plan.slices, plan.sources, plan.labels, plan.codes):
            for i in np.flatnonzero(plane_codes == code):
                k = int(plan.copies[plane_labels[i]])
                variants, gammas = _variants(plane_slices[i], int(plane_sources[i]), k,
                                             construction_seed)
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
    counts = ", ".join(f"{s} {len(arrays[s + '_labels'])}" for s in SPLITS)
    if any(len(arrays[f"{s}_labels"]) == 0 for s in SPLITS):
        raise DataError(f"{dataset}: a split came out empty ({counts} images)")
    return arrays


# --------------------------------------------------------------------------------------------
# Internals
# --------------------------------------------------------------------------------------------
def _plane_sources(volume: np.ndarray, foreground: np.ndarray, axis: int,
                   hemispheres: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Source slices of one plane, cropped to the plane's square field of view.

    Returns:
        slices ``(S, L, L)`` float32 in [0, 1] (display orientation), voxel positions ``(S,)``
        along ``axis`` and levels ``(S,)`` (distance from the midline for sagittal slices).
    """
    stack = np.moveaxis(volume, axis, 0)
    mask = np.moveaxis(foreground, axis, 0)
    if axis == 0 and hemispheres == "one":
        start, midline = (volume.shape[0] - 1) // 2, float((volume.shape[0] - 1) // 2)
    else:
        start = 0
        weights = mask.sum(axis=(1, 2)).astype(np.float64)
        midline = float(np.average(np.arange(len(weights)), weights=weights)) \
            if weights.sum() > 0 else 0.0
    area = mask[start:].sum(axis=(1, 2))
    if area.max(initial=0) == 0:
        raise DataError("the volume's foreground is empty")
    positions = start + np.flatnonzero(area >= MIN_AREA_FRACTION * area.max())
    planes = np.rot90(stack[positions], axes=(1, 2))  # (S, rows, cols): anterior/superior up
    head = np.rot90(mask[positions], axes=(1, 2)).any(axis=0)
    rows, cols = np.flatnonzero(head.any(axis=1)), np.flatnonzero(head.any(axis=0))
    side = int(math.ceil(FOV_MARGIN * max(rows[-1] - rows[0] + 1, cols[-1] - cols[0] + 1)))
    top = (rows[0] + rows[-1] + 1 - side) // 2
    left = (cols[0] + cols[-1] + 1 - side) // 2
    padded = np.pad(planes, ((0, 0), (side, side), (side, side)))
    crop = padded[:, side + top:2 * side + top, side + left:2 * side + left]
    levels = np.abs(positions - midline) if axis == 0 else positions
    return np.ascontiguousarray(crop, dtype=np.float32), positions.astype(np.int64), \
        np.asarray(levels, dtype=np.float64)


def _assign_splits(positions: np.ndarray, levels: np.ndarray, labels: np.ndarray, *,
                   dataset: str, test_fraction: float, public_fraction: float,
                   guard_slices: int) -> np.ndarray:
    """Split code per source slice of one plane (positions ascending)."""
    codes = np.empty(len(labels), dtype=np.int64)
    for c in np.unique(labels):
        members = np.flatnonzero(labels == c)
        # runs of consecutive voxels (a lateral sagittal class has one per hemisphere)
        runs = np.split(members, np.flatnonzero(np.diff(positions[members]) != 1) + 1)
        wanted = max(MIN_BLOCKS_PER_CLASS, round(len(members) / BLOCK_SLICES))
        blocks = [block for run in runs
                  for block in np.array_split(run, max(1, round(wanted * len(run)
                                                                / len(members))))]
        if len(blocks) < MIN_BLOCKS_PER_CLASS:
            raise DataError(f"{dataset}: class {CLASS_NAMES[c]!r} has {len(members)} source "
                            f"slices, too few to split three ways")
        blocks.sort(key=lambda block: float(levels[block].mean()))
        for block, code in zip(blocks, _block_codes(len(blocks), dataset=dataset,
                                                    test_fraction=test_fraction,
                                                    public_fraction=public_fraction)):
            codes[block] = code
    guarded = codes.copy()
    left_drop, right_drop = guard_slices - guard_slices // 2, guard_slices // 2
    for i in np.flatnonzero(codes[1:] != codes[:-1]):  # boundary between slices i and i + 1
        guarded[max(i + 1 - left_drop, 0):i + 1] = GUARD
        guarded[i + 1:i + 1 + right_drop] = GUARD
    return guarded


def _block_codes(num_blocks: int, *, dataset: str, test_fraction: float,
                 public_fraction: float) -> list[int]:
    """Split codes of ``num_blocks`` blocks in level order, each split spread evenly over them."""
    n_public = max(1, round(public_fraction * num_blocks))
    n_test = max(1, round(test_fraction * (num_blocks - n_public)))
    if n_public + n_test > num_blocks - 1:
        n_public = min(n_public, num_blocks - 2)
        n_test = max(1, num_blocks - 1 - n_public)
        warnings.warn(f"data.test_fraction={test_fraction} and data.public_fraction="
                      f"{public_fraction} leave too few {dataset} training slices; using "
                      f"{n_public} public and {n_test} test of {num_blocks} blocks per class",
                      stacklevel=2)
    n_train = num_blocks - n_public - n_test
    # ideal centres: train (j+.5)/k, public (j+.25)/k, test (j+.75)/k, so the held-out blocks
    # of a class sit at different levels rather than side by side
    centres = [((j + 0.5) / n_train, CODES["train"]) for j in range(n_train)]
    centres += [((j + 0.25) / n_public, CODES["public"]) for j in range(n_public)]
    centres += [((j + 0.75) / n_test, CODES["test"]) for j in range(n_test)]
    return [code for _, code in sorted(centres)]


def _variants(image: np.ndarray, source_id: int, copies: int,
              construction_seed: int) -> tuple[np.ndarray, np.ndarray]:
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
        rng = np.random.default_rng([construction_seed, source_id, v])
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
