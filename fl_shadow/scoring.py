"""Score an attack's reconstruction against the images it was computed from.

This runs on the server *after* the attack returned, in simulation only: the audit record the
client sent (global indices of the images in each local step) identifies the attacked images in
the shared train split. The attack itself never sees the audit record or the images.

Protocol (the project's single one; see :mod:`fl_shadow.metrics`): images in [0, 1];
reconstructions matched to the attacked images by one assignment; PSNR, SSIM and LPIPS computed
on that matching; label accuracy = share of matched pairs whose recovered label is right.
With a model at hand, the same three metrics also inside each true image's Grad-CAM++
foreground (top ``foreground_fraction`` of the global model's map for the true label):
``fg_psnr``, ``fg_ssim``, ``fg_lpips`` (see :func:`fl_shadow.metrics.region_scores`).
Also per matched pair: ``mse`` (the MSE behind the PSNR), and with a reference classifier
(trained on public data, :mod:`fl_shadow.reference_classifier`) ``ref_accuracy``: the share of
reconstructions it labels as their true image's class (and ``ref_accuracy_truth``, the same
on the attacked images themselves: its ceiling).

With the public split at hand, every score of :data:`fl_shadow.metrics.PRIVACY_SCORES` also for
the no-information baseline (``prior_<score>``: the public mean image; ``nearest_<score>``: the
closest public image) and as leakage above the mean image (``leak_<score>``), see
:mod:`fl_shadow.metrics.baseline`. Per pair, ``image_index`` is the attacked image's index in
the train split (the key that joins the same image across attacks, for the worst case).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from fl_shadow import metrics
from fl_shadow.data.base import ImageSet
from fl_shadow.audit import AuditRecord, attacked_indices
from fl_shadow.saliency import cam_maps, top_fraction_mask
from fl_shadow.threat_model import Reconstruction


@dataclass(frozen=True)
class Scores:
    """Scores of one reconstruction.

    Attributes:
        summary: means over the matched pairs of every score, ``label_accuracy`` and
            ``num_matched``.
        per_pair: the same per matched pair (lists in pair order).
        matched_truth: ``(P, C, H, W)`` attacked images in pair order.
        matched_reconstructions: ``(P, C, H, W)`` their matched reconstructions.
        truth_index: ``(P,)`` index of each pair's image in the attacked batch.
    """

    summary: dict[str, float]
    per_pair: dict[str, list[float]]
    matched_truth: torch.Tensor
    matched_reconstructions: torch.Tensor
    truth_index: np.ndarray


class Scorer:
    """Looks up attacked images by audit record and scores reconstructions.

    Args:
        train: the federation's train split (simulation: the server can load it).
        model_factory: builds the task model, for foreground scores (None: none).
        state_keys: the model's ``state_dict`` keys in the order parameters travel.
        mean, std: the input normalization the model expects.
        foreground_fraction: share of pixels in the foreground region.
        reference: classifier of images in [0, 1] trained on public data (None: no
            ``ref_accuracy``).
        public: ``(M, C, H, W)`` the public split in [0, 1], for the no-information baseline
            (None: no ``prior_*``/``leak_*`` scores).
    """

    def __init__(self, train: ImageSet, *, model_factory: Callable[[], nn.Module] | None = None,
                 state_keys: Sequence[str] = (), mean: Sequence[float] = (0.0,),
                 std: Sequence[float] = (1.0,), foreground_fraction: float = 0.3,
                 reference: nn.Module | None = None,
                 public: torch.Tensor | None = None) -> None:
        self.train = train
        self.model_factory = model_factory
        self.state_keys = list(state_keys)
        self.mean, self.std = tuple(mean), tuple(std)
        self.foreground_fraction = foreground_fraction
        self.reference = reference
        self.public = public if public is not None and len(public) else None

    def score(self, reconstruction: Reconstruction, audit: AuditRecord | None,
              global_arrays: list[np.ndarray] | None = None) -> Scores | None:
        """Scores, or None when there is no audit record (deployment); with the round's global
        weights (and a model factory) also the foreground scores."""
        if audit is None:
            return None
        indices = attacked_indices(audit)
        truth, labels = self.train.images[indices], self.train.labels[indices]
        foreground = None
        if self.model_factory is not None and global_arrays is not None:
            foreground = self.foreground(truth, labels, global_arrays)
        scores = score_reconstruction(reconstruction.images, reconstruction.labels, truth,
                                      labels, foreground=foreground, reference=self.reference,
                                      public=self.public)
        matched = np.asarray(indices)[np.asarray(scores.truth_index, dtype=np.int64)]
        scores.per_pair["image_index"] = [float(i) for i in matched]
        return scores

    def foreground(self, images: torch.Tensor, labels: torch.Tensor,
                   global_arrays: list[np.ndarray]) -> torch.Tensor:
        """``(N, H, W)`` bool: each image's top Grad-CAM++ region on the global model."""
        if self.model_factory is None:
            raise ValueError("Scorer.foreground needs a model_factory")
        model = self.model_factory().cpu()
        model.load_state_dict({k: torch.as_tensor(np.asarray(a)) for k, a in
                               zip(self.state_keys, global_arrays, strict=True)})
        mean = torch.tensor(self.mean).view(1, -1, 1, 1)
        std = torch.tensor(self.std).view(1, -1, 1, 1)
        maps = cam_maps(model, (images.float() - mean) / std, labels)
        return top_fraction_mask(maps, self.foreground_fraction)


def score_reconstruction(recon: torch.Tensor, recon_labels: torch.Tensor, truth: torch.Tensor,
                         true_labels: torch.Tensor, *,
                         foreground: torch.Tensor | None = None,
                         reference: nn.Module | None = None,
                         public: torch.Tensor | None = None) -> Scores:
    """Match ``recon`` (K, C, H, W) to ``truth`` (N, C, H, W), both in [0, 1], and score;
    ``foreground`` ``(N, H, W)`` bool adds ``fg_psnr``, ``fg_ssim`` and ``fg_lpips``;
    ``reference`` (a classifier of [0, 1] images) adds ``ref_accuracy``; ``public`` (M, C, H,
    W) adds the baselines ``prior_*``, ``nearest_*`` and the leakage ``leak_*``."""
    recon = torch.nan_to_num(recon.detach().cpu().float(), nan=0.0).clamp(0, 1)
    truth = truth.detach().cpu().float()
    pairs = metrics.score_matched_pairs(recon, truth)
    rows, cols = pairs.recon_index, pairs.truth_index
    label_hits = (recon_labels.cpu()[rows] == true_labels.cpu()[cols]).float()
    attack_scores = pairs.scores()
    per_pair = {name: values.tolist() for name, values in attack_scores.items()}
    per_pair["label_correct"] = label_hits.tolist()
    summary = pairs.summary()
    if public is not None:
        baselines = metrics.baseline_scores(public.detach().cpu().float(), truth[cols])
        for prefix, key in (("prior", "public_mean"), ("nearest", "public_nearest")):
            for name, values in baselines[key].items():
                per_pair[f"{prefix}_{name}"] = values.tolist()
                summary[f"{prefix}_{name}"] = float(np.mean(values))
        for name, values in metrics.leakage(attack_scores, baselines["public_mean"]).items():
            per_pair[f"leak_{name}"] = values.tolist()
            summary[f"leak_{name}"] = float(np.mean(values))
    summary["label_accuracy"] = float(label_hits.mean())
    mse = (recon[rows] - truth[cols]).pow(2).flatten(1).mean(1)
    per_pair["mse"] = mse.tolist()
    summary["mse"] = float(mse.double().mean())
    if reference is not None:
        with torch.no_grad():
            predicted = reference(recon[rows]).argmax(1)
            on_truth = reference(truth[cols]).argmax(1)
        hits = (predicted == true_labels.cpu()[cols]).float()
        per_pair["ref_correct"] = hits.tolist()
        summary["ref_accuracy"] = float(hits.mean())
        # The ceiling: the same classifier on the attacked images themselves.
        summary["ref_accuracy_truth"] = float((on_truth == true_labels.cpu()[cols]).float().mean())
    if foreground is not None:
        region = metrics.region_scores(recon[rows], truth[cols], foreground.cpu()[cols])
        for name, values in region.items():
            per_pair[f"fg_{name}"] = values.tolist()
            summary[f"fg_{name}"] = float(values.double().mean())
    return Scores(summary=summary, per_pair=per_pair, matched_truth=truth[cols],
                  matched_reconstructions=recon[rows], truth_index=np.asarray(cols))
