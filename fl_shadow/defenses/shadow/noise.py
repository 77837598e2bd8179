"""The shadow defense's noise map: from the shadow's reconstruction error to the added noise.

Pure tensor functions, one per stage, each on a batch ``(N, C, H, W)`` and per image:

1. :func:`error_to_noise_map` -- the shadow's per-pixel error ``E`` -> ``1/softmax(E/T)`` ->
   histogram equalization -> ``softmax(./T)``. Noise goes where the shadow (a simulated
   attacker) reconstructs the image *best*, i.e. where the image leaks most.
2. :func:`update_memory` -- momentum across rounds.
3. :func:`suppress_foreground` -- less noise in the Grad-CAM++ salient region.
4. :func:`scale_noise` -- peak noise = ``w_N * |max(x)|`` per image.

Differences from the reference code (tekap404/ShadowDef), on purpose:

* ``1/softmax(E/T)`` is computed as ``exp(-(E - min E)/T)`` and min-max scaled per image: the
  same map after the scaling the reference applies anyway, without overflow at large ``E/T``.
* Equalization is per image and per channel, and the result stays pixel-aligned with the image
  (the reference builds one histogram over the whole batch from a luminance channel, then
  reshapes the result so that rows land in the wrong channels and places); it uses the
  textbook inclusive-CDF table, see :func:`equalize_per_image`.
* The foreground term multiplies: ``N4 = N3 * (1 - alpha * L)``, with ``L`` the CAM inside its
  top ``perc_cam`` region, so the salient region really gets up to ``alpha`` less noise. The
  reference's ``N3 - alpha * sign(N3) * softmax(L/20)`` is a near-uniform offset (``sign`` of a
  softmax is always +1 and the softmax of a [0,1] map at temperature 20 is almost flat).
"""

from __future__ import annotations

import math

import torch

__all__ = ["cam_alpha", "equalize_per_image", "error_to_noise_map", "noise_map_stages",
           "noise_weight",
           "scale_noise", "scale_to_psnr", "shuffle_per_image", "suppress_foreground",
           "update_memory", "zero_mean"]


def _per_image_minmax(x: torch.Tensor) -> torch.Tensor:
    flat = x.flatten(1)
    lo = flat.min(dim=1, keepdim=True).values
    span = (flat.max(dim=1, keepdim=True).values - lo).clamp_min(1e-12)
    return ((flat - lo) / span).view_as(x)


def equalize_per_image(x: torch.Tensor, levels: int = 256) -> torch.Tensor:
    """Histogram equalization of each image and channel of ``x`` (values in [0, 1]).

    The textbook (and OpenCV ``equalizeHist``) mapping: quantize to ``levels`` bins, map bin
    ``v`` to ``(cdf(v) - cdf_min) / (n - cdf_min)``, where ``cdf`` counts the pixels *up to and
    including* ``v``. Every pixel keeps its place; equal inputs stay equal and order is kept.

    Not kornia's ``equalize``: it uses PIL's table (counts *before* the bin, the top bin left
    out), which sends a large tie just below a lone maximum to mid-range -- on images with a
    perfectly reconstructed background, a handful of pixels then take nearly all the noise.
    """
    n, c = x.shape[:2]
    q = (x.clamp(0, 1) * (levels - 1)).round().long().flatten(2)          # (N, C, HW)
    hist = torch.zeros(n, c, levels, device=x.device).scatter_add_(
        2, q, torch.ones_like(q, dtype=torch.float32))
    cdf = hist.cumsum(2)
    cdf_min = torch.where(hist > 0, cdf, cdf.new_full((), float("inf"))).min(2, keepdim=True)
    cdf_min = cdf_min.values
    total = cdf[..., -1:]
    lut = ((cdf - cdf_min) / (total - cdf_min).clamp_min(1)).clamp(0, 1)
    flat_channel = (total == cdf_min).expand_as(lut)  # one level only: keep it at the top
    lut = torch.where(flat_channel, torch.ones_like(lut), lut)
    return lut.gather(2, q).view_as(x)


def error_to_noise_map(error: torch.Tensor, *, temperature: float = 20.0,
                       equalize_histogram: bool = True) -> torch.Tensor:
    """Noise distribution ``N3`` per image from the shadow's squared error ``error``.

    Args:
        error: ``(N, C, H, W)`` non-negative per-pixel error of the shadow's reconstruction.
        temperature: ``T`` of both softmaxes (the reference hard-codes 20).
        equalize_histogram: equalize the inverted map (``noise_equ``); without it the
            map's [0, 1] range is used directly (the reference crashes when this is off).

    Returns:
        ``(N, C, H, W)``, each image summing to 1 over ``C*H*W``; larger where ``error`` is
        smaller (with ties kept equal).
    """
    return noise_map_stages(error, temperature=temperature,
                            equalize_histogram=equalize_histogram)["softmax"]


def noise_map_stages(error: torch.Tensor, *, temperature: float = 20.0,
                     equalize_histogram: bool = True) -> dict[str, torch.Tensor]:
    """:func:`error_to_noise_map` with its intermediate maps, for diagnosis: ``inverse``
    (``1/softmax(E/T)`` min-max scaled per image), ``equalized`` (the same when equalization
    is off) and ``softmax`` (the result)."""
    e = error.detach().float()
    shifted = e - e.flatten(1).min(dim=1).values.view(-1, 1, 1, 1)
    inverse = _per_image_minmax(torch.exp(-shifted / temperature))  # ∝ 1/softmax(E/T)
    equalized = equalize_per_image(inverse) if equalize_histogram else inverse
    levels = equalized * 255.0
    softmax = torch.softmax(levels.flatten(1) / temperature, dim=1).view_as(e)
    return {"inverse": inverse, "equalized": equalized, "softmax": softmax}


def update_memory(memory: torch.Tensor | None, fresh: torch.Tensor,
                  momentum: float) -> torch.Tensor:
    """``M <- momentum * M + (1 - momentum) * fresh``; ``fresh`` when there is no memory yet.

    The reference's ``noise_momentum = 0.1`` keeps 10% of the old map.
    """
    if memory is None:
        return fresh.clone()
    return momentum * memory + (1.0 - momentum) * fresh


def cam_alpha(round_index: int, num_rounds: int, low: float, high: float) -> float:
    """Foreground suppression strength ``clip(r / R, low, high)`` (``r`` 0-based)."""
    return float(min(max(round_index / max(num_rounds, 1), low), high))


def noise_weight(round_index: int, num_rounds: int, w0: float, *, increase: bool = True) -> float:
    """``w_N = w0 * exp(r / R)`` (``r`` 0-based); ``w0`` when ``increase`` is off."""
    return w0 * math.exp(round_index / max(num_rounds, 1)) if increase else w0


def suppress_foreground(noise: torch.Tensor, cam: torch.Tensor, region: torch.Tensor,
                        alpha: float) -> torch.Tensor:
    """``N4 = N3 * (1 - alpha * cam * region)``, the same factor in every channel.

    Args:
        noise: ``(N, C, H, W)`` non-negative noise map.
        cam: ``(N, H, W)`` Grad-CAM++ map in [0, 1].
        region: ``(N, H, W)`` bool, the salient region (top ``perc_cam`` of ``cam``).
        alpha: in [0, 1]; the most a salient pixel's noise is reduced by.
    """
    factor = 1.0 - alpha * cam * region.to(cam.dtype)
    return noise * factor.unsqueeze(1)


def scale_noise(noise: torch.Tensor, x: torch.Tensor, weight: float) -> torch.Tensor:
    """Rescale each image's noise so its peak magnitude is ``weight * |max(x_i)|`` (normalized
    units; the reference's budget). For a non-negative map the peak is its maximum."""
    peak_x = x.detach().flatten(1).max(dim=1).values.abs()
    peak_n = noise.flatten(1).abs().max(dim=1).values.clamp_min(1e-12)
    return noise * (weight * peak_x / peak_n).view(-1, 1, 1, 1)


def scale_to_psnr(noise: torch.Tensor, target_psnr_db: float,
                  std: torch.Tensor | float = 1.0) -> torch.Tensor:
    """Rescale each image's noise (normalized units) so that the noised input is
    ``target_psnr_db`` from the clean one in [0, 1] image units: ``mean((N * std)^2) =
    10^(-target/10)``. ``std``: the normalization's, a float or ``(1, C, 1, 1)``.

    A budget that means the same distortion on every dataset, unlike the peak ratio (whose
    distortion depends on how the map spreads and on the image's own maximum)."""
    unit = noise * std
    mse = unit.flatten(1).pow(2).mean(dim=1).clamp_min(1e-24)
    factor = torch.sqrt(10.0 ** (-target_psnr_db / 10.0) / mse)
    return noise * factor.view(-1, 1, 1, 1)


def shuffle_per_image(noise: torch.Tensor, permutation: torch.Tensor) -> torch.Tensor:
    """Each image's noise values moved to other places: ``permutation`` ``(N, C*H*W)`` holds a
    permutation of the flat pixel positions per image (the control "the shadow's own values
    at random places")."""
    flat = noise.flatten(1)
    return flat.gather(1, permutation.to(flat.device)).view_as(noise)


def zero_mean(noise: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """``noise`` minus each image and channel's mean (``(N, C, H, W)``); with ``mask``
    ``(N, 1, H, W)`` (0/1), the mean over the mask is removed inside it and the outside stays
    0. With random signs the mean is already near 0 when the noise is spread out; the map
    concentrates its mass on a few pixels, so without this an image's noise could still
    brighten or darken it on average, which an intensity-invariant attacker ignores anyway and
    the classifier must not learn."""
    if mask is None:
        return noise - noise.mean(dim=(2, 3), keepdim=True)
    count = mask.sum(dim=(2, 3), keepdim=True).clamp_min(1)
    return (noise - (noise * mask).sum(dim=(2, 3), keepdim=True) / count) * mask
