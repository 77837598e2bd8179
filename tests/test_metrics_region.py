"""Privacy metrics inside a region, and the scorer's Grad-CAM++ foreground scores."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fl_shadow import metrics
from fl_shadow.data.base import ImageSet
from fl_shadow.models import build_model
from fl_shadow.scoring import Scorer, score_reconstruction


def _pair(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    truth = torch.rand(2, 1, 16, 16, generator=g)
    return truth.clone(), truth


def test_region_scores_only_see_the_region() -> None:
    recon, truth = _pair()
    region = torch.zeros(2, 16, 16, dtype=torch.bool)
    region[:, :8] = True
    recon[:, :, 8:] = 1 - recon[:, :, 8:]           # errors outside the region only
    inside = metrics.region_scores(recon, truth, region)
    assert bool((inside["psnr"] == 100).all())      # exact inside (MSE floor)
    torch.testing.assert_close(inside["ssim"], torch.ones(2))
    assert float(inside["lpips"].max()) < 1e-6
    recon[:, :, :8] = (recon[:, :, :8] + 0.1).clamp(0, 1)  # now errors inside as well
    worse = metrics.region_scores(recon, truth, region)
    diff = (recon[:, :, :8] - truth[:, :, :8]).pow(2).flatten(1).mean(1).double()
    torch.testing.assert_close(worse["psnr"], (10 * torch.log10(1 / diff)).float())
    assert bool((worse["ssim"] < 1).all()) and bool((worse["lpips"] > 0).all())


def test_region_scores_reject_bad_regions() -> None:
    recon, truth = _pair()
    with pytest.raises(ValueError, match="shape"):
        metrics.region_scores(recon, truth, torch.ones(2, 8, 8, dtype=torch.bool))
    empty = torch.zeros(2, 16, 16, dtype=torch.bool)
    empty[0] = True
    with pytest.raises(ValueError, match="at least one pixel"):
        metrics.region_scores(recon, truth, empty)


def test_scorer_adds_foreground_scores_with_the_global_model() -> None:
    torch.manual_seed(0)
    model = build_model("convnet", in_channels=1, num_classes=3, image_size=16, width=4)
    keys = list(model.state_dict())
    arrays = [v.numpy() for v in model.state_dict().values()]
    g = torch.Generator().manual_seed(0)
    train = ImageSet(torch.rand(6, 1, 16, 16, generator=g), torch.arange(6) % 3)
    scorer = Scorer(train, model_factory=lambda: build_model(
        "convnet", in_channels=1, num_classes=3, image_size=16, width=4),
        state_keys=keys, mean=(0.5,), std=(0.25,))
    mask = scorer.foreground(train.images[:2], train.labels[:2], arrays)
    assert mask.shape == (2, 16, 16) and int(mask[0].sum()) == round(0.3 * 256)
    recon = (train.images[:2] + 0.05).clamp(0, 1)
    scores = score_reconstruction(recon, train.labels[:2], train.images[:2], train.labels[:2],
                                  foreground=mask)
    assert {"fg_psnr", "fg_ssim", "fg_lpips"} <= set(scores.summary)
    assert len(scores.per_pair["fg_psnr"]) == 2
    plain = score_reconstruction(recon, train.labels[:2], train.images[:2], train.labels[:2])
    assert "fg_psnr" not in plain.summary
    assert np.isfinite(scores.summary["fg_psnr"])
