"""The reference classifier and the scores built on it (``mse``, ``ref_accuracy``)."""

from __future__ import annotations

import torch

from fl_shadow.data.base import ImageSet
from fl_shadow.reference_classifier import train_reference_classifier
from fl_shadow.scoring import score_reconstruction


def quadrant_images(n: int, seed: int) -> ImageSet:
    """Class c: a bright quadrant c on a dim noisy background, 8 px."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % 4
    images = 0.2 * torch.rand(n, 1, 8, 8, generator=g)
    for i, c in enumerate(labels.tolist()):
        r, col = divmod(c, 2)
        images[i, 0, 4 * r:4 * r + 4, 4 * col:4 * col + 4] += 0.7
    return ImageSet(images, labels)


def test_reference_classifier_learns_public_data_and_scores_reconstructions() -> None:
    public, private = quadrant_images(64, seed=0), quadrant_images(8, seed=1)
    reference = train_reference_classifier(public, num_classes=4, mean=(0.3,), std=(0.3,),
                                           epochs=15, batch_size=16, seed=0)
    assert not reference.training

    exact = score_reconstruction(private.images, private.labels, private.images, private.labels,
                                 reference=reference)
    assert exact.summary["ref_accuracy"] == exact.summary["ref_accuracy_truth"] == 1.0
    assert exact.summary["mse"] == 0.0

    flat = torch.full_like(private.images, 0.3)  # a reconstruction that kept nothing
    blind = score_reconstruction(flat, private.labels, private.images, private.labels,
                                 reference=reference)
    assert blind.summary["ref_accuracy"] <= 0.5
    expected = (flat - private.images).pow(2).flatten(1).mean(1).mean()
    assert abs(blind.summary["mse"] - float(expected)) < 1e-6
    assert "ref_accuracy" not in score_reconstruction(flat, private.labels, private.images,
                                                      private.labels).summary
