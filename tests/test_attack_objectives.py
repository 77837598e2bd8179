"""Matching costs and the TV prior (attacks/objectives.py)."""

from __future__ import annotations

import math

import pytest
import torch

from attacks.objectives import cosine_cost, l2_cost, layer_weights, total_variation


def _tensors(seed: int) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(3, 4, generator=g), torch.randn(5, generator=g)]


def test_cosine_cost_hand_value():
    # Prepare: a = (1, 0 | 0), b = (1, 1 | 0): global cosine = 1 / sqrt(2).
    a = [torch.tensor([1.0, 0.0]), torch.tensor([0.0])]
    b = [torch.tensor([1.0, 1.0]), torch.tensor([0.0])]
    # Execute / Assert
    assert float(cosine_cost(a, b)) == pytest.approx(1 - 1 / math.sqrt(2), abs=1e-6)


def test_cosine_cost_is_one_global_cosine_not_a_layer_average():
    a = [torch.tensor([1.0]), torch.tensor([1.0])]
    b = [torch.tensor([1.0]), torch.tensor([-3.0])]
    # global: (1 - 3) / (sqrt(2) * sqrt(10)); per-layer average would be 1 - (1 - 1) / 2 = 1.
    expected = 1 - (-2) / (math.sqrt(2) * math.sqrt(10))
    assert float(cosine_cost(a, b)) == pytest.approx(expected, abs=1e-6)


def test_cosine_cost_properties():
    a, b = _tensors(0), _tensors(1)
    assert float(cosine_cost(a, a)) == pytest.approx(0.0, abs=1e-6)
    assert float(cosine_cost(a, [-t for t in a])) == pytest.approx(2.0, abs=1e-6)
    # Invariant to positive rescaling of either side (the client's lr cancels).
    assert float(cosine_cost([3 * t for t in a], [0.01 * t for t in b])) == pytest.approx(
        float(cosine_cost(a, b)), abs=1e-6)
    assert 0.0 <= float(cosine_cost(a, b)) <= 2.0


def test_layer_weights_select_layers():
    a = [torch.tensor([1.0]), torch.tensor([1.0])]
    b = [torch.tensor([1.0]), torch.tensor([-1.0])]
    only_first = torch.tensor([1.0, 0.0])
    assert float(cosine_cost(a, b, only_first)) == pytest.approx(0.0, abs=1e-6)
    assert float(l2_cost(a, b, only_first)) == pytest.approx(0.0)
    assert float(l2_cost(a, b)) == pytest.approx(4.0)


def test_layer_weights_hand_values():
    assert layer_weights(3, "equal").tolist() == [1.0, 1.0, 1.0]
    assert layer_weights(4, "linear").tolist() == [1.0, 0.75, 0.5, 0.25]
    exp = layer_weights(3, "exp")
    assert exp.tolist() == pytest.approx([1.0, math.exp(-1), math.exp(-2)], rel=1e-6)


@pytest.mark.parametrize("call, match", [
    (lambda: layer_weights(0), "num_layers must be >= 1"),
    (lambda: layer_weights(2, "cubic"), "unknown layer weighting"),
    (lambda: cosine_cost([torch.ones(1)], []), "trial has 1 tensors but target has 0"),
    (lambda: cosine_cost([torch.ones(1)], [torch.ones(1)], torch.ones(2)), "weights has 2"),
    (lambda: total_variation(torch.ones(3, 3)), r"expected images of shape \(N, C, H, W\)"),
])
def test_objective_errors(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_total_variation_hand_values():
    assert float(total_variation(torch.full((2, 1, 4, 4), 0.3))) == 0.0
    # Vertical stripes 0,1,0,1: every horizontal difference is 1, every vertical one 0.
    stripes = torch.tensor([0.0, 1.0, 0.0, 1.0]).repeat(4, 1).view(1, 1, 4, 4)
    assert float(total_variation(stripes)) == pytest.approx(1.0)
    assert float(total_variation(stripes.transpose(2, 3))) == pytest.approx(1.0)


def test_total_variation_has_finite_gradient():
    x = torch.randn(1, 1, 5, 5, generator=torch.Generator().manual_seed(0), requires_grad=True)
    total_variation(x).backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
