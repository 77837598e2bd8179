"""Scores up to brightness and contrast, the no-information baseline, statistics, worst case."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from fl_shadow import metrics
from fl_shadow.scoring import score_reconstruction


def images(n: int, seed: int = 0, size: int = 16) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    # Smooth-ish images in [0.1, 0.9], so that a*x + b stays inside [0, 1] for the maps below.
    base = torch.rand(n, 1, size // 4, size // 4, generator=g)
    return 0.1 + 0.8 * torch.nn.functional.interpolate(base, size=size, mode="bilinear")


# ---- up to brightness and contrast -----------------------------------------------------------
def test_affine_fit_of_the_truth_is_the_identity_and_equals_raw_psnr() -> None:
    t = images(3)
    noisy = (t + 0.05 * torch.randn(t.shape, generator=torch.Generator().manual_seed(1))
             ).clamp(0, 1)
    a, b = metrics.affine_fit(t, t)
    assert torch.allclose(a, torch.ones(3, dtype=torch.float64))
    assert torch.allclose(b, torch.zeros(3, dtype=torch.float64), atol=1e-12)
    assert torch.equal(metrics.psnr_affine(t, t), metrics.psnr(t, t))
    # The best map can only do better than the identity.
    assert bool((metrics.psnr_affine(noisy, t) >= metrics.psnr(noisy, t) - 1e-4).all())


@pytest.mark.parametrize(("a", "b"), [(0.5, 0.2), (1.2, -0.1), (0.25, 0.6)])
def test_scores_are_unchanged_by_brightness_and_contrast(a: float, b: float) -> None:
    t = images(4, seed=2)
    r = (t + 0.03 * torch.randn(t.shape, generator=torch.Generator().manual_seed(3))
         ).clamp(0.1, 0.9)
    shifted = a * r + b
    assert float(shifted.min()) >= 0 and float(shifted.max()) <= 1
    for score in (metrics.psnr_affine, metrics.ssim_affine, metrics.ncc):
        assert torch.allclose(score(shifted, t), score(r, t), atol=1e-4), score.__name__
    assert not torch.allclose(metrics.psnr(shifted, t), metrics.psnr(r, t), atol=1.0)


def test_hand_computed_values() -> None:
    # Truth: half 0, half 1; a constant reconstruction explains nothing: a = 0, b = 0.5.
    t = torch.zeros(1, 1, 4, 4)
    t[..., :2] = 1.0
    flat = torch.full_like(t, 0.3)
    a, b = metrics.affine_fit(flat, t)
    assert float(a) == 0.0 and float(b) == pytest.approx(0.5)
    assert float(metrics.psnr_affine(flat, t)) == pytest.approx(10 * math.log10(1 / 0.25),
                                                                abs=1e-4)
    assert float(metrics.ncc(flat, t)) == 0.0
    # The inverted image: negative contrast is not allowed (a = 0), NCC is -1.
    inverted = 1 - t
    assert float(metrics.affine_fit(inverted, t)[0]) == 0.0
    assert float(metrics.ncc(inverted, t)) == pytest.approx(-1.0)


def test_invalid_inputs_name_the_argument() -> None:
    with pytest.raises(ValueError, match="x must have values in \\[0, 1\\]"):
        metrics.psnr_affine(images(1) * 3, images(1))
    with pytest.raises(ValueError, match="same shape"):
        metrics.ncc(images(1), images(2))


# ---- the no-information baseline ------------------------------------------------------------
def test_baselines_are_the_public_mean_and_the_closest_public_image() -> None:
    public = images(5, seed=4)
    truth = torch.cat([public[3:4] * 0.99 + 0.005, images(1, seed=9)])
    mean = metrics.public_mean(public)
    assert torch.allclose(mean, public.mean(0, keepdim=True))
    nearest = metrics.nearest_public(public, truth)
    assert torch.equal(nearest[0], public[3])
    scores = metrics.baseline_scores(public, truth)
    assert set(scores) == set(metrics.BASELINES)
    expected = metrics.psnr(mean.expand_as(truth).contiguous(), truth).double().numpy()
    np.testing.assert_allclose(scores["public_mean"]["psnr"], expected, rtol=1e-6)
    assert scores["public_nearest"]["psnr"][0] > 40  # the truth is nearly public image 3


def test_leakage_is_attack_minus_baseline_and_lpips_is_turned_around() -> None:
    attack = {"psnr": np.array([30.0, 20.0]), "lpips": np.array([0.1, 0.5])}
    baseline = {"psnr": np.array([18.0, 22.0]), "lpips": np.array([0.4, 0.4])}
    out = metrics.leakage(attack, baseline)
    np.testing.assert_allclose(out["psnr"], [12.0, -2.0])
    np.testing.assert_allclose(out["lpips"], [0.3, -0.1])


def test_scoring_reports_baseline_leakage_and_the_image_index() -> None:
    truth = images(2, seed=5)
    public = images(6, seed=6)
    recon = (truth[[1, 0]] * 0.5 + 0.25)
    scores = score_reconstruction(recon, torch.tensor([1, 0]), truth, torch.tensor([0, 1]),
                                  public=public)
    s = scores.summary
    for name in metrics.PRIVACY_SCORES:
        assert {name, f"prior_{name}", f"nearest_{name}", f"leak_{name}"} <= set(s), name
    assert s["psnr_affine"] > 60 and s["ncc"] > 0.999 and s["psnr"] < 30
    assert s["leak_psnr_affine"] == pytest.approx(s["psnr_affine"] - s["prior_psnr_affine"])
    assert scores.truth_index.tolist() == [0, 1]


# ---- statistics and the worst case ------------------------------------------------------------
def test_mean_ci_on_known_values() -> None:
    # t(0.975, df=4) = 2.776445; values 1..5: mean 3, s = sqrt(2.5).
    ci = metrics.mean_ci([1, 2, 3, 4, 5])
    assert ci.mean == 3.0 and ci.n == 5
    assert ci.half_width == pytest.approx(2.776445 * math.sqrt(2.5) / math.sqrt(5), rel=1e-6)
    assert ci.text(2) == "3.00 ± 1.96"
    single = metrics.mean_ci([4.0])
    assert math.isnan(single.half_width) and not single.excludes_zero and single.text() == "4.00"
    with pytest.raises(ValueError, match="finite"):
        metrics.mean_ci([1.0, float("nan")])
    with pytest.raises(ValueError, match="at least one"):
        metrics.mean_ci([])


def test_paired_differences_and_significance() -> None:
    values = {0: 10.0, 1: 11.0, 2: 12.0, 3: 99.0}
    reference = {0: 8.0, 1: 9.0, 2: 10.5}
    diff = metrics.paired_difference(values, reference)  # seeds 0-2 only
    assert diff.n == 3 and diff.mean == pytest.approx((2 + 2 + 1.5) / 3)
    assert diff.excludes_zero
    noisy = metrics.paired_difference({0: 1.0, 1: -1.0, 2: 0.5}, {0: 0.0, 1: 0.0, 2: 0.0})
    assert not noisy.excludes_zero
    with pytest.raises(ValueError, match="no seed in common"):
        metrics.paired_difference({0: 1.0}, {1: 1.0})


def test_worst_case_is_the_maximum_over_attacks_and_the_minimum_for_lpips() -> None:
    per_attack = {"ig": [20.0, 31.0, 5.0], "gi": [25.0, 30.0, 7.0], "gias": [1.0, 2.0, 6.0]}
    np.testing.assert_array_equal(metrics.worst_case(per_attack, "psnr"), [25.0, 31.0, 7.0])
    lpips = {"ig": [0.3, 0.1], "gi": [0.2, 0.4]}
    np.testing.assert_array_equal(metrics.worst_case(lpips, "lpips"), [0.2, 0.1])
    with pytest.raises(ValueError, match="different numbers of images"):
        metrics.worst_case({"a": [1.0], "b": [1.0, 2.0]}, "psnr")
