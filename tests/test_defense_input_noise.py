"""Gaussian input noise at a target distortion: the control of input-space defenses."""

from __future__ import annotations

import math

import pytest
import torch

from fl_shadow.defenses import DefenseContext, build_defense, describe_defense
from fl_shadow.defenses.input_noise import (
    InputNoiseParams,
    attacker_model,
    gaussian_noise,
    noise_std,
    psnr_of_noise,
)
from fl_shadow.errors import ConfigError

STD = (0.25,)


def context(server_round: int = 1) -> DefenseContext:
    return DefenseContext(server_round=server_round, num_rounds=3, client_id=0,
                          device=torch.device("cpu"),
                          generator=torch.Generator().manual_seed(server_round),
                          mean=(0.5,), std=STD)


def test_noise_std_by_hand() -> None:
    # 20 dB: MSE 0.01, std 0.1; 40 dB: std 0.01
    assert noise_std(target_psnr_db=20.0) == pytest.approx(0.1)
    assert noise_std(target_psnr_db=40.0) == pytest.approx(0.01)


@pytest.mark.parametrize("target", [15.0, 21.0, 30.0])
def test_the_noised_input_is_at_its_target_psnr(target: float) -> None:
    defense, ctx = build_defense("input_noise", {"target_psnr_db": target}), context()
    x = torch.randn(8, 1, 32, 32)
    defense.setup(x, torch.zeros(8, dtype=torch.long), torch.nn.Identity(), ctx)
    ctx.batch_index = torch.arange(8)
    noise = defense.perturb_batch(x, torch.zeros(8), torch.nn.Identity(), ctx) - x
    # 1024 pixels per image: the per-image PSNR is within a few tenths of a dB of the target
    torch.testing.assert_close(psnr_of_noise(noise * STD[0]), torch.full((8,), target),
                               atol=0.5, rtol=0)
    assert abs(ctx.metrics["input_noise_psnr"] - target) < 0.2
    assert abs(float(noise.mean())) < 0.05 * float(noise.std())  # zero-mean


def test_fresh_noise_changes_every_step_and_frozen_noise_never() -> None:
    x = torch.zeros(4, 1, 8, 8)
    for fresh in (True, False):
        defense, ctx = build_defense("input_noise", {"fresh": fresh}), context()
        defense.setup(x, torch.zeros(4), torch.nn.Identity(), ctx)
        ctx.batch_index = torch.arange(4)
        a = defense.perturb_batch(x, torch.zeros(4), torch.nn.Identity(), ctx)
        b = defense.perturb_batch(x, torch.zeros(4), torch.nn.Identity(), ctx)
        assert torch.equal(a, b) is (not fresh)
        if not fresh:  # and across rounds, through the client's state
            later = build_defense("input_noise", {"fresh": False})
            later.load_state_dict(defense.state_dict())
            ctx2 = context(2)
            later.setup(x, torch.zeros(4), torch.nn.Identity(), ctx2)
            ctx2.batch_index = torch.tensor([2, 3])
            torch.testing.assert_close(
                later.perturb_batch(x[:2], torch.zeros(2), torch.nn.Identity(), ctx2), a[2:])


def test_per_channel_normalization() -> None:
    noise = gaussian_noise((200, 3, 16, 16), target_psnr_db=20.0, std=(0.1, 0.2, 0.4),
                           generator=torch.Generator().manual_seed(0))
    stds = noise.transpose(0, 1).flatten(1).std(1)
    torch.testing.assert_close(stds, torch.tensor([1.0, 0.5, 0.25]), atol=0.01, rtol=0)


def test_the_adaptive_attacker_draws_the_same_distribution() -> None:
    knowledge = describe_defense("input_noise", {"target_psnr_db": 25.0}, server_round=1,
                                 num_rounds=1, std=STD)
    model = attacker_model(InputNoiseParams(target_psnr_db=25.0), knowledge, [], 0)
    assert model.std == STD
    x = torch.zeros(16, 1, 32, 32)
    noise = model.perturb_input(x, 0) - x
    assert float(noise.std()) * STD[0] == pytest.approx(10 ** (-25 / 20), rel=0.02)
    assert not torch.equal(model.perturb_input(x, 0), model.perturb_input(x, 0))  # EOT draws


def test_params_are_checked_with_the_key_named() -> None:
    with pytest.raises(ConfigError, match="target_psnr_db"):
        build_defense("input_noise", {"target_psnr_db": -3.0})
    with pytest.raises(ConfigError, match="fresh"):
        build_defense("input_noise", {"fresh": "yes"})
    assert math.isfinite(noise_std(target_psnr_db=100.0))


def test_foreground_noise_stays_on_the_anatomy_at_the_same_psnr() -> None:
    unit = torch.zeros(6, 1, 32, 32)
    unit[:, :, 8:24, 4:28] = 0.5  # the anatomy: 384 of 1024 pixels
    x = (unit - 0.5) / STD[0]
    defense, ctx = build_defense("input_noise", {"target_psnr_db": 20.0,
                                                 "region": "foreground"}), context()
    defense.setup(x, torch.zeros(6), torch.nn.Identity(), ctx)
    ctx.batch_index = torch.arange(6)
    noise = (defense.perturb_batch(x, torch.zeros(6), torch.nn.Identity(), ctx) - x) * STD[0]
    assert float(noise[:, :, :8].abs().max()) == 0.0  # the background is untouched
    # 384 noisy pixels per image: the per-image PSNR varies by ~0.3 dB around the target
    assert abs(float(psnr_of_noise(noise).mean()) - 20.0) < 0.3
    assert float((psnr_of_noise(noise) - 20.0).abs().max()) < 1.0
    knowledge = describe_defense("input_noise", {"region": "foreground",
                                                 "target_psnr_db": 20.0}, server_round=1,
                                 num_rounds=1, mean=(0.5,), std=STD)
    model = attacker_model(InputNoiseParams(target_psnr_db=20.0, region="foreground"),
                           knowledge, [], 0)
    modelled = (model.perturb_input(x, 0) - x) * STD[0]
    assert float(modelled[:, :, :8].abs().max()) == 0.0
    assert abs(float(psnr_of_noise(modelled).mean()) - 20.0) < 0.3


def test_outside_cam_noise_spares_the_cam_region_at_the_same_psnr() -> None:
    from fl_shadow.models import ConvNet
    from fl_shadow.saliency import cam_maps, top_fraction_mask

    torch.manual_seed(0)
    model = ConvNet(1, 3, width=4, image_size=16)
    x = torch.randn(5, 1, 16, 16)
    labels = torch.tensor([0, 1, 2, 0, 1])
    defense = build_defense("input_noise", {"target_psnr_db": 20.0, "region": "outside_cam",
                                            "perc_cam": 0.25})
    ctx = context()
    defense.setup(x, labels, model, ctx)
    ctx.batch_index = torch.tensor([3, 1])
    noise = (defense.perturb_batch(x[[3, 1]], labels[[3, 1]], model, ctx) - x[[3, 1]]) * STD[0]
    region = top_fraction_mask(cam_maps(model, x, labels), 0.25)[[3, 1]]  # 64 of 256 pixels
    assert float(noise[:, 0][region].abs().max()) == 0.0
    assert float(noise[:, 0][~region].abs().min()) > 0.0
    assert abs(float(psnr_of_noise(noise).mean()) - 20.0) < 0.5


@pytest.mark.parametrize("target", [0.6, 0.85])
def test_the_ssim_budget_hits_its_target_per_image(target: float) -> None:
    from fl_shadow.metrics import ssim

    unit = torch.zeros(4, 1, 32, 32)
    unit[:, :, 6:26, 6:26] = torch.linspace(0.2, 0.9, 4).view(4, 1, 1, 1)  # different images
    unit[:, :, 10:20, 10:20] += 0.1
    x = (unit - 0.5) / STD[0]
    for region in ("image", "foreground"):
        defense = build_defense("input_noise", {"budget": "ssim", "target_ssim": target,
                                                "region": region})
        ctx = context()
        defense.setup(x, torch.zeros(4, dtype=torch.long), torch.nn.Identity(), ctx)
        ctx.batch_index = torch.arange(4)
        noised = defense.perturb_batch(x, torch.zeros(4), torch.nn.Identity(), ctx)
        scores = ssim((noised * STD[0] + 0.5).clamp(0, 1), unit)
        # a fresh draw at the level calibrated on another draw: SSIM over a 22 x 22 map
        # varies by a few hundredths from draw to draw, the mean much less
        torch.testing.assert_close(scores, torch.full((4,), target), atol=0.06, rtol=0)
        assert abs(ctx.metrics["input_noise_ssim"] - target) < 0.025


def test_sigma_for_ssim_by_hand_and_its_range() -> None:
    from fl_shadow.defenses.input_noise import sigma_for_ssim
    from fl_shadow.metrics import ssim

    clean = torch.full((2, 1, 16, 16), 0.5)
    clean[1, :, 4:12, 4:12] = 0.8
    pattern = torch.randn(2, 1, 16, 16, generator=torch.Generator().manual_seed(0))
    scale = sigma_for_ssim(clean, pattern, target_ssim=0.5)
    torch.testing.assert_close(ssim((clean + scale.view(-1, 1, 1, 1) * pattern).clamp(0, 1),
                                    clean), torch.full((2,), 0.5), atol=1e-3, rtol=0)
    with pytest.raises(ValueError, match="target_ssim"):
        sigma_for_ssim(clean, pattern, target_ssim=1.0)
    with pytest.raises(ConfigError, match="target_ssim"):
        build_defense("input_noise", {"budget": "ssim", "target_ssim": 1.5})


def test_the_ssim_budget_attacker_model_sets_its_level_on_the_candidate() -> None:
    from fl_shadow.metrics import ssim

    unit = torch.full((3, 1, 32, 32), 0.4)
    unit[:, :, 8:24, 8:24] = 0.7
    x = (unit - 0.5) / STD[0]
    params = InputNoiseParams(budget="ssim", target_ssim=0.7, recalibrate_every=2)
    knowledge = describe_defense("input_noise", {"budget": "ssim", "target_ssim": 0.7},
                                 server_round=1, num_rounds=1, mean=(0.5,), std=STD)
    model = attacker_model(params, knowledge, [], 0)
    noised = model.perturb_input(x, 0)
    assert model.replays == 1 and model.sigma is not None
    scores = ssim((noised * STD[0] + 0.5).clamp(0, 1), unit)
    torch.testing.assert_close(scores, torch.full((3,), 0.7), atol=0.05, rtol=0)
    first = model.sigma.clone()
    model.perturb_input(x, 1)  # later steps of the same replay keep the level
    assert torch.equal(model.sigma, first)


def test_per_hospital_strength_and_hospital_psnr_by_hand() -> None:
    from fl_shadow.defenses.base import hospital_psnr_db

    assert hospital_psnr_db(18.0, per_doubling_db=2.0, num_images=1) == 18.0
    assert hospital_psnr_db(18.0, per_doubling_db=2.0, num_images=4) == 22.0
    assert hospital_psnr_db(18.0, per_doubling_db=2.0, num_images=128) == 32.0
    assert hospital_psnr_db(18.0, per_doubling_db=2.0, num_images=0) == 18.0  # unknown
    x = torch.randn(16, 1, 32, 32)
    params = {"target_psnr_db": 18.0, "psnr_per_doubling_db": 2.0}
    defense, ctx = build_defense("input_noise", params), context()
    defense.setup(x, torch.zeros(16, dtype=torch.long), torch.nn.Identity(), ctx)
    ctx.batch_index = torch.arange(16)
    noise = defense.perturb_batch(x, torch.zeros(16), torch.nn.Identity(), ctx) - x
    assert abs(float(psnr_of_noise(noise * STD[0]).mean()) - 26.0) < 0.2  # 18 + 2 log2 16
    knowledge = describe_defense("input_noise", params, server_round=1, num_rounds=1,
                                 mean=(0.5,), std=STD, num_examples=16)
    model = attacker_model(InputNoiseParams(**params), knowledge, [], 0)
    assert abs(float(psnr_of_noise((model.perturb_input(x, 0) - x) * STD[0]).mean())
               - 26.0) < 0.2
    with pytest.raises(ConfigError, match="psnr_per_doubling_db: needs budget: psnr"):
        build_defense("input_noise", {"budget": "ssim", "psnr_per_doubling_db": 1.0})
