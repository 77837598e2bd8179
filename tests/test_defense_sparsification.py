"""Sparsification: per-layer magnitude pruning of the update that leaves the client."""

from __future__ import annotations

import math
import re

import numpy as np
import pytest
import torch

from clients.defended import LocalData
from fl_shadow import flower_keys as keys
from fl_shadow.apps.federation import Federation
from fl_shadow.config import load_config
from fl_shadow.defenses.base import DefenseContext, build_defense
from fl_shadow.defenses.sparsification import (
    Sparsification,
    SparsificationParams,
    percentile,
    prune_by_magnitude,
)
from fl_shadow.errors import ConfigError
from fl_shadow.models import build_model


def tiny_model() -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model("convnet", in_channels=1, num_classes=3, image_size=8, width=4)


def ctx() -> DefenseContext:
    return DefenseContext(server_round=1, num_rounds=1, client_id=0, device=torch.device("cpu"),
                          generator=torch.Generator().manual_seed(0))


def random_update(model: torch.nn.Module, seed: int = 1) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {k: torch.randn(v.shape, generator=g) if v.is_floating_point() else v + 3
            for k, v in model.state_dict().items()}


@pytest.mark.parametrize("q", [0.0, 20.0, 37.5, 50.0, 99.0, 100.0])
def test_percentile_matches_numpy(q: float) -> None:
    values = torch.randn(7, 13, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    assert float(percentile(values, q)) == pytest.approx(np.percentile(values.numpy(), q),
                                                         rel=1e-12, abs=1e-12)


def test_each_layer_keeps_its_largest_entries_in_the_stated_share() -> None:
    model = tiny_model()
    update = random_update(model)
    out = Sparsification(SparsificationParams(prune_percent=20.0)).protect_update(
        update, model, ctx())
    for name, _ in model.named_parameters():
        n = update[name].numel()
        zeroed = int((out[name] == 0).sum())
        assert zeroed == math.ceil(20.0 * (n - 1) / 100), name  # numpy percentile, strict <
        if (20 * n) % 100 == 0:
            assert zeroed == n // 5, name  # exactly 20% removed when 20% of n is whole
        kept = out[name] != 0
        assert torch.equal(out[name][kept], update[name][kept])  # survivors unchanged
        if kept.any() and (~kept).any():
            assert update[name][~kept].abs().max() < update[name][kept].abs().min()


def test_exact_share_on_a_hundred_entries() -> None:
    values = torch.randperm(100).float() - 49.5  # distinct magnitudes in pairs, none zero
    values = values * torch.linspace(1.0, 1.1, 100)  # break the pairs
    for p in (10.0, 25.0, 90.0):
        assert int(torch.count_nonzero(prune_by_magnitude(values, p))) == 100 - int(p)


def test_buffers_pass_unchanged_and_density_is_reported() -> None:
    model = tiny_model()
    update = random_update(model)
    c = ctx()
    out = Sparsification(SparsificationParams(prune_percent=90.0)).protect_update(
        update, model, c)
    params = dict(model.named_parameters())
    for name in update:
        if name not in params:
            assert out[name] is update[name]
    assert 0.09 < c.metrics["density"] < 0.2


def test_zero_percent_gives_back_the_update_exactly() -> None:
    model = tiny_model()
    update = random_update(model)
    out = Sparsification(SparsificationParams(prune_percent=0.0)).protect_update(
        update, model, ctx())
    assert all(torch.equal(out[k], update[k]) for k in update)


def test_ties_at_the_threshold_survive() -> None:
    flat = torch.full((10,), 0.5)
    assert torch.equal(prune_by_magnitude(flat, 80.0), flat)


@pytest.mark.parametrize(("bad", "bound"), [(-1, ">= 0"), (100.5, "<= 100"),
                                            (math.inf, None), (math.nan, None)])
def test_bad_percent_names_the_key(bad: float, bound: str | None) -> None:
    expected = f"a number {bound}" if bound else "a finite number"
    with pytest.raises(ConfigError, match=rf"^defense\.params\.prune_percent: expected "
                                          rf"{re.escape(expected)}, got "):
        build_defense("sparsification", {"prune_percent": bad})


def test_defended_client_sends_a_sparse_update() -> None:
    config = load_config(None, [
        "partition.num_clients=2", "partition.sizes=[4, 6]", "partition.batch_sizes=[2, 3]",
        "strategy.min_fit_clients=2", "strategy.min_available_clients=2", "model.width=4",
        "data.image_size=8", "train.device=cpu", "attack.clients=[0, 1]",
        "defense.name=sparsification", "defense.params.prune_percent=90"])
    images = torch.rand(6, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    data = LocalData(images, torch.arange(6) % 3, np.arange(6), (0.5,), (0.25,), 3)
    model = tiny_model()
    arrays = [v.numpy().copy() for v in model.state_dict().values()]
    client = Federation(config).client_for(1, data, context=None, send_audit=False)
    sent, _, metrics = client.fit(arrays, {keys.SERVER_ROUND: 1, keys.NUM_ROUNDS: 1})
    params = dict(model.named_parameters())
    for (name, value), before, after in zip(model.state_dict().items(), arrays, sent):
        if name in params:
            changed = int((after != before).sum())
            assert changed <= value.numel() - math.ceil(0.9 * (value.numel() - 1)), name
    assert metrics["defense-density"] <= 0.11
