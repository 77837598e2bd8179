"""CENSOR: the shared gradient lies in the subspace orthogonal to the true one (and history)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from flwr.app import Context, RecordDict
from torch import nn

from clients.defended import DEFENSE_STATE_KEY, LocalData
from fl_shadow import flower_keys as keys
from fl_shadow.apps.federation import Federation
from fl_shadow.config import load_config
from fl_shadow.defenses.base import DefenseContext, build_defense
from fl_shadow.defenses.censor import (
    Censor,
    CensorParams,
    max_abs_cosine,
    orthogonal_candidate,
    orthonormal_basis,
)
from fl_shadow.errors import ConfigError
from fl_shadow.models import build_model


def tiny_model() -> nn.Module:
    torch.manual_seed(0)
    return build_model("convnet", in_channels=1, num_classes=3, image_size=8, width=4)


def ctx(server_round: int = 1, seed: int = 0) -> DefenseContext:
    return DefenseContext(server_round=server_round, num_rounds=20, client_id=0,
                          device=torch.device("cpu"), generator=torch.Generator().manual_seed(seed))


def batch(seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    return (torch.randn(4, 1, 8, 8, generator=torch.Generator().manual_seed(seed)),
            torch.tensor([0, 1, 2, 0]))


def grads_of(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> list[torch.Tensor]:
    loss = nn.functional.cross_entropy(model(x), y)
    return list(torch.autograd.grad(loss, list(model.parameters())))


def cos(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double().flatten(), b.double().flatten()
    return float((a @ b).abs() / (a.norm() * b.norm()))


def test_projection_is_exact_for_gradients_of_any_norm() -> None:
    g = torch.randn(50, 20, generator=torch.Generator().manual_seed(0)) * 7.0  # ||g|| far from 1
    basis = orthonormal_basis([g.double().flatten()])
    o = orthogonal_candidate(g, basis, torch.Generator().manual_seed(1))
    assert cos(o, g) < 1e-6
    assert float(o.norm()) == pytest.approx(float(g.norm()), rel=1e-6)
    # the released formula (divide by ||g||, not ||g||^2) is not orthogonal here
    r = torch.randn(1000, generator=torch.Generator().manual_seed(2))
    r = r / r.norm()
    released = r - (r @ g.flatten()) / g.norm() * g.flatten()
    assert cos(released, g) > 0.5


def test_shared_gradient_is_orthogonal_per_layer_with_matched_norms() -> None:
    model = tiny_model()
    x, y = batch()
    grads = grads_of(model, x, y)
    out = Censor(CensorParams(num_trials=5)).protect_gradient(grads, model, x, y, ctx())
    for g, o in zip(grads, out):
        assert o.shape == g.shape
        assert cos(o, g) < 1e-6 <= CensorParams().epsilon
        assert float(o.norm()) == pytest.approx(float(g.norm()), rel=1e-5)
    flat_g = torch.cat([g.flatten() for g in grads])
    assert cos(torch.cat([o.flatten() for o in out]), flat_g) < 1e-6


def test_the_lowest_loss_candidate_is_chosen_and_the_model_is_restored() -> None:
    model = tiny_model()
    x, y = batch()
    grads = grads_of(model, x, y)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    out = Censor(CensorParams(num_trials=6)).protect_gradient(grads, model, x, y, ctx(seed=3))
    assert model.training
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())

    generator = torch.Generator().manual_seed(3)
    bases = [orthonormal_basis([g.double().flatten()]) for g in grads]
    losses, candidates = [], []
    model.eval()
    with torch.no_grad():
        for _ in range(6):
            cand = [orthogonal_candidate(g, b, generator) for g, b in zip(grads, bases)]
            for p, o in zip(model.parameters(), cand):
                p.sub_(1e-4 * o)
            losses.append(float(nn.functional.cross_entropy(model(x), y)))
            model.load_state_dict(state)
            candidates.append(cand)
    best = candidates[int(np.argmin(losses))]
    assert all(torch.equal(a, b) for a, b in zip(out, best))


def test_history_survives_rounds_and_candidates_are_orthogonal_to_it() -> None:
    model = tiny_model()
    defense = Censor(CensorParams(num_trials=3, history_size=2))
    past = []
    for seed in (1, 2):
        x, y = batch(seed)
        g = grads_of(model, x, y)
        defense.protect_gradient(g, model, x, y, ctx(seed=seed))
        past.append(g)
    state = defense.state_dict()
    assert set(state) == {f"history.{i}" for i in range(len(past[0]))}
    assert all(v.shape == (2, g.numel()) for v, g in zip(state.values(), past[0]))

    restored = Censor(CensorParams(num_trials=3, history_size=2))  # next round, new instance
    restored.load_state_dict({k: v.clone() for k, v in state.items()})
    x, y = batch(3)
    g = grads_of(model, x, y)
    out = restored.protect_gradient(g, model, x, y, ctx(seed=7))
    again = defense.protect_gradient(g, model, x, y, ctx(seed=7))
    assert all(torch.equal(a, b) for a, b in zip(out, again))  # state carried everything
    for i, o in enumerate(out):
        directions = [g[i], past[0][i], past[1][i]]
        if o.any():
            assert max_abs_cosine(o, directions) < 1e-6
        else:  # a tensor with fewer entries than directions has no orthogonal complement
            assert o.numel() <= len(directions)
    assert restored.state_dict()["history.0"].shape[0] == 2  # oldest dropped


def test_outside_its_rounds_the_gradient_is_unchanged() -> None:
    model = tiny_model()
    x, y = batch()
    grads = grads_of(model, x, y)
    c = ctx(server_round=11)
    out = Censor(CensorParams()).protect_gradient(grads, model, x, y, c)  # rounds 1..10
    assert all(a is b for a, b in zip(out, grads)) and c.metrics["applied"] == 0.0
    never = build_defense("censor", {"rounds": []})
    out = never.protect_gradient(grads, model, x, y, ctx(server_round=1))
    assert all(torch.equal(a, b) for a, b in zip(out, grads))
    always = build_defense("censor", {"rounds": None, "num_trials": 2})
    out = always.protect_gradient(grads, model, x, y, ctx(server_round=50))
    assert not torch.equal(out[0], grads[0])


def test_same_generator_seed_same_gradient() -> None:
    model = tiny_model()
    x, y = batch()
    grads = grads_of(model, x, y)
    runs = [Censor(CensorParams(num_trials=3)).protect_gradient(grads, model, x, y, ctx(seed=s))
            for s in (4, 4, 5)]
    assert all(torch.equal(a, b) for a, b in zip(runs[0], runs[1]))
    assert not all(torch.equal(a, b) for a, b in zip(runs[0], runs[2]))


@pytest.mark.parametrize(("params", "match"), [
    ({"num_trials": 0}, r"^defense\.params\.num_trials: expected an integer >= 1"),
    ({"epsilon": 0}, r"^defense\.params\.epsilon: expected a number > 0, got 0$"),
    ({"epsilon": 1}, r"^defense\.params\.epsilon: expected a number < 1, got 1$"),
    ({"probe_lr": -1}, r"^defense\.params\.probe_lr: expected a number > 0"),
    ({"rounds": [0, 2]}, r"^defense\.params\.rounds\[0\]: expected an integer >= 1, got 0$"),
    ({"history_size": -1}, r"^defense\.params\.history_size: expected an integer >= 0"),
])
def test_bad_params_name_the_key(params: dict[str, object], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        build_defense("censor", params)


def test_defended_client_sends_an_update_orthogonal_to_the_true_gradient() -> None:
    config = load_config(None, [
        "partition.num_clients=2", "partition.sizes=[4, 6]", "partition.batch_sizes=[2, 6]",
        "strategy.min_fit_clients=2", "strategy.min_available_clients=2", "model.width=4",
        "data.image_size=8", "train.device=cpu", "attack.clients=[0, 1]", "train.lr=0.5",
        "train.momentum=0", "train.weight_decay=0", "defense.name=censor",
        "defense.params.num_trials=4", "defense.params.history_size=1"])
    images = torch.rand(6, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    labels = torch.arange(6) % 3
    data = LocalData(images, labels, np.arange(6), (0.5,), (0.25,), 3)
    model = tiny_model()
    arrays = [v.numpy().copy() for v in model.state_dict().values()]
    context = Context(run_id=1, node_id=1, node_config={}, state=RecordDict(), run_config={})
    client = Federation(config).client_for(1, data, context=context, send_audit=False)
    sent, _, metrics = client.fit(arrays, {keys.SERVER_ROUND: 1, keys.NUM_ROUNDS: 2})
    assert metrics["defense-applied"] == 1.0 and "defense-improved_fraction" in metrics

    true_grads = grads_of(model, (images - 0.5) / 0.25, labels)  # one step over all 6 images
    names = [n for n, _ in model.named_parameters()]
    index = {k: i for i, k in enumerate(model.state_dict())}
    updates = [torch.from_numpy(sent[index[n]] - arrays[index[n]]) for n in names]
    for g, u in zip(true_grads, updates):
        assert cos(u, g) < 1e-3  # -lr * o, up to float32 rounding of global + update
    stored = context.state[DEFENSE_STATE_KEY].to_torch_state_dict()
    assert torch.allclose(stored["history.0"][0], true_grads[0].flatten(), atol=1e-6)
