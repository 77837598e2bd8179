"""One assignment of reconstructions to the attacked images, and all image metrics on it."""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import torch

from fl_shadow.metrics._validation import check_images
from fl_shadow.metrics.image import psnr, ssim
from fl_shadow.metrics.invariant import ncc, psnr_affine, ssim_affine
from fl_shadow.metrics.lpips import lpips_alex

#: Every per-image privacy score, by name; higher means more leaked except for ``lpips``.
PRIVACY_SCORES = ("psnr", "ssim", "lpips", "psnr_affine", "ssim_affine", "ncc")
LOWER_MEANS_MORE_LEAKED = frozenset({"lpips"})


def _check_sets(recon: torch.Tensor, truth: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    recon = check_images(recon, "recon")
    truth = check_images(truth, "truth")
    if recon.shape[1:] != truth.shape[1:]:
        raise ValueError(f"recon and truth must have the same (C, H, W), got "
                         f"{tuple(recon.shape[1:])} and {tuple(truth.shape[1:])}")
    return recon, truth.to(recon.device)


@torch.no_grad()
def match_reconstructions(recon: torch.Tensor, truth: torch.Tensor
                          ) -> tuple[np.ndarray, np.ndarray]:
    """Assign reconstructions to true images one-to-one, minimizing the total MSE.

    Solves the (possibly rectangular) assignment problem with
    ``scipy.optimize.linear_sum_assignment`` on the ``K x N`` matrix of per-image MSEs: with
    ``K != N`` the ``min(K, N)`` best pairs are kept and the rest stay unmatched. This is the
    only matching: every metric is then computed on these pairs.

    Args:
        recon: ``(K, C, H, W)`` reconstructions in ``[0, 1]``.
        truth: ``(N, C, H, W)`` the true images of the attacked batch, in ``[0, 1]``.

    Returns:
        ``(recon_index, truth_index)``: two int64 arrays of length ``min(K, N)``; pair ``i``
        is ``recon[recon_index[i]]`` with ``truth[truth_index[i]]``, sorted by ``truth_index``.

    Raises:
        TypeError, ValueError: see :func:`fl_shadow.metrics.check_images`; different
            ``(C, H, W)``.
    """
    recon, truth = _check_sets(recon, truth)
    r = recon.double().flatten(1)
    t = truth.double().flatten(1)
    # (K, N) mean squared errors: |r|^2 + |t|^2 - 2 r.t, clamped against round-off.
    sq_dist = (r.pow(2).sum(1, keepdim=True) + t.pow(2).sum(1) - 2.0 * r @ t.T).clamp_min(0.0)
    mse = (sq_dist / r.shape[1]).cpu().numpy()
    # Imported here: scipy.optimize costs ~0.5 s at import, and every Flower client process
    # loads this package (for its accuracy and macro-F1) without ever scoring a reconstruction.
    from scipy.optimize import linear_sum_assignment

    rows, cols = linear_sum_assignment(mse)
    order = np.argsort(cols, kind="stable")
    return rows[order].astype(np.int64), cols[order].astype(np.int64)


@dataclass(frozen=True)
class MatchedScores:
    """Metrics of each matched (reconstruction, true image) pair.

    Attributes:
        recon_index: ``(P,)`` index into the reconstructions.
        truth_index: ``(P,)`` index into the true images (ascending).
        psnr: ``(P,)`` PSNR in dB.
        ssim: ``(P,)`` SSIM.
        lpips: ``(P,)`` LPIPS-alex distance.
        psnr_affine, ssim_affine: ``(P,)`` PSNR and SSIM up to brightness and contrast
            (:mod:`fl_shadow.metrics.invariant`).
        ncc: ``(P,)`` normalized cross-correlation.
    """

    recon_index: np.ndarray
    truth_index: np.ndarray
    psnr: np.ndarray
    ssim: np.ndarray
    lpips: np.ndarray
    psnr_affine: np.ndarray
    ssim_affine: np.ndarray
    ncc: np.ndarray

    @property
    def num_matched(self) -> int:
        """Number of matched pairs, ``min(K, N)``."""
        return len(self.truth_index)

    def scores(self) -> dict[str, np.ndarray]:
        """Every score of :data:`PRIVACY_SCORES`, per pair."""
        return {name: getattr(self, name) for name in PRIVACY_SCORES}

    def summary(self) -> dict[str, float]:
        """Means over the matched pairs of every score, and ``num_matched``."""
        out = {name: float(np.mean(values)) for name, values in self.scores().items()}
        out["num_matched"] = float(self.num_matched)
        return out


@torch.no_grad()
def pair_scores(recon: torch.Tensor, truth: torch.Tensor, *,
                cache_dir: str | os.PathLike[str] | None = None) -> dict[str, np.ndarray]:
    """Every score of :data:`PRIVACY_SCORES` for already aligned pairs ``recon[i], truth[i]``.

    Args:
        recon, truth: ``(P, C, H, W)`` in ``[0, 1]``, same shape.

    Returns:
        ``{score: (P,) float64 array}``.
    """
    return {"psnr": psnr(recon, truth).cpu().double().numpy(),
            "ssim": ssim(recon, truth).cpu().double().numpy(),
            "lpips": lpips_alex(recon, truth, cache_dir=cache_dir).cpu().double().numpy(),
            "psnr_affine": psnr_affine(recon, truth).cpu().double().numpy(),
            "ssim_affine": ssim_affine(recon, truth).cpu().double().numpy(),
            "ncc": ncc(recon, truth).cpu().double().numpy()}


@torch.no_grad()
def score_matched_pairs(recon: torch.Tensor, truth: torch.Tensor, *,
                        cache_dir: str | os.PathLike[str] | None = None) -> MatchedScores:
    """Match once (:func:`match_reconstructions`), then PSNR, SSIM and LPIPS per pair.

    Args:
        recon: ``(K, C, H, W)`` reconstructions in ``[0, 1]``.
        truth: ``(N, C, H, W)`` true images of the attacked batch in ``[0, 1]``.
        cache_dir: LPIPS weight cache, see :func:`fl_shadow.metrics.lpips_alex`.

    Returns:
        Per-pair values, for grids and tables.
    """
    recon, truth = _check_sets(recon, truth)
    rows, cols = match_reconstructions(recon, truth)
    r = recon[torch.as_tensor(rows, device=recon.device)]
    t = truth[torch.as_tensor(cols, device=recon.device)]
    return MatchedScores(recon_index=rows, truth_index=cols,
                         **pair_scores(r, t, cache_dir=cache_dir))


def privacy_metrics(recon: torch.Tensor, truth: torch.Tensor, *,
                    cache_dir: str | os.PathLike[str] | None = None) -> dict[str, float]:
    """Mean of every privacy score over the matched pairs, plus ``num_matched``.

    Args:
        recon: ``(K, C, H, W)`` reconstructions in ``[0, 1]``.
        truth: ``(N, C, H, W)`` true images of the attacked batch in ``[0, 1]``.
        cache_dir: LPIPS weight cache, see :func:`fl_shadow.metrics.lpips_alex`.

    Returns:
        ``{"psnr", "ssim", "lpips", "psnr_affine", "ssim_affine", "ncc", "num_matched"}``.
    """
    return score_matched_pairs(recon, truth, cache_dir=cache_dir).summary()
