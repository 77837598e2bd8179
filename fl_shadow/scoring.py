"""Score an attack's reconstruction against the images it was computed from.

This runs on the server *after* the attack returned, in simulation only: the audit record the
client sent (global indices of the images in each local step) identifies the attacked images in
the shared train split. The attack itself never sees the audit record or the images.

Protocol (the project's single one; see :mod:`fl_shadow.metrics`): images in [0, 1];
reconstructions matched to the attacked images by one assignment; PSNR, SSIM and LPIPS computed
on that matching; label accuracy = share of matched pairs whose recovered label is right.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from fl_shadow import metrics
from fl_shadow.data.base import ImageSet
from fl_shadow.audit import AuditRecord, attacked_indices
from attacks.base import Reconstruction


@dataclass(frozen=True)
class Scores:
    """Scores of one reconstruction.

    Attributes:
        summary: mean ``psnr``, ``ssim``, ``lpips``, ``label_accuracy`` and ``num_matched``.
        per_pair: the same per matched pair (lists in pair order).
        matched_truth: ``(P, C, H, W)`` attacked images in pair order.
        matched_reconstructions: ``(P, C, H, W)`` their matched reconstructions.
    """

    summary: dict[str, float]
    per_pair: dict[str, list[float]]
    matched_truth: torch.Tensor
    matched_reconstructions: torch.Tensor


class Scorer:
    """Looks up attacked images by audit record and scores reconstructions.

    Args:
        train: the federation's train split (simulation: the server can load it).
    """

    def __init__(self, train: ImageSet) -> None:
        self.train = train

    def score(self, reconstruction: Reconstruction, audit: AuditRecord | None) -> Scores | None:
        """Scores, or None when there is no audit record (deployment)."""
        if audit is None:
            return None
        indices = attacked_indices(audit)
        return score_reconstruction(reconstruction.images, reconstruction.labels,
                                    self.train.images[indices], self.train.labels[indices])


def score_reconstruction(recon: torch.Tensor, recon_labels: torch.Tensor, truth: torch.Tensor,
                         true_labels: torch.Tensor) -> Scores:
    """Match ``recon`` (K, C, H, W) to ``truth`` (N, C, H, W), both in [0, 1], and score."""
    recon = torch.nan_to_num(recon.detach().cpu().float(), nan=0.0).clamp(0, 1)
    truth = truth.detach().cpu().float()
    pairs = metrics.score_matched_pairs(recon, truth)
    rows, cols = pairs.recon_index, pairs.truth_index
    label_hits = (recon_labels.cpu()[rows] == true_labels.cpu()[cols]).float()
    per_pair = {"psnr": pairs.psnr.tolist(), "ssim": pairs.ssim.tolist(),
                "lpips": pairs.lpips.tolist(), "label_correct": label_hits.tolist()}
    summary = pairs.summary()
    summary["label_accuracy"] = float(label_hits.mean())
    return Scores(summary=summary, per_pair=per_pair, matched_truth=truth[cols],
                  matched_reconstructions=recon[rows])
