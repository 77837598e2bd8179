"""PSNR, SSIM, de-normalization and the shared input checks (fl_shadow.metrics)."""

import pytest
import torch

from fl_shadow import metrics


def _images(n: int = 4, channels: int = 3, size: int = 32, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.rand(n, channels, size, size, generator=gen)


def _noisy(x: torch.Tensor, sigma: float, seed: int = 1) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return (x + sigma * torch.randn(x.shape, generator=gen)).clamp(0, 1)


# ------------------------------------------------------------------------------------------ PSNR
def test_psnr_uniform_offset_is_20_db_exactly():
    # Prepare: MSE = 0.1^2 = 0.01 -> 10 log10(1 / 0.01) = 20 dB
    x = torch.full((2, 3, 8, 8), 0.4, dtype=torch.float64)
    # Execute
    value = metrics.psnr(x, x + 0.1)
    # Assert
    assert value.shape == (2,)
    assert value.dtype == torch.float32
    assert value.tolist() == pytest.approx([20.0, 20.0], abs=1e-6)


def test_psnr_is_per_image():
    x = torch.full((2, 1, 8, 8), 0.5)
    y = torch.stack([x[0] + 0.1, x[1] + 0.01])  # MSE 1e-2 and 1e-4
    assert metrics.psnr(x, y).tolist() == pytest.approx([20.0, 40.0], abs=1e-3)


def test_psnr_mse_is_over_all_values_of_an_image():
    # One channel of three off by 0.3: MSE = 0.09 / 3 = 0.03 -> 10 log10(1/0.03) = 15.2288 dB
    x = torch.zeros(1, 3, 4, 4)
    y = x.clone()
    y[:, 0] = 0.3
    assert metrics.psnr(x, y).item() == pytest.approx(15.228787, abs=1e-4)


def test_psnr_identical_images_hits_the_floor_not_inf():
    x = _images()
    assert metrics.psnr(x, x).tolist() == pytest.approx([100.0] * 4)


def test_psnr_symmetric_and_lower_when_noisier():
    x = _images()
    y1, y2 = _noisy(x, 0.05), _noisy(x, 0.2)
    assert torch.equal(metrics.psnr(x, y1), metrics.psnr(y1, x))
    assert bool((metrics.psnr(x, y1) > metrics.psnr(x, y2)).all())


# ------------------------------------------------------------------------------------------ SSIM
def test_ssim_identical_is_one():
    x = _images()
    assert metrics.ssim(x, x).tolist() == pytest.approx([1.0] * 4, abs=1e-6)


def test_ssim_constant_images_hand_computed():
    # Constant images: variances are 0, so SSIM = (2ab + C1) / (a^2 + b^2 + C1), C1 = 0.01^2.
    a, b, c1 = 0.5, 0.6, 1e-4
    x = torch.full((1, 1, 16, 16), a)
    y = torch.full((1, 1, 16, 16), b)
    expected = (2 * a * b + c1) / (a * a + b * b + c1)  # 0.983609...
    assert metrics.ssim(x, y).item() == pytest.approx(expected, abs=1e-5)


def test_ssim_symmetric_bounded_and_lower_when_noisier():
    x = _images()
    y1, y2 = _noisy(x, 0.05), _noisy(x, 0.2)
    s1, s2 = metrics.ssim(x, y1), metrics.ssim(x, y2)
    assert torch.allclose(s1, metrics.ssim(y1, x), atol=1e-6)
    assert bool((s1 > s2).all())
    assert bool((s1 <= 1.0 + 1e-6).all())


@pytest.mark.parametrize(("height", "width", "expected"),
                         [(32, 32, 11), (11, 40, 11), (10, 12, 9), (8, 8, 7), (3, 5, 3)])
def test_ssim_kernel_size_fits_small_images(height, width, expected):
    assert metrics.ssim_kernel_size(height, width) == expected


def test_ssim_works_on_small_grayscale_images():
    x = _images(n=2, channels=1, size=8)
    value = metrics.ssim(x, _noisy(x, 0.1))
    assert value.shape == (2,)
    assert bool(torch.isfinite(value).all())
    assert metrics.ssim(x, x).tolist() == pytest.approx([1.0, 1.0], abs=1e-6)


def test_ssim_rejects_images_below_3_px():
    x = torch.rand(1, 1, 2, 8)
    with pytest.raises(ValueError, match=r"at least 3x3 px, got 2x8"):
        metrics.ssim(x, x)


# ----------------------------------------------------------------------------------- validation
def test_values_just_outside_unit_range_are_clamped():
    x = torch.full((1, 1, 8, 8), 1.0005)  # within RANGE_TOLERANCE: treated as 1.0
    y = torch.ones(1, 1, 8, 8)
    assert metrics.psnr(x, y).item() == pytest.approx(100.0)


@pytest.mark.parametrize(
    ("x", "y", "error", "message"),
    [
        (torch.rand(2, 3, 8, 8) * 2 - 1, torch.rand(2, 3, 8, 8), ValueError,
         r"x must have values in \[0, 1\] \(de-normalize first\)"),
        (torch.rand(2, 3, 8, 8), torch.rand(2, 3, 8, 8) + 0.5, ValueError,
         r"y must have values in \[0, 1\]"),
        (torch.rand(3, 8, 8), torch.rand(3, 8, 8), ValueError, r"shape \(N, C, H, W\)"),
        (torch.rand(2, 2, 8, 8), torch.rand(2, 2, 8, 8), ValueError, r"1 or 3 channels, got 2"),
        (torch.rand(2, 3, 8, 8), torch.rand(3, 3, 8, 8), ValueError,
         r"x and y must have the same shape"),
        (torch.full((1, 1, 4, 4), float("nan")), torch.rand(1, 1, 4, 4), ValueError,
         r"x contains NaN or Inf"),
        (torch.zeros(0, 3, 8, 8), torch.zeros(0, 3, 8, 8), ValueError, r"at least one image"),
        (torch.zeros(1, 1, 4, 4, dtype=torch.uint8), torch.zeros(1, 1, 4, 4), TypeError,
         r"floating-point tensor"),
        ([[0.5]], torch.rand(1, 1, 4, 4), TypeError, r"x must be a torch.Tensor, got list"),
    ],
)
@pytest.mark.parametrize("metric", [metrics.psnr, metrics.ssim])
def test_invalid_inputs_raise(metric, x, y, error, message):
    with pytest.raises(error, match=message):
        metric(x, y)


# ---------------------------------------------------------------------------------- denormalize
def test_denormalize_inverts_normalization_and_clamps():
    mean, std = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)
    x = _images(n=2)
    m = torch.tensor(mean).view(1, 3, 1, 1)
    s = torch.tensor(std).view(1, 3, 1, 1)
    normalized = (x - m) / s
    assert torch.allclose(metrics.denormalize(normalized, mean=mean, std=std), x, atol=1e-6)
    assert float(metrics.denormalize(normalized + 100, mean=mean, std=std).max()) == 1.0


def test_denormalize_accepts_one_value_for_all_channels():
    x = torch.zeros(1, 3, 2, 2)
    assert torch.equal(metrics.denormalize(x, mean=[0.5], std=[1.0]), torch.full_like(x, 0.5))


@pytest.mark.parametrize(("mean", "std", "message"), [
    ((0.5, 0.5), (1.0,), r"mean must have 1 or 3 values, got 2"),
    ((0.5,), (0.0,), r"std values must be > 0"),
])
def test_denormalize_rejects_bad_statistics(mean, std, message):
    with pytest.raises(ValueError, match=message):
        metrics.denormalize(torch.zeros(1, 3, 2, 2), mean=mean, std=std)
