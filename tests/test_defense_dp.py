"""Client-level DP: clipping, Gaussian noise, BatchNorm buffers and the RDP accountant."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
from opacus.accountants import RDPAccountant
from torch import nn

from clients.defended import LocalData
from fl_shadow import flower_keys as keys
from fl_shadow.apps.federation import Federation
from fl_shadow.config import load_config
from fl_shadow.defenses.base import DefenseContext, build_defense
from fl_shadow.defenses.dp import DifferentialPrivacy, rdp_epsilon
from fl_shadow.errors import ConfigError
from fl_shadow.models import build_model


def tiny_model(norm: str = "batch") -> nn.Module:
    torch.manual_seed(0)
    return build_model("convnet", in_channels=1, num_classes=3, image_size=8, width=4, norm=norm)


def ctx(server_round: int = 1, seed: int = 0) -> DefenseContext:
    return DefenseContext(server_round=server_round, num_rounds=10, client_id=0,
                          device=torch.device("cpu"), generator=torch.Generator().manual_seed(seed))


def update_of(model: nn.Module, scale: float, seed: int = 1) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {k: torch.randn(v.shape, generator=g) * scale if v.is_floating_point()
            else torch.ones_like(v) for k, v in model.state_dict().items()}


def norm_of(update: dict[str, torch.Tensor], names: list[str]) -> float:
    return math.sqrt(sum(float(update[k].double().pow(2).sum()) for k in names))


def dp(**kw: object) -> DifferentialPrivacy:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return build_defense("dp", kw)  # type: ignore[return-value]


def test_clipped_update_norm_is_at_most_clip_norm_and_keeps_its_direction() -> None:
    model = tiny_model()
    update = update_of(model, 5.0)
    names = [n for n, _ in model.named_parameters()]
    out = dp(clip_norm=0.5, noise_multiplier=0.0).protect_update(update, model, ctx())
    assert norm_of(out, names) <= 0.5 * (1 + 1e-6)
    assert norm_of(out, names) == pytest.approx(0.5, rel=1e-5)
    scale = 0.5 / norm_of(update, names)
    for k in names:
        assert torch.allclose(out[k], update[k] * scale)


def test_zero_strength_gives_back_the_update_exactly() -> None:
    model = tiny_model(norm="none")  # no buffers: every key is a trainable parameter
    update = update_of(model, 0.01)
    out = dp(clip_norm=1e9, noise_multiplier=0.0).protect_update(update, model, ctx())
    assert out.keys() == update.keys()
    assert all(torch.equal(out[k], update[k]) for k in update)


def test_noise_std_is_noise_multiplier_times_clip_norm() -> None:
    model = nn.Linear(200, 100)  # 20100 released entries
    update = {k: torch.zeros_like(v) for k, v in model.state_dict().items()}
    out = dp(clip_norm=0.3, noise_multiplier=2.0).protect_update(update, model, ctx())
    noise = torch.cat([v.flatten() for v in out.values()])
    assert float(noise.std()) == pytest.approx(0.6, rel=0.02)
    assert abs(float(noise.mean())) < 0.6 * 4 / math.sqrt(noise.numel())


def test_withhold_mode_sends_no_buffer_update() -> None:
    model = tiny_model()
    update = update_of(model, 1.0)
    out = dp().protect_update(update, model, ctx())
    params = dict(model.named_parameters())
    buffers = [k for k in update if k not in params]
    assert buffers and all(not out[k].any() for k in buffers)
    assert all(not torch.equal(out[k], update[k]) for k in params)  # noised


def test_noise_mode_clips_float_buffers_jointly_and_withholds_counters() -> None:
    model = tiny_model()
    update = update_of(model, 5.0)
    out = dp(clip_norm=0.5, noise_multiplier=0.0, bn_buffers="noise").protect_update(
        update, model, ctx())
    floats = [k for k, v in update.items() if v.is_floating_point()]
    counters = [k for k, v in update.items() if not v.is_floating_point()]
    assert len(floats) > len(dict(model.named_parameters()))
    assert norm_of(out, floats) <= 0.5 * (1 + 1e-6)
    assert counters and all(not out[k].any() for k in counters)


def test_same_generator_seed_same_noise() -> None:
    model = tiny_model()
    update = update_of(model, 1.0)
    a = dp().protect_update(update, model, ctx(seed=3))
    b = dp().protect_update(update, model, ctx(seed=3))
    c = dp().protect_update(update, model, ctx(seed=4))
    assert all(torch.equal(a[k], b[k]) for k in update)
    assert not all(torch.equal(a[k], c[k]) for k in update)


@pytest.mark.parametrize(("sigma", "q"), [(1.0, 1.0), (1.1, 0.25)])
def test_epsilon_grows_with_rounds_and_matches_opacus(sigma: float, q: float) -> None:
    model = tiny_model()
    defense = dp(noise_multiplier=sigma, sample_rate=q, delta=1e-5)
    accountant = RDPAccountant()
    previous = 0.0
    for server_round in range(1, 5):
        c = ctx(server_round)
        defense.protect_update(update_of(model, 1.0), model, c)
        accountant.step(noise_multiplier=sigma, sample_rate=q)
        assert c.metrics["epsilon"] == pytest.approx(accountant.get_epsilon(delta=1e-5),
                                                     rel=1e-12)
        assert c.metrics["epsilon"] > previous
        previous = c.metrics["epsilon"]


def test_epsilon_edge_cases() -> None:
    assert rdp_epsilon(noise_multiplier=1.0, sample_rate=1.0, rounds=0, delta=1e-5) == 0.0
    assert rdp_epsilon(noise_multiplier=0.0, sample_rate=1.0, rounds=1, delta=1e-5) == math.inf
    # a larger delta buys a smaller epsilon
    assert (rdp_epsilon(noise_multiplier=1.0, sample_rate=1.0, rounds=3, delta=1e-3)
            < rdp_epsilon(noise_multiplier=1.0, sample_rate=1.0, rounds=3, delta=1e-5))


@pytest.mark.parametrize(("key", "value", "expected"), [
    ("noise_multiplier", -1, "a number >= 0"),
    ("noise_multiplier", math.inf, "a finite number"),
    ("clip_norm", 0, "a number > 0"),
    ("delta", 1.5, "a number < 1"),
    ("delta", 0, "a number > 0"),
    ("sample_rate", 0, "a number > 0"),
    ("sample_rate", 1.5, "a number <= 1"),
])
def test_bad_params_name_the_key(key: str, value: float, expected: str) -> None:
    with pytest.raises(ConfigError, match=rf"^defense\.params\.{key}: expected {expected}, "):
        build_defense("dp", {key: value})


def test_bad_buffer_mode_names_the_key() -> None:
    with pytest.raises(ConfigError, match=r"^defense\.params\.bn_buffers: expected one of "):
        build_defense("dp", {"bn_buffers": "drop"})


def test_weak_settings_warn_once_at_load() -> None:
    from fl_shadow.apps.experiment import load_experiment

    with pytest.warns(UserWarning, match="noise_multiplier is 0"):
        load_experiment(None, ["defense.name=dp", "defense.params.noise_multiplier=0"],
                        data=False)
    with pytest.warns(UserWarning, match=r"sample_rate \(0.5\) is below strategy.fraction_fit "
                                         r"\(1\): the reported epsilon is too small"):
        load_experiment(None, ["defense.name=dp", "defense.params.sample_rate=0.5"],
                        data=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # parsing the params again (each round) is silent
        build_defense("dp", {"noise_multiplier": 0, "sample_rate": 0.5})


def test_defended_client_sends_a_clipped_update_and_reports_epsilon() -> None:
    config = load_config(None, [
        "partition.num_clients=2", "partition.sizes=[4, 6]", "partition.batch_sizes=[2, 3]",
        "strategy.min_fit_clients=2", "strategy.min_available_clients=2", "model.width=4",
        "data.image_size=8", "train.device=cpu", "attack.clients=[0, 1]", "train.lr=0.5",
        "defense.name=dp", "defense.params.clip_norm=0.01", "defense.params.noise_multiplier=1"])
    images = torch.rand(6, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    data = LocalData(images, torch.arange(6) % 3, np.arange(6), (0.5,), (0.25,), 3)
    model = tiny_model()
    arrays = [v.numpy().copy() for v in model.state_dict().values()]
    client = Federation(config).client_for(1, data, context=None, send_audit=False)
    sent, _, metrics = client.fit(arrays, {keys.SERVER_ROUND: 2, keys.NUM_ROUNDS: 3})
    params = dict(model.named_parameters())
    names = list(model.state_dict())
    deltas = {k: a - b for k, a, b in zip(names, sent, arrays)}
    for k in names:
        if k not in params:
            assert not deltas[k].any(), k  # buffers withheld
    noise = np.concatenate([deltas[k].ravel() for k in params])
    assert float(noise.std()) == pytest.approx(0.01, rel=0.15)  # noise dominates the clipped update
    assert metrics["defense-epsilon"] == pytest.approx(
        rdp_epsilon(noise_multiplier=1.0, sample_rate=1.0, rounds=2, delta=1e-5))
