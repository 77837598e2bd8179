"""Latent minimax perturbation: training sees decoded latent offsets learned against an attacker."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from fl_shadow.defenses.base import DefenseContext, build_defense
from fl_shadow.defenses.latent_minimax import (
    LatentMinimax,
    LatentMinimaxParams,
    project_to_ball,
    surrogate_attacker,
)
from fl_shadow.defenses.none import NoDefense, NoDefenseParams
from fl_shadow.errors import ConfigError
from fl_shadow.generative import ImageGenerator, to_unit
from fl_shadow.models import build_model
from fl_shadow.training import LocalTraining, train_locally

N, SIZE = 12, 8


def small_generator() -> ImageGenerator:
    torch.manual_seed(7)
    return ImageGenerator(8, SIZE, 1, max_channels=16, min_channels=8)


def tiny_model() -> nn.Module:
    torch.manual_seed(0)
    return build_model("convnet", in_channels=1, num_classes=3, image_size=SIZE, width=4)


def ctx(server_round: int = 1, seed: int = 0) -> DefenseContext:
    return DefenseContext(server_round=server_round, num_rounds=5, client_id=0,
                          device=torch.device("cpu"), generator=torch.Generator().manual_seed(seed),
                          mean=(0.5,), std=(0.25,))


def data() -> tuple[torch.Tensor, torch.Tensor]:
    unit = torch.rand(N, 1, SIZE, SIZE, generator=torch.Generator().manual_seed(1))
    return (unit - 0.5) / 0.25, torch.arange(N) % 3


def defense(**params: object) -> LatentMinimax:
    base = {"steps": 20, "z_iter": 60, "radius": 3.0}
    base.update(params)
    gen = small_generator()
    return LatentMinimax(LatentMinimaxParams(**base), load_generator=lambda c: gen)


def round_update(d: object, seed: int = 0) -> dict[str, torch.Tensor]:
    model = tiny_model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x, y = data()
    c = ctx(seed=seed)
    d.setup(x, y, model, c)  # type: ignore[attr-defined]
    train_locally(model, x, y, LocalTraining(lr=0.1, batch_size=4), defense=d,  # type: ignore[arg-type]
                  ctx=c, generator=torch.Generator().manual_seed(5))
    return {k: v - before[k] for k, v in model.state_dict().items()}


def test_training_sees_the_decoded_latent_offset_within_the_ball() -> None:
    d = defense()
    x, y = data()
    c = ctx()
    d.setup(x, y, tiny_model(), c)
    assert d.offsets is not None and d.latents is not None and d.perturbed is not None
    assert float(d.offsets.norm(dim=1).max()) <= 3.0 + 1e-5
    gen = small_generator().eval()
    unit = x * 0.25 + 0.5
    with torch.no_grad():
        expected = (unit + to_unit(gen(d.latents + d.offsets)) - to_unit(gen(d.latents))).clamp(0, 1)
    assert torch.allclose(d.perturbed * 0.25 + 0.5, expected, atol=1e-5)
    assert float((expected - unit).abs().mean()) > 1e-3
    c.batch_index = torch.tensor([3, 0])
    assert torch.equal(d.perturb_batch(x[[3, 0]], y[[3, 0]], tiny_model(), c), d.perturbed[[3, 0]])
    for key in ("lm_attacker_mse", "lm_perturbation_mse", "lm_task_loss", "lm_latent_mse"):
        assert key in c.metrics


def test_minimax_offsets_are_harder_to_undo_than_random_offsets_of_the_same_size() -> None:
    x, y = data()
    learned = defense(steps=150, task_weight=0.0)
    learned.setup(x, y, tiny_model(), ctx())
    assert learned.offsets is not None and learned.latents is not None
    gen = small_generator().eval()
    unit = x * 0.25 + 0.5
    g = torch.Generator().manual_seed(3)
    random = torch.randn(learned.offsets.shape, generator=g)
    random = random / random.norm(dim=1, keepdim=True) * learned.offsets.norm(dim=1, keepdim=True)

    def fresh_attacker_error(offsets: torch.Tensor) -> float:
        with torch.no_grad():
            base = to_unit(gen(learned.latents))
            x_prime = (unit + to_unit(gen(learned.latents + offsets)) - base).clamp(0, 1)
        torch.manual_seed(11)
        attacker = surrogate_attacker(1, 32)
        opt = torch.optim.Adam(attacker.parameters(), lr=1e-3)
        for _ in range(200):
            loss = F.mse_loss(x_prime + attacker(x_prime), unit)
            opt.zero_grad()
            loss.backward()
            opt.step()
        return float(loss.detach())

    assert fresh_attacker_error(learned.offsets) > 1.2 * fresh_attacker_error(random)


def test_task_weight_keeps_the_task_loss_lower() -> None:
    x, y = data()
    losses = {}
    for weight in (0.0, 20.0):
        d = defense(steps=60, task_weight=weight)
        c = ctx()
        d.setup(x, y, tiny_model(), c)
        losses[weight] = c.metrics["lm_task_loss"]
    assert losses[20.0] < losses[0.0]


def test_zero_radius_gives_back_the_undefended_update() -> None:
    plain = round_update(NoDefense(NoDefenseParams()))
    zero = round_update(defense(radius=0.0))
    assert all(torch.equal(plain[k], zero[k]) for k in plain)
    defended = round_update(defense())
    assert any(not torch.allclose(plain[k], defended[k]) for k in plain)


def test_deterministic_and_state_survives_rounds() -> None:
    a, b = round_update(defense()), round_update(defense())
    assert all(torch.equal(a[k], b[k]) for k in a)

    first = defense()
    x, y = data()
    first.setup(x, y, tiny_model(), ctx())
    state = first.state_dict()
    assert {"latents", "offsets"} <= set(state) and any(k.startswith("attacker.") for k in state)
    later = defense(minimax_final_round=1)
    later.load_state_dict(state)
    c = ctx(server_round=2)
    later.setup(x, y, tiny_model(), c)  # past the minimax rounds: offsets fixed, no refit
    assert torch.equal(later.offsets, state["offsets"])
    assert torch.equal(later.latents, state["latents"])
    assert "lm_latent_mse" not in c.metrics and "lm_task_loss" not in c.metrics


def test_projection_and_params_validation() -> None:
    v = torch.tensor([[3.0, 4.0], [0.3, 0.4]])
    assert torch.allclose(project_to_ball(v, 1.0), torch.tensor([[0.6, 0.8], [0.3, 0.4]]))
    with pytest.raises(ConfigError, match="defense.params.radius"):
        build_defense("latent_minimax", {"radius": -1.0})
    with pytest.raises(ConfigError, match="defense.params.steps"):
        build_defense("latent_minimax", {"steps": -2})
