"""Differentiable replay of local training (attacks/replay.py) against the client's real loop."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from attacks.replay import UpdateReplay, simulate_update, step_slots
from fl_shadow.defenses import Defense
from fl_shadow.models import ConvNet
from fl_shadow.training import LocalTraining, train_locally


SIZE, CLASSES = 16, 5


def _model(seed: int = 0) -> ConvNet:
    torch.manual_seed(seed)
    return ConvNet(1, CLASSES, width=8, image_size=SIZE)


def _client_round(plan: LocalTraining, num_examples: int, seed: int = 0):
    """Run the client's real training loop; return global state, update, images, labels, batches."""
    model = _model(seed)
    g = torch.Generator().manual_seed(seed + 1)
    x = torch.randn(num_examples, 1, SIZE, SIZE, generator=g)
    y = torch.arange(num_examples) % CLASSES
    global_state = {k: v.clone() for k, v in model.state_dict().items()}
    result = train_locally(model, x, y, plan, defense=Defense(), ctx=SimpleNamespace(step=0),
                           generator=torch.Generator().manual_seed(seed + 3))
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    update = [model.state_dict()[n] - global_state[n] for n in names]
    return global_state, update, x, y, result.batches


def _max_rel_error(a: list[torch.Tensor], b: list[torch.Tensor]) -> float:
    return max(float((u - v).abs().max() / v.abs().max())
               for u, v in zip([t.detach() for t in a], [t.detach() for t in b], strict=True))


def test_step_slots_hand_values():
    # 5 images, batch 2, two epochs: [0,1] [2,3] [4] then the same walk again.
    plan = LocalTraining(lr=0.1, batch_size=2, local_epochs=2)
    assert [s.tolist() for s in step_slots(plan, 5, 5)] == [[0, 1], [2, 3], [4]] * 2
    # local_steps fewer than an epoch: only the slots the steps touch.
    plan = LocalTraining(lr=0.1, batch_size=2, local_steps=2)
    assert [s.tolist() for s in step_slots(plan, 10, 4)] == [[0, 1], [2, 3]]
    # local_steps beyond an epoch wrap around.
    plan = LocalTraining(lr=0.1, batch_size=2, local_steps=3)
    assert [s.tolist() for s in step_slots(plan, 4, 4)] == [[0, 1], [2, 3], [0, 1]]
    # one image, several steps: the same slot every step.
    plan = LocalTraining(lr=0.1, batch_size=4, local_steps=3)
    assert [s.tolist() for s in step_slots(plan, 1, 1)] == [[0]] * 3


@pytest.mark.parametrize("kwargs, num_examples", [
    (dict(lr=0.05, batch_size=4, local_steps=1), 4),                   # single gradient
    (dict(lr=0.05, batch_size=2, local_epochs=1), 5),                  # 3 steps, last of 1
    (dict(lr=0.05, batch_size=2, local_epochs=1, momentum=0.9, weight_decay=1e-3), 4),
    (dict(lr=0.01, batch_size=3, local_epochs=1, optimizer="adam", weight_decay=1e-4), 6),
])
def test_replay_reproduces_the_client_update_within_one_epoch(kwargs, num_examples):
    # Prepare: the client's real update; the attacker places images in batch order (WLOG).
    plan = LocalTraining(**kwargs)
    global_state, update, x, y, batches = _client_round(plan, num_examples)
    order = torch.tensor([i for batch in batches for i in batch])
    # Execute
    simulated = simulate_update(_model(), global_state, x[order], y[order], plan, num_examples,
                                create_graph=False)
    # Assert: float32 round-off only.
    assert _max_rel_error(simulated, update) < 1e-4


def test_single_step_is_minus_lr_times_the_train_mode_gradient():
    plan = LocalTraining(lr=0.2, batch_size=3, local_steps=1)
    model = _model()
    x = torch.randn(3, 1, SIZE, SIZE, generator=torch.Generator().manual_seed(5))
    y = torch.tensor([0, 2, 4])
    state = {k: v.clone() for k, v in model.state_dict().items()}
    simulated = simulate_update(model, state, x, y, plan, 3, create_graph=False)
    model.train()
    grads = torch.autograd.grad(F.cross_entropy(model(x), y), list(model.parameters()))
    assert _max_rel_error(simulated, [-0.2 * g for g in grads]) < 1e-5


def test_replay_leaks_nothing_into_the_attacker_model():
    plan = LocalTraining(lr=0.1, batch_size=2, local_epochs=2)
    model = _model()
    model.eval()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    replay = UpdateReplay(model, state, plan, num_examples=4)
    replay(torch.randn(4, 1, SIZE, SIZE), torch.tensor([0, 1, 2, 3]))
    for key, value in model.state_dict().items():
        assert torch.equal(value, state[key]), key
    assert not model.training  # mode restored


def test_replay_is_differentiable_in_the_images_and_accepts_soft_labels():
    plan = LocalTraining(lr=0.1, batch_size=1, local_steps=2)
    model = _model()
    replay = UpdateReplay(model, model.state_dict(), plan, num_examples=2)
    x = torch.randn(2, 1, SIZE, SIZE, requires_grad=True)
    soft = torch.softmax(torch.randn(2, CLASSES), dim=1)
    update = replay(x, soft)
    (grad,) = torch.autograd.grad(sum(u.pow(2).sum() for u in update), x)
    assert torch.isfinite(grad).all() and grad.abs().sum() > 0
    hard = torch.tensor([1, 3])
    assert _max_rel_error(replay(x, F.one_hot(hard, CLASSES).float()), replay(x, hard)) < 1e-5


@pytest.mark.parametrize("call, exc, match", [
    (lambda r: r(torch.randn(3, 1, SIZE, SIZE), torch.tensor([0, 1])), ValueError,
     "expected 2 candidate images, got 3"),
    (lambda r: r(torch.randn(2, 1, SIZE, SIZE), torch.tensor([0])), ValueError,
     "expected 2 labels, got 1"),
])
def test_replay_rejects_wrong_shapes(call, exc, match):
    model = _model()
    replay = UpdateReplay(model, model.state_dict(), LocalTraining(lr=0.1, batch_size=2), 2)
    with pytest.raises(exc, match=match):
        call(replay)


def test_replay_rejects_unknown_optimizer_and_missing_parameters():
    model = _model()
    with pytest.raises(ValueError, match="cannot replay optimizer 'rmsprop'"):
        UpdateReplay(model, model.state_dict(),
                     LocalTraining(lr=0.1, batch_size=2, optimizer="rmsprop"), 2)
    state = dict(model.state_dict())
    del state["fc.bias"]
    with pytest.raises(KeyError, match="fc.bias"):
        UpdateReplay(model, state, LocalTraining(lr=0.1, batch_size=2), 2)
