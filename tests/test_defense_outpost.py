"""OUTPOST: pruning plus Fisher-masked, risk-scaled noise with a decaying probability."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from fl_shadow.defenses.base import Defense, DefenseContext, build_defense
from fl_shadow.defenses.outpost import (
    Outpost,
    OutpostParams,
    fisher_masks,
    layer_risk,
    perturbation_probability,
)
from fl_shadow.defenses.sparsification import prune_by_magnitude
from fl_shadow.errors import ConfigError
from fl_shadow.models import build_model
from fl_shadow.training import LocalTraining, train_locally


def tiny_model() -> nn.Module:
    torch.manual_seed(0)
    return build_model("convnet", in_channels=1, num_classes=3, image_size=8, width=4)


def ctx(step: int = 0, seed: int = 0) -> DefenseContext:
    return DefenseContext(server_round=1, num_rounds=1, client_id=0, device=torch.device("cpu"),
                          generator=torch.Generator().manual_seed(seed), step=step)


def grads_of(model: nn.Module) -> list[torch.Tensor]:
    x = torch.randn(4, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    loss = nn.functional.cross_entropy(model(x), torch.tensor([0, 1, 2, 0]))
    return list(torch.autograd.grad(loss, list(model.parameters())))


def protect(defense: Defense, grads: list[torch.Tensor], model: nn.Module,
            c: DefenseContext) -> list[torch.Tensor]:
    return defense.protect_gradient(grads, model, torch.zeros(1), torch.zeros(1), c)


def test_probability_decays_with_the_local_iteration() -> None:
    assert perturbation_probability(0, beta=0.125) == pytest.approx(1 / 1.125)
    assert perturbation_probability(39, beta=0.125) == pytest.approx(1 / 6)
    assert perturbation_probability(10, beta=0.0) == 1.0


def test_measured_perturbation_frequency_follows_the_probability() -> None:
    model = nn.Linear(3, 2)
    grads = [torch.ones(2, 3), torch.ones(2)]
    measured = {}
    for step in (0, 39):
        defense = Outpost(OutpostParams(noise_base=0.0))  # prunes equal entries: a no-op
        c = ctx(step, seed=step)
        for _ in range(400):
            protect(defense, grads, model, c)
        measured[step] = c.metrics["perturbed_fraction"]
    assert measured[0] == pytest.approx(1 / 1.125, abs=0.06)
    assert measured[39] == pytest.approx(1 / 6, abs=0.06)


def test_risk_is_the_clipped_weight_variance() -> None:
    assert layer_risk(torch.tensor([0.0, 2.0])) == 1.0  # var 2, clipped to 1
    assert layer_risk(torch.tensor([0.0, 0.2])) == pytest.approx(0.02)
    assert layer_risk(torch.tensor([5.0])) == 0.0


def test_fisher_mask_is_a_global_top_phi_percent_over_dim_zero() -> None:
    g1 = torch.tensor([[1.0, 3.0], [1.0, 3.0]])  # F = [1, 9]
    g2 = torch.tensor([2.0, 0.0])  # bias: F = mean([4, 0]) = 2 (scalar)
    masks = fisher_masks([g1, g2], phi=40.0)  # tau = pct([1, 9, 2], 60) = 2.6
    assert masks[0].tolist() == [0.0, 1.0] and masks[1].item() == 0.0


def test_perturbation_prunes_then_adds_noise_where_the_fisher_mask_is_set() -> None:
    model = tiny_model()
    grads = grads_of(model)
    out = Outpost(OutpostParams(beta=0.0)).perturb(grads, model, torch.Generator().manual_seed(0))
    masks = fisher_masks(grads, phi=40.0)
    for g, o, m, w in zip(grads, out, masks, model.parameters()):
        pruned = prune_by_magnitude(g, 80.0)
        where_noise = m.expand_as(g).bool()
        assert torch.equal(o[~where_noise], pruned[~where_noise])
        if layer_risk(w) > 0 and where_noise.any():
            assert not torch.equal(o[where_noise], pruned[where_noise])


def test_noise_std_is_layer_risk_times_noise_base() -> None:
    model = nn.Linear(100, 200, bias=False)
    with torch.no_grad():
        model.weight.copy_(torch.randn(200, 100, generator=torch.Generator().manual_seed(0)) * 0.3)
    grads = [torch.zeros(200, 100)]  # every Fisher entry ties at 0: all masked in
    out = Outpost(OutpostParams(phi=40.0, noise_base=0.8)).perturb(
        grads, model, torch.Generator().manual_seed(1))
    expected = layer_risk(model.weight) * 0.8
    assert float(out[0].std()) == pytest.approx(expected, rel=0.03)


def test_zero_strength_gives_back_the_gradient_exactly() -> None:
    model = tiny_model()
    grads = grads_of(model)
    defense = Outpost(OutpostParams(beta=0.0, prune_base=0.0, noise_base=0.0))
    c = ctx()
    out = protect(defense, grads, model, c)
    assert c.metrics["perturbed_fraction"] == 1.0  # it ran, and changed nothing
    assert all(torch.equal(a, b) for a, b in zip(out, grads))


def test_same_generator_seed_same_perturbation() -> None:
    model = tiny_model()
    grads = grads_of(model)
    runs = [protect(Outpost(OutpostParams(beta=0.0)), grads, model, ctx(seed=s)) for s in (5, 5, 6)]
    assert all(torch.equal(a, b) for a, b in zip(runs[0], runs[1]))
    assert not all(torch.equal(a, b) for a, b in zip(runs[0], runs[2]))


@pytest.mark.parametrize(("params", "match"), [
    ({"beta": -1}, r"^defense\.params\.beta: expected a number >= 0"),
    ({"phi": 140}, r"^defense\.params\.phi: expected a number <= 100, got 140$"),
    ({"phi": -1}, r"^defense\.params\.phi: expected a number >= 0, got -1$"),
    ({"prune_base": -5}, r"^defense\.params\.prune_base: expected a number >= 0, got -5$"),
    ({"prune_base": 101}, r"^defense\.params\.prune_base: expected a number <= 100, got 101$"),
    ({"noise_base": -0.1}, r"^defense\.params\.noise_base: expected a number >= 0"),
])
def test_bad_params_name_the_key(params: dict[str, float], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        build_defense("outpost", params)


def test_train_locally_applies_it_to_every_step() -> None:
    x, y = torch.randn(6, 1, 8, 8), torch.tensor([0, 1, 2, 0, 1, 2])
    plan = LocalTraining(lr=0.1, batch_size=2)
    results = []
    for defense in (Defense(), Outpost(OutpostParams(beta=0.0))):
        model = tiny_model()
        c = ctx()
        train_locally(model, x, y, plan, defense=defense, ctx=c,
                      generator=torch.Generator().manual_seed(1))
        results.append((model, c))
    (plain, _), (defended, c) = results
    assert c.metrics["perturbed_fraction"] == 1.0
    assert not torch.equal(plain.fc.weight, defended.fc.weight)
