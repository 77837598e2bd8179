"""The defended client's round and the curious server's hook, without Flower's transport.

The isolation tests run the real path: the federation builder, Flower's server loop and the
project's ClientApp in one process (:func:`fl_shadow.apps.inprocess.run_in_process`), with a spy
attack that keeps everything it is handed; :func:`ground_truth.find_client_data` then walks all
of it looking for the attacked client's images and labels. Two negative controls show the walk
finds them when they are there: a builder whose prior closes over the dataset, and a client
whose upload carries its labels.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from flwr.app import Context, RecordDict
from flwr.common import Code, FitRes, Status, ndarrays_to_parameters, parameters_to_ndarrays

from attacks.base import Observation, Prior, Reconstruction, register_attack
from clients.defended import LocalData
from fl_shadow import flower_keys as keys
from fl_shadow.apps.federation import Federation
from fl_shadow.apps.inprocess import run_in_process
from fl_shadow.audit import attacked_indices, decode_audit
from fl_shadow.config import load_config, settings
from fl_shadow.data import client_dataset
from fl_shadow.defenses.base import Defense, register_defense
from fl_shadow.errors import ThreatModelError
from fl_shadow.report import RunRecorder, read_jsonl
from fl_shadow.threat_model import ThreatModelNeeds
from ground_truth import find_client_data
from strategies.attack_hook import ReceivedUpdate
from strategies.curious import UpdateObserver

NUM_CLASSES = 3


def make_config(*overrides: str):  # type: ignore[no-untyped-def]
    items = ["partition.scheme=sizes", "partition.num_clients=2", "partition.sizes=[4, 6]",
             "partition.batch_sizes=[2, 3]", "strategy.min_fit_clients=2",
             "strategy.min_available_clients=2", "model.width=4", "data.image_size=8",
             "train.device=cpu", "train.rounds=3", "attack.clients=[0, 1]", "attack.rounds=[1]"]
    return load_config(None, [*items, *overrides])


def make_data(n: int = 6, seed: int = 0) -> LocalData:
    g = torch.Generator().manual_seed(seed)
    images = torch.rand(n, 1, 8, 8, generator=g)
    labels = torch.arange(n) % NUM_CLASSES
    return LocalData(images, labels, np.arange(100, 100 + n), (0.5,), (0.25,), NUM_CLASSES)


def fresh_arrays(federation: Federation, data: LocalData) -> list[np.ndarray]:
    torch.manual_seed(0)
    model = federation.architecture_for(tuple(data.images.shape[1:]), data.num_classes)()
    return [v.numpy() for v in model.state_dict().values()]


def fit_config(server_round: int = 1) -> dict[str, object]:
    return {keys.SERVER_ROUND: server_round, keys.NUM_ROUNDS: 3}


def test_fit_returns_trained_weights_metrics_and_audit() -> None:
    federation = Federation(make_config())
    data = make_data()
    client = federation.client_for(1, data, context=None, send_audit=True)
    arrays = fresh_arrays(federation, data)
    sent, num_examples, metrics = client.fit(arrays, fit_config())
    assert num_examples == 6
    assert len(sent) == len(arrays)
    assert any(not np.allclose(a, b) for a, b in zip(arrays, sent))
    # batch size 3 over 6 images, one epoch: two steps covering every image once
    audit = decode_audit(str(metrics[keys.AUDIT]))
    assert [len(b) for b in audit] == [3, 3]
    assert sorted(attacked_indices(audit)) == list(range(100, 106))
    assert metrics[keys.NUM_STEPS] == 2 and metrics[keys.PARTITION_ID] == 1


def test_fit_is_deterministic_and_deployment_sends_no_audit() -> None:
    federation = Federation(make_config())
    data = make_data()
    arrays = fresh_arrays(federation, data)
    a, _, m1 = federation.client_for(1, data, context=None, send_audit=True).fit(arrays,
                                                                                 fit_config())
    b, _, m2 = federation.client_for(1, data, context=None, send_audit=False).fit(arrays,
                                                                                  fit_config())
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert keys.AUDIT in m1 and keys.AUDIT not in m2


def test_fedprox_adds_the_proximal_term_the_attacker_replays() -> None:
    plain = Federation(make_config())
    prox = Federation(make_config("strategy.name=fedprox", "strategy.params.proximal_mu=10.0"))
    assert plain.plan_for(1).proximal_mu == 0 and prox.plan_for(1).proximal_mu == 10.0
    data = make_data()
    arrays = fresh_arrays(plain, data)
    a, _, _ = plain.client_for(1, data, context=None, send_audit=True).fit(arrays, fit_config())
    b, _, _ = prox.client_for(1, data, context=None, send_audit=True).fit(arrays, fit_config())
    # The proximal pull keeps the update closer to the global model than plain SGD's.
    norm = [sum(float(np.sum((x - g) ** 2)) for x, g in zip(sent, arrays)) for sent in (a, b)]
    assert norm[1] < norm[0]


@settings
class _CounterParams:
    pass


@register_defense("_test_counter", _CounterParams, keeps_client_state=True)
class _CounterDefense(Defense):
    """Counts rounds in its state, to prove state survives across rounds."""

    def __init__(self, params: _CounterParams) -> None:
        self.count = torch.zeros(1)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {"count": self.count + 1}

    def load_state_dict(self, state) -> None:  # type: ignore[no-untyped-def]
        self.count = state["count"].clone()


def test_defense_state_survives_rounds_in_context() -> None:
    federation = Federation(make_config("defense.name=_test_counter"))
    context = Context(run_id=1, node_id=1, node_config={}, state=RecordDict(), run_config={})
    data = make_data(4)
    arrays = fresh_arrays(federation, data)
    for server_round in (1, 2, 3):
        client = federation.client_for(0, data, context=context, send_audit=True)
        client.fit(arrays, fit_config(server_round))
    stored = context.state["defense-state"].to_torch_state_dict()
    assert float(stored["count"]) == 3.0


# ---- the curious server's hook, on the real path ---------------------------------------------
@settings
class _SpyParams:
    pass


SEEN: list[dict[str, object]] = []


def _spy_needs(params: _SpyParams) -> ThreatModelNeeds:
    return ThreatModelNeeds()


@register_attack("_test_spy", _SpyParams, max_images=16, needs=_spy_needs)
class _SpyAttack:
    def __init__(self, params: _SpyParams, *, device: torch.device, seed: int) -> None:
        self.params = params

    def reconstruct(self, observation: Observation, prior: Prior) -> Reconstruction:
        SEEN.append({"observation": observation, "prior": prior, "attack": self})
        c, h, w = prior.image_shape
        n = observation.num_images
        return Reconstruction(torch.rand(n, c, h, w), torch.zeros(n, dtype=torch.long), 0.0, 1,
                              0.0)

    def summary(self) -> str:
        return "spy"


def _spied_config(*overrides: str):  # type: ignore[no-untyped-def]
    # Client 1 holds 6 images, enough labels that a run of them cannot occur by chance.
    return load_config(None, [
        "data.image_size=8", "model.width=4", "train.rounds=1", "train.device=cpu",
        "partition.scheme=sizes", "partition.num_clients=2", "partition.sizes=[1, 6]",
        "partition.batch_sizes=[1, 6]", "strategy.min_fit_clients=2",
        "strategy.min_available_clients=2", "attack.name=_test_spy", "attack.rounds=[1]",
        "attack.clients=[1]", *overrides])


def _spied_run(federation: Federation, tmp_path: Path) -> tuple[dict[str, object], LocalData]:
    SEEN.clear()
    run_in_process(federation, tmp_path / "run")
    assert len(SEEN) == 1
    splits = federation.splits
    _, local = client_dataset(splits, federation.config.partition, 1, seed=federation.config.seed)
    assert len(set(local.labels.tolist())) >= 2
    return SEEN[0], LocalData(local.images, local.labels, np.arange(len(local)), splits.mean,
                              splits.std, splits.num_classes)


def _leaks(seen: dict[str, object], data: LocalData) -> list[str]:
    return find_client_data(seen, data.images, data.labels, mean=data.mean, std=data.std)


def test_nothing_handed_to_the_attack_references_client_data(tmp_path: Path) -> None:
    federation = Federation(_spied_config())
    seen, data = _spied_run(federation, tmp_path)
    assert _leaks(seen, data) == []
    observation = seen["observation"]
    assert isinstance(observation, Observation)
    assert observation.labels is None and observation.num_images == 6
    assert observation.training == federation.plan_for(1)
    # The walk does look inside: the update itself is reachable, and what it holds is checked.
    assert float(observation.client_state["fc.bias"].abs().sum()) > 0


def test_the_walk_finds_a_prior_that_closes_over_the_dataset(tmp_path: Path,
                                                             monkeypatch) -> None:  # type: ignore[no-untyped-def]
    honest_prior = Federation.prior

    def leaky_prior(self: Federation) -> Prior:
        splits = self.splits
        architecture = self.architecture

        def build() -> torch.nn.Module:  # closes over the whole dataset
            assert len(splits.train) > 0
            return architecture()

        return replace(honest_prior(self), model_factory=build)

    monkeypatch.setattr(Federation, "prior", leaky_prior)
    seen, data = _spied_run(Federation(_spied_config()), tmp_path)
    leaks = _leaks(seen, data)
    assert any("prior.model_factory.<closure splits>" in leak for leak in leaks), leaks


@settings
class _LeakParams:
    pass


@register_defense("_test_label_leak", _LeakParams)
class _LabelLeak(Defense):
    """Hides the batch's labels in the uploaded fc.bias (a malicious or buggy client)."""

    def __init__(self, params: _LeakParams) -> None:
        self.labels: torch.Tensor | None = None

    def setup(self, images, labels, model, ctx):  # type: ignore[no-untyped-def]
        self.labels = labels

    def protect_update(self, update, model, ctx):  # type: ignore[no-untyped-def]
        assert self.labels is not None
        bias = update["fc.bias"]
        if len(self.labels) <= len(bias):
            fc_bias = dict(model.named_parameters())["fc.bias"].detach()
            start = fc_bias - bias  # the global bias
            leaked = start.clone()
            leaked[:len(self.labels)] = self.labels.float()
            update = {**update, "fc.bias": leaked - start}
        return update


def test_the_walk_finds_labels_riding_in_the_upload(tmp_path: Path) -> None:
    seen, data = _spied_run(Federation(_spied_config("defense.name=_test_label_leak")),
                            tmp_path)
    leaks = _leaks(seen, data)
    assert "observation.client_state['fc.bias']" in leaks, leaks


def test_labels_are_handed_over_only_when_the_threat_model_gives_them(tmp_path: Path) -> None:
    federation = Federation(_spied_config("attack.labels=given"))
    seen, data = _spied_run(federation, tmp_path)
    observation = seen["observation"]
    assert isinstance(observation, Observation) and observation.labels is not None
    assert sorted(observation.labels.tolist()) == sorted(data.labels.tolist())
    # Images still never reach the attack; the labels do, by the threat model's design.
    assert [leak for leak in _leaks(seen, data) if "labels" not in leak] == []


def test_labels_given_without_audit_is_a_threat_model_error() -> None:
    federation = Federation(_spied_config("attack.labels=given"))
    data = make_data()
    client = federation.client_for(1, data, context=None, send_audit=False)
    arrays = fresh_arrays(federation, data)
    sent, n, metrics = client.fit(arrays, fit_config())
    hook = federation.attack_hook()
    assert hook is not None
    with pytest.raises(ThreatModelError, match="attack.labels is 'given'"):
        hook.run(1, arrays, ReceivedUpdate(1, sent, n, metrics))


# ---- the observer: order, non-finite uploads, unnamed clients --------------------------------
def _replies(rng: np.random.Generator, global_arrays: list[np.ndarray], count: int,
             *, named: bool = True) -> list[tuple[object, FitRes]]:
    replies = []
    for cid in range(count):
        arrays = [global_arrays[0] + rng.standard_normal(50).astype(np.float32) * 1e3]
        metrics = {keys.PARTITION_ID: cid} if named else {}
        replies.append((None, FitRes(Status(Code.OK, ""), ndarrays_to_parameters(arrays),
                                     int(rng.integers(1, 100)), metrics)))
    return replies


def test_aggregation_does_not_depend_on_reply_order(tmp_path: Path) -> None:
    from flwr.server.strategy import FedAvg

    rng = np.random.default_rng(0)
    global_arrays = [rng.standard_normal(50).astype(np.float32)]
    replies = _replies(rng, global_arrays, 5)
    outputs = []
    for order in ([0, 1, 2, 3, 4], [4, 2, 0, 3, 1]):
        observer = UpdateObserver(RunRecorder(tmp_path / str(order[0]), "", 1), ["w"])
        results, _ = observer.observe(1, global_arrays, [replies[i] for i in order], [])
        params, _ = FedAvg().aggregate_fit(1, results, [])
        outputs.append(parameters_to_ndarrays(params)[0])
    assert np.array_equal(outputs[0], outputs[1])


def test_a_non_finite_upload_is_a_failure_naming_the_client_and_tensor(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    global_arrays = [rng.standard_normal(50).astype(np.float32)]
    replies = _replies(rng, global_arrays, 3)
    bad = parameters_to_ndarrays(replies[1][1].parameters)
    bad[0][[3, 7]] = [np.inf, np.nan]
    replies[1][1].parameters = ndarrays_to_parameters(bad)
    recorder = RunRecorder(tmp_path, "", 1)
    results, failures = UpdateObserver(recorder, ["fc.weight"]).observe(1, global_arrays,
                                                                       replies, [])
    assert [r.metrics[keys.PARTITION_ID] for _, r in results] == [0, 2]
    assert len(failures) == 1
    row = read_jsonl(tmp_path / "failures.jsonl")[0]
    assert row["client"] == 1 and "fc.weight: 2 of 50 values not finite" in row["error"]


def test_a_client_without_partition_id_is_named_by_its_node(tmp_path: Path, caplog) -> None:  # type: ignore[no-untyped-def]
    class Proxy:
        def __init__(self, node_id: int) -> None:
            self.node_id = node_id

    rng = np.random.default_rng(2)
    global_arrays = [rng.standard_normal(50).astype(np.float32)]
    replies = [(Proxy(9001 + i), res) for i, (_, res) in
               enumerate(_replies(rng, global_arrays, 2, named=False))]
    recorder = RunRecorder(tmp_path, "", 1)
    with caplog.at_level(logging.WARNING):
        UpdateObserver(recorder, ["w"]).observe(1, global_arrays, replies, [])
    assert [r["client"] for r in read_jsonl(tmp_path / "fit.jsonl")] == [9001, 9002]
    assert "reported no 'partition-id': recorded as node 9001" in caplog.text
