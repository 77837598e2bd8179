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
