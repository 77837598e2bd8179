"""MixUp over a hospital's own images (GradAttack's input-space baseline)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from fl_shadow.apps.experiment import check_experiment
from fl_shadow.config import load_config
from fl_shadow.defenses import DefenseContext, build_defense
from fl_shadow.defenses.mixup import OWN_CONCENTRATION, mix, mixing_partners, mixing_weights
from fl_shadow.errors import ConfigError
from fl_shadow.training import LocalTraining, train_locally

STD = (0.5,)


def context(num_classes: int = 3) -> DefenseContext:
    return DefenseContext(server_round=1, num_rounds=2, client_id=0, device=torch.device("cpu"),
                          generator=torch.Generator().manual_seed(0), mean=(0.5,), std=STD,
                          num_classes=num_classes)


def test_mix_by_hand() -> None:
    images = torch.tensor([0.0, 1.0, 2.0, 4.0]).view(4, 1, 1, 1)
    targets = F.one_hot(torch.tensor([0, 1, 1, 2]), 3).float()
    partners = torch.tensor([[2, 3], [0, 1]])
    weights = torch.tensor([[0.75, 0.25], [0.5, 0.5]])
    x, y = mix(images, targets, partners, weights)
    assert x.flatten().tolist() == [0.75 * 2 + 0.25 * 4, 0.5]
    assert y.tolist() == [[0.0, 0.75, 0.25], [0.5, 0.5, 0.0]]


def test_weights_follow_the_bound_and_the_dirichlet() -> None:
    g = torch.Generator().manual_seed(1)
    w = mixing_weights(4000, 4, max_weight=0.65, generator=g)
    torch.testing.assert_close(w.sum(1), torch.ones(4000))
    assert float(w.max()) <= 0.65 and float(w.min()) >= 0.0
    # Dirichlet(3, 1, 1, 1): the own image's mean weight is 3/6 before truncation, the
    # bound at 0.65 pulls it below; the partners share the rest equally
    own = float(w[:, 0].mean())
    assert 0.38 < own < OWN_CONCENTRATION / 6
    partners = w[:, 1:].mean(0)
    assert float(partners.max() - partners.min()) < 0.02
    # below 1/k only the uniform row is possible; k = 1 is the clean image
    torch.testing.assert_close(mixing_weights(3, 4, max_weight=0.1, generator=g),
                               torch.full((3, 4), 0.25))
    assert mixing_weights(2, 1, max_weight=0.5, generator=g).tolist() == [[1.0], [1.0]]


def test_partners_are_distinct_and_start_with_the_own_image() -> None:
    g = torch.Generator().manual_seed(2)
    idx = torch.tensor([5, 0, 9])
    p = mixing_partners(idx, 10, 4, generator=g)
    assert p[:, 0].tolist() == [5, 0, 9]
    assert all(len(set(row.tolist())) == 4 for row in p)
    assert int(p.max()) < 10
    with pytest.raises(ValueError, match="k: expected 1..3"):
        mixing_partners(idx, 3, 4, generator=g)


def test_the_defense_mixes_images_and_labels_and_a_single_image_stays_clean() -> None:
    x = torch.randn(6, 1, 4, 4)
    y = torch.tensor([0, 1, 2, 0, 1, 2])
    defense, ctx = build_defense("mixup", {"mixed": 3, "max_weight": 0.5}), context()
    defense.setup(x, y, torch.nn.Identity(), ctx)
    ctx.batch_index = torch.tensor([4, 1])
    mixed, targets = defense.perturb_examples(x[[4, 1]], y[[4, 1]], torch.nn.Identity(), ctx)
    assert targets.shape == (2, 3)
    torch.testing.assert_close(targets.sum(1), torch.ones(2))
    assert float(targets.max()) < 1.0  # soft: every example mixes three images
    assert not torch.allclose(mixed, x[[4, 1]])
    assert ctx.metrics["mixup_partners"] == 3.0 and ctx.metrics["mixup_input_psnr"] < 40

    alone, ctx1 = build_defense("mixup", {}), context()
    alone.setup(x[:1], y[:1], torch.nn.Identity(), ctx1)
    ctx1.batch_index = torch.tensor([0])
    same, soft = alone.perturb_examples(x[:1], y[:1], torch.nn.Identity(), ctx1)
    assert torch.equal(same, x[:1]) and soft.tolist() == [[1.0, 0.0, 0.0]]
    assert ctx1.metrics["mixup_partners"] == 1.0


def test_local_training_uses_the_soft_targets() -> None:
    torch.manual_seed(0)
    x, y = torch.randn(8, 1, 4, 4), torch.tensor([0, 1, 2, 0, 1, 2, 0, 1])
    plan = LocalTraining(lr=0.1, batch_size=4)
    losses = {}
    for mixed in (1, 4):
        model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 3))
        torch.manual_seed(1)
        model.load_state_dict({k: torch.randn_like(v) for k, v in model.state_dict().items()})
        defense, ctx = build_defense("mixup", {"mixed": mixed}), context()
        defense.setup(x, y, model, ctx)
        result = train_locally(model, x, y, plan, defense=defense, ctx=ctx,
                               generator=torch.Generator().manual_seed(0))
        losses[mixed] = result.mean_loss
    assert losses[1] != losses[4]  # mixed examples give another loss


def test_params_are_checked_at_load() -> None:
    with pytest.raises(ConfigError, match="max_weight"):
        check_experiment(load_config("default.yaml", overrides=[
            "defense.name=mixup", "defense.params.mixed=4", "defense.params.max_weight=0.2"]),
            data=False)
    with pytest.raises(ConfigError, match="mixed"):
        build_defense("mixup", {"mixed": 0})
    with pytest.raises(ValueError, match="num_classes"):
        build_defense("mixup", {}).setup(torch.zeros(2, 1, 2, 2), torch.zeros(2),
                                         torch.nn.Identity(), context(num_classes=0))
