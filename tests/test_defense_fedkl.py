"""FedKL: the key-lock stays on the client, the update leaves without it, the key matters."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from flwr.app import Context, RecordDict
from torch import nn

from clients.defended import LocalData
from fl_shadow import flower_keys as keys
from fl_shadow.apps.federation import Federation
from fl_shadow.config import DefenseConfig, load_config
from fl_shadow.defenses.base import DefenseContext, build_defense
from fl_shadow.defenses.none import NoDefense
from fl_shadow.defenses.fedkl import KeyLock, KeyLockParams, LockedBatchNorm
from fl_shadow.errors import ConfigError
from fl_shadow.models import build_model
from fl_shadow.training import LocalTraining, predict, train_locally

NUM_CLASSES = 3


def tiny_model(norm: str = "batch") -> nn.Module:
    torch.manual_seed(0)
    return build_model("convnet", in_channels=1, num_classes=NUM_CLASSES, image_size=8, width=4,
                       norm=norm)


def ctx(seed: int = 0, server_round: int = 1) -> DefenseContext:
    return DefenseContext(server_round=server_round, num_rounds=3, client_id=0,
                          device=torch.device("cpu"), generator=torch.Generator().manual_seed(seed))


def separable_data(n: int = 60, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Class c is a bright square in quadrant c: learnable in a few dozen steps."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % NUM_CLASSES
    x = 0.3 * torch.randn(n, 1, 8, 8, generator=g)
    for i, c in enumerate(labels.tolist()):
        r, col = divmod(c, 2)
        x[i, 0, 4 * r:4 * r + 4, 4 * col:4 * col + 4] += 1.5
    return x, labels


def train(defense: KeyLock, model: nn.Module, x: torch.Tensor, y: torch.Tensor,
          c: DefenseContext, epochs: int = 1) -> tuple[nn.Module, dict[str, torch.Tensor]]:
    locked = defense.wrap_model(model, c)
    plan = LocalTraining(lr=0.1, batch_size=10, local_epochs=epochs)
    train_locally(locked, x, y, plan, defense=defense, ctx=c, generator=c.generator)
    return locked, defense.unwrap_state(locked)


def test_locked_layer_applies_the_keys_affine_and_keeps_shared_keys() -> None:
    model = tiny_model()
    defense = KeyLock(KeyLockParams(key_length=16))
    locked = defense.wrap_model(model, ctx())
    bn = locked.features[1]
    assert isinstance(bn, LockedBatchNorm)
    assert not isinstance(model.features[1], LockedBatchNorm)  # the client's model is untouched
    x = torch.randn(5, 1, 8, 8)
    h = locked.features[0](x)
    gamma, beta = bn.lock_affine()
    expected = gamma.view(1, -1, 1, 1) * F.batch_norm(h, None, None, training=True) \
        + beta.view(1, -1, 1, 1)
    bn.eval()
    bn.running_mean.zero_(), bn.running_var.fill_(1.0)
    with torch.no_grad():
        out = bn(h)
    assert torch.allclose(out, gamma.view(1, -1, 1, 1) * h / (1 + bn.eps) ** 0.5
                          + beta.view(1, -1, 1, 1), atol=1e-5)
    bn.train()
    assert torch.allclose(bn(h), expected, atol=1e-5)
    assert list(defense.unwrap_state(locked)) == list(model.state_dict())


def test_update_leaves_without_the_lock_and_with_zero_first_bn_affine_update() -> None:
    model = tiny_model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    defense = KeyLock(KeyLockParams(key_length=16))
    x, y = separable_data(20)
    _, sent = train(defense, model, x, y, ctx())
    assert set(sent) == set(before)
    assert not any("lock" in k or k.endswith(".key") for k in sent)
    # the first BN's own affine leaves as act(0) = 0 (ReLU): the reference server's lock
    assert torch.equal(sent["features.1.weight"], torch.zeros_like(before["features.1.weight"]))
    assert torch.equal(sent["features.1.bias"], torch.zeros_like(before["features.1.bias"]))
    # shared weights and the first BN's running statistics did train
    assert not torch.equal(sent["features.0.weight"], before["features.0.weight"])
    assert not torch.equal(sent["features.1.running_mean"], before["features.1.running_mean"])
    assert not torch.equal(sent["fc.weight"], before["fc.weight"])
    # the lock itself trained, and is held privately
    state = defense.state_dict()
    assert set(state) == {f"lock.{k}" for k in KeyLock._LOCK_KEYS}
    assert state["lock.key"].shape == (16,)


def test_lock_survives_rounds_through_state_and_is_deterministic() -> None:
    x, y = separable_data(20)
    first = KeyLock(KeyLockParams(key_length=16))
    train(first, tiny_model(), x, y, ctx(seed=3))
    saved = first.state_dict()

    again = KeyLock(KeyLockParams(key_length=16))
    train(again, tiny_model(), x, y, ctx(seed=3))
    assert all(torch.equal(saved[k], v) for k, v in again.state_dict().items())

    later = KeyLock(KeyLockParams(key_length=16))
    later.load_state_dict(saved)
    locked = later.wrap_model(tiny_model(), ctx(seed=99, server_round=2))
    bn = locked.features[1]
    assert torch.equal(bn.key, saved["lock.key"])
    assert torch.equal(bn.lock_scale.weight, saved["lock.lock_scale.weight"])

    other = KeyLock(KeyLockParams(key_length=16))
    other.wrap_model(tiny_model(), ctx(seed=4))
    other.unwrap_state(tiny_model())
    assert not torch.equal(other.state_dict()["lock.key"], saved["lock.key"])


def test_global_model_without_the_key_fails_and_with_it_keeps_accuracy() -> None:
    x, y = separable_data(90, seed=0)
    test_x, test_y = separable_data(60, seed=1)
    model = tiny_model()
    defense = KeyLock(KeyLockParams(key_length=64))
    c = ctx(seed=1)
    locked, sent = train(defense, model, x, y, c, epochs=8)
    keyed = float((predict(locked, test_x) == test_y).float().mean())

    model.load_state_dict(sent)  # what the server holds: shared weights, no lock
    global_acc = float((predict(model, test_x) == test_y).float().mean())

    thief = KeyLock(KeyLockParams(key_length=64))  # right lock weights, wrong key
    stolen = {k: v.clone() for k, v in defense.state_dict().items()}
    stolen["lock.key"] = torch.rand(64, generator=torch.Generator().manual_seed(123))
    thief.load_state_dict(stolen)
    wrong_key = float((predict(thief.wrap_model(model, ctx()), test_x) == test_y).float().mean())

    assert keyed >= 0.9
    assert global_acc <= keyed - 0.3
    assert wrong_key <= keyed - 0.3


def test_client_evaluates_the_global_model_with_its_key() -> None:
    config = load_config(None, ["partition.num_clients=2", "partition.sizes=[30, 30]",
                                "partition.batch_sizes=[10, 10]", "strategy.min_fit_clients=2",
                                "strategy.min_available_clients=2", "model.width=8",
                                "data.image_size=8", "train.device=cpu", "train.local_epochs=15",
                                "train.lr=0.1", "defense.name=fedkl",
                                "defense.params={key_length: 32}"])
    x, y = separable_data(30)
    test_x, test_y = separable_data(30, seed=5)
    data = LocalData(x, y, np.arange(30), (0.0,), (1.0,), NUM_CLASSES, test_x, test_y)
    context = Context(run_id=0, node_id=0, node_config={}, state=RecordDict(), run_config={})
    client = Federation(config).client_for(0, data, context=context, send_audit=False)
    torch.manual_seed(0)
    model = build_model("convnet", in_channels=1, num_classes=NUM_CLASSES, image_size=8, width=8)
    arrays = [v.numpy() for v in model.state_dict().values()]
    cfg = {keys.SERVER_ROUND: 1, keys.NUM_ROUNDS: 2}
    sent, _, _ = client.fit(arrays, cfg)
    _, n, keyed = client.evaluate(sent, cfg)
    plain = Federation(replace(config, defense=DefenseConfig("none", {}))).client_for(
        0, data, context=None, send_audit=False)
    _, _, unkeyed = plain.evaluate(sent, cfg)
    assert n == 30 and keyed[keys.PARTITION_ID] == 0
    assert keyed["accuracy"] >= 0.9
    assert unkeyed["accuracy"] <= keyed["accuracy"] - 0.3


def test_refuses_models_without_batch_norm_and_bad_params() -> None:
    with pytest.raises(ConfigError, match="model.norm"):
        KeyLock(KeyLockParams()).wrap_model(tiny_model(norm="none"), ctx())
    with pytest.raises(ConfigError, match="defense.params.key_length"):
        build_defense("fedkl", {"key_length": 0})
    with pytest.raises(ConfigError, match="defense.params.lock_lr_scale"):
        build_defense("fedkl", {"lock_lr_scale": -1.0})
    assert isinstance(build_defense("none", {}), NoDefense)
