"""The defended client's round and the curious server's hook, without Flower running."""

from __future__ import annotations

from dataclasses import dataclass, fields

import numpy as np
import pytest
import torch
from flwr.app import Context, RecordDict

from attacks.base import Observation, Prior, Reconstruction, register_attack
from clients.defended import DefendedClient, LocalData, local_training_plan
from fl_shadow import flower_keys as keys
from fl_shadow.audit import attacked_indices, decode_audit
from fl_shadow.config import load_config
from fl_shadow.defenses.base import Defense, register_defense
from fl_shadow.errors import ThreatModelError
from fl_shadow.models import build_model
from strategies.attack_hook import AttackHook

NUM_CLASSES = 3


def make_config(**overrides: object):
    items = ["partition.num_clients=2", "partition.sizes=[4, 6]", "partition.batch_sizes=[2, 3]",
             "strategy.min_fit_clients=2", "strategy.min_available_clients=2",
             "model.width=4", "data.image_size=8", "train.device=cpu", "attack.clients=[0, 1]"]
    items += [f"{k}={v}" for k, v in overrides.items()]
    return load_config(None, items)


def make_data(n: int = 6, seed: int = 0) -> LocalData:
    g = torch.Generator().manual_seed(seed)
    images = torch.rand(n, 1, 8, 8, generator=g)
    labels = torch.arange(n) % NUM_CLASSES
    return LocalData(images, labels, np.arange(100, 100 + n), (0.5,), (0.25,), NUM_CLASSES)


def fresh_arrays(config) -> list[np.ndarray]:
    torch.manual_seed(0)
    model = build_model("convnet", in_channels=1, num_classes=NUM_CLASSES, image_size=8,
                        width=config.model.width)
    return [v.numpy() for v in model.state_dict().values()]


def fit_config(server_round: int = 1) -> dict[str, object]:
    return {keys.SERVER_ROUND: server_round, keys.NUM_ROUNDS: 3}


def test_fit_returns_trained_weights_metrics_and_audit() -> None:
    config = make_config()
    client = DefendedClient(config, 1, make_data(), None, send_audit=True)
    arrays = fresh_arrays(config)
    sent, num_examples, metrics = client.fit(arrays, fit_config())
    assert num_examples == 6
    assert len(sent) == len(arrays)
    changed = [not np.allclose(a, b) for a, b in zip(arrays, sent)]
    assert any(changed)
    # batch size 3 over 6 images, one epoch: two steps covering every image once
    audit = decode_audit(str(metrics[keys.AUDIT]))
    assert [len(b) for b in audit] == [3, 3]
    assert sorted(attacked_indices(audit)) == list(range(100, 106))
    assert metrics[keys.NUM_STEPS] == 2 and metrics[keys.PARTITION_ID] == 1


def test_fit_is_deterministic_and_deployment_sends_no_audit() -> None:
    config = make_config()
    arrays = fresh_arrays(config)
    a, _, m1 = DefendedClient(config, 1, make_data(), None, send_audit=True).fit(arrays, fit_config())
    b, _, m2 = DefendedClient(config, 1, make_data(), None, send_audit=False).fit(arrays, fit_config())
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert keys.AUDIT in m1 and keys.AUDIT not in m2


@dataclass(frozen=True)
class _CounterParams:
    pass


@register_defense("_test_counter", _CounterParams)
class _CounterDefense(Defense):
    """Counts rounds in its state, to prove state survives across rounds."""

    def __init__(self, params: _CounterParams) -> None:
        self.count = torch.zeros(1)

    def perturb_batch(self, x, y, model, ctx):  # type: ignore[no-untyped-def]
        return x

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {"count": self.count + 1}

    def load_state_dict(self, state) -> None:  # type: ignore[no-untyped-def]
        self.count = state["count"].clone()


def test_defense_state_survives_rounds_in_context() -> None:
    config = make_config(**{"defense.name": "_test_counter"})
    context = Context(run_id=1, node_id=1, node_config={}, state=RecordDict(), run_config={})
    arrays = fresh_arrays(config)
    for server_round in (1, 2, 3):
        client = DefendedClient(config, 0, make_data(4), context, send_audit=True)
        client.fit(arrays, fit_config(server_round))
    stored = context.state["defense-state"].to_torch_state_dict()
    assert float(stored["count"]) == 3.0


# ---- the curious server's hook --------------------------------------------------------------
@dataclass(frozen=True)
class _SpyParams:
    pass


SEEN: list[tuple[Observation, Prior]] = []


@register_attack("_test_spy", _SpyParams)
class _SpyAttack:
    def __init__(self, params: _SpyParams, *, device: torch.device, seed: int) -> None:
        pass

    def reconstruct(self, observation: Observation, prior: Prior) -> Reconstruction:
        SEEN.append((observation, prior))
        c, h, w = prior.image_shape
        n = observation.num_images
        return Reconstruction(torch.rand(n, c, h, w), torch.zeros(n, dtype=torch.long), 0.0, 1,
                              0.0)


def _tensors_in(obj: object) -> list[torch.Tensor]:
    found: list[torch.Tensor] = []
    if isinstance(obj, torch.Tensor):
        found.append(obj)
    elif isinstance(obj, dict):
        for v in obj.values():
            found += _tensors_in(v)
    elif hasattr(obj, "__dataclass_fields__"):
        for f in fields(obj):  # type: ignore[arg-type]
            found += _tensors_in(getattr(obj, f.name))
    return found


@pytest.mark.parametrize("labels_mode", ["recover", "given"])
def test_attack_never_receives_ground_truth(labels_mode: str) -> None:
    config = make_config(**{"attack.name": "_test_spy", "attack.labels": labels_mode})
    data = make_data()
    client = DefendedClient(config, 1, data, None, send_audit=True)
    arrays = fresh_arrays(config)
    sent, n, metrics = client.fit(arrays, fit_config())

    model = build_model("convnet", in_channels=1, num_classes=NUM_CLASSES, image_size=8, width=4)
    label_lookup = torch.zeros(200, dtype=torch.long)
    label_lookup[100:106] = data.labels
    prior = Prior(model_factory=lambda: model, image_shape=(1, 8, 8), num_classes=NUM_CLASSES,
                  mean=(0.5,), std=(0.25,))
    hook = AttackHook(config, prior, list(model.state_dict()), label_lookup=label_lookup,
                      device=torch.device("cpu"))
    SEEN.clear()
    outcome = hook.run(1, 1, arrays, sent, n, metrics)
    assert outcome is not None and outcome.audit is not None  # kept by the server, for scoring
    observation, seen_prior = SEEN[0]
    names = {f.name for f in fields(observation)}
    assert not any("audit" in name or "image" in name and name != "num_images" for name in names)
    true_images = data.images
    normalized = (true_images - 0.5) / 0.25
    for tensor in _tensors_in(observation) + _tensors_in(seen_prior):
        if tensor.shape[-3:] == true_images.shape[-3:]:
            for img in list(true_images) + list(normalized):
                assert not torch.equal(tensor.reshape(-1, *img.shape)[0], img)
    if labels_mode == "recover":
        assert observation.labels is None
    else:
        order = attacked_indices(outcome.audit)
        assert observation.labels.tolist() == label_lookup[order].tolist()
    assert observation.num_images == 6
    assert observation.training == local_training_plan(config, 1)


def test_labels_given_without_audit_is_a_threat_model_error() -> None:
    config = make_config(**{"attack.name": "_test_spy", "attack.labels": "given"})
    client = DefendedClient(config, 1, make_data(), None, send_audit=False)
    arrays = fresh_arrays(config)
    sent, n, metrics = client.fit(arrays, fit_config())
    model = build_model("convnet", in_channels=1, num_classes=NUM_CLASSES, image_size=8, width=4)
    prior = Prior(model_factory=lambda: model, image_shape=(1, 8, 8), num_classes=NUM_CLASSES,
                  mean=(0.5,), std=(0.25,))
    hook = AttackHook(config, prior, list(model.state_dict()), label_lookup=None,
                      device=torch.device("cpu"))
    with pytest.raises(ThreatModelError, match="attack.labels is 'given'"):
        hook.run(1, 1, arrays, sent, n, metrics)


def test_aggregation_does_not_depend_on_reply_order(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from flwr.common import Code, FitRes, Status, ndarrays_to_parameters, parameters_to_ndarrays

    from fl_shadow.report import RunRecorder
    from strategies.curious_fedavg import CuriousFedAvg

    rng = np.random.default_rng(0)
    global_arrays = [rng.standard_normal(50).astype(np.float32)]
    replies = []
    for cid in range(5):
        arrays = [global_arrays[0] + rng.standard_normal(50).astype(np.float32) * 1e3]
        replies.append((None, FitRes(Status(Code.OK, ""), ndarrays_to_parameters(arrays),
                                     int(rng.integers(1, 100)), {keys.PARTITION_ID: cid})))
    outputs = []
    for order in ([0, 1, 2, 3, 4], [4, 2, 0, 3, 1]):
        strategy = CuriousFedAvg(experiment_yaml="", num_rounds=1,
                                 recorder=RunRecorder(tmp_path / str(order[0]), "", 1))
        strategy._sent = {1: ndarrays_to_parameters(global_arrays)}
        params, _ = strategy.aggregate_fit(1, [replies[i] for i in order], [])
        outputs.append(parameters_to_ndarrays(params)[0])
    assert np.array_equal(outputs[0], outputs[1])
