"""Per-step gradient clipping to a global L2 norm."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fl_shadow.defenses.base import DefenseContext, build_defense
from fl_shadow.defenses.clipping import (
    ClippingParams,
    GradientClipping,
    clip_by_global_norm,
    global_norm,
)
from fl_shadow.errors import ConfigError
from fl_shadow.models import build_model
from fl_shadow.training import LocalTraining, train_locally


def ctx() -> DefenseContext:
    return DefenseContext(server_round=1, num_rounds=1, client_id=0, device=torch.device("cpu"),
                          generator=torch.Generator().manual_seed(0))


def grads(scale: float) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return [torch.randn(4, 3, generator=g) * scale, torch.randn(3, generator=g) * scale]


def test_global_norm_by_hand() -> None:
    assert global_norm([torch.tensor([3.0]), torch.tensor([[4.0, 0.0]])]) == 5.0


def test_large_gradient_is_scaled_to_the_bound_in_its_direction() -> None:
    g = grads(10.0)
    out = GradientClipping(ClippingParams(max_norm=4.0)).protect_gradient(
        g, torch.nn.Identity(), torch.zeros(1), torch.zeros(1), ctx())
    assert global_norm(out) <= 4.0
    assert global_norm(out) == pytest.approx(4.0, rel=1e-5)
    ratio = out[0] / g[0]
    assert torch.allclose(ratio, ratio.flatten()[0].expand_as(ratio))  # same direction
    assert torch.allclose(out[1] / g[1], ratio.flatten()[0].expand(3))


def test_small_gradient_is_returned_exactly() -> None:
    g = grads(0.01)
    c = ctx()
    out = GradientClipping(ClippingParams(max_norm=4.0)).protect_gradient(
        g, torch.nn.Identity(), torch.zeros(1), torch.zeros(1), c)
    assert all(torch.equal(a, b) for a, b in zip(out, g))
    assert c.metrics["clipped_fraction"] == 0.0


def test_input_tensors_are_not_modified_in_place() -> None:
    g = grads(10.0)
    copies = [t.clone() for t in g]
    clip_by_global_norm(g, max_norm=1.0)
    assert all(torch.equal(a, b) for a, b in zip(g, copies))


def test_bad_max_norm_names_the_key() -> None:
    with pytest.raises(ConfigError, match=r"^defense\.params\.max_norm: expected a number > 0, "
                                          r"got 0"):
        build_defense("clipping", {"max_norm": 0})


class _Recorder(GradientClipping):
    def __init__(self) -> None:
        super().__init__(ClippingParams(max_norm=0.05))
        self.applied: list[float] = []

    def protect_gradient(self, grads, model, x, y, ctx):  # type: ignore[no-untyped-def]
        out = super().protect_gradient(grads, model, x, y, ctx)
        self.applied.append(global_norm(out))
        return out


def test_every_local_step_is_clipped_in_train_locally() -> None:
    torch.manual_seed(0)
    model = build_model("convnet", in_channels=1, num_classes=3, image_size=8, width=4)
    before = [p.detach().clone() for p in model.parameters()]
    defense = _Recorder()
    c = ctx()
    x, y = torch.randn(6, 1, 8, 8), torch.tensor([0, 1, 2, 0, 1, 2])
    plan = LocalTraining(lr=1.0, batch_size=2)
    train_locally(model, x, y, plan, defense=defense, ctx=c,
                  generator=torch.Generator().manual_seed(1))
    assert len(defense.applied) == 3 and max(defense.applied) <= 0.05
    moved = np.sqrt(sum(float((p.detach() - b).pow(2).sum())
                        for p, b in zip(model.parameters(), before)))
    assert moved <= 3 * 1.0 * 0.05 + 1e-6  # steps * lr * max_norm (plain SGD)
    assert c.metrics["clipped_fraction"] == 1.0
