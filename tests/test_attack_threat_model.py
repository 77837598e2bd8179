"""Threat models, enforced: what each attack needs, what the config withholds, clear failures.

``attack.labels: recover`` withholds the labels, ``attack.bn_statistics: withheld`` removes the
BatchNorm running statistics from the client's upload before the attack sees it; an attack that
declares a need the threat model does not meet fails with ThreatModelError naming the key.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from attack_cases import client_update
from attacks import (
    Prior,
    ThreatModelNeeds,
    bn_statistic_names,
    build_attack,
    check_threat_model,
)
from clients.defended import LocalData
from fl_shadow import flower_keys as keys
from fl_shadow.apps.federation import Federation
from fl_shadow.config import ExperimentConfig, load_config, load_config_dict
from fl_shadow.errors import ConfigError, ThreatModelError
from fl_shadow.models import ConvNet, build_model
from fl_shadow.threat_model import AttackOutcome
from fl_shadow.training import LocalTraining
from strategies.attack_hook import AttackHook, ReceivedUpdate

CPU = torch.device("cpu")
ATTACK_NAMES = ["dlg", "idlg", "gradinversion", "inverting_gradients"]
NUM_CLASSES = 3


def make_config(**overrides: object) -> ExperimentConfig:
    """Two clients of 4 and 6 images (batches of 2 and 3), ConvNet width 4 at 8 px."""
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


def fresh_arrays(config: ExperimentConfig) -> list[np.ndarray]:
    torch.manual_seed(0)
    model = build_model("convnet", in_channels=1, num_classes=NUM_CLASSES, image_size=8,
                        width=config.model.width)
    return [v.numpy() for v in model.state_dict().values()]


def fit_config(server_round: int = 1) -> dict[str, object]:
    return {keys.SERVER_ROUND: server_round, keys.NUM_ROUNDS: 3}


def make_hook(config: ExperimentConfig, prior: Prior, state_keys: list[str]) -> AttackHook:
    """The configured attack in the curious server's hook, with the plans the federation sends
    its clients, over a test prior (the federation's own would describe its dataset)."""
    federation = Federation(config)
    attack = federation.attack()
    assert attack is not None
    return AttackHook(attack, prior, selection=config.attack, num_rounds=config.train.rounds,
                      plan_for=federation.plan_for, state_keys=state_keys, label_lookup=None,
                      defense_knowledge=None, device=CPU)


@pytest.fixture(scope="module")
def case():
    return client_update([2], LocalTraining(lr=0.01, batch_size=1))


# --- declarations and the check ----------------------------------------------------------------
def test_bn_statistic_names_lists_every_batchnorm_buffer():
    names = bn_statistic_names(ConvNet(1, 3, width=4, image_size=8))
    assert names == [f"features.{i}.{b}" for i in (1, 5, 9)
                     for b in ("running_mean", "running_var", "num_batches_tracked")]
    assert bn_statistic_names(ConvNet(1, 3, width=4, image_size=8, norm="none")) == []


def test_check_passes_when_nothing_is_needed_or_everything_is_there(case):
    model = case.prior.model_factory()
    check_threat_model("x", ThreatModelNeeds(), case.observation, model)
    given = dataclasses.replace(case.observation, labels=torch.tensor([2]))
    check_threat_model("x", ThreatModelNeeds(labels="a", bn_statistics="b"), given, model)
    # Without BatchNorm there is nothing to withhold (the attack runs without its BN prior).
    plain = client_update([2], LocalTraining(lr=0.01, batch_size=1), norm="none")
    check_threat_model("x", ThreatModelNeeds(bn_statistics="b"), plain.observation,
                       plain.prior.model_factory())


def test_check_names_the_key_that_withholds_labels(case):
    with pytest.raises(ThreatModelError, match=r"^x: because but the threat model withholds "
                                               r"labels \(attack.labels: recover\)"):
        check_threat_model("x", ThreatModelNeeds(labels="because"), case.observation,
                           case.prior.model_factory())


def test_check_names_the_key_that_withholds_bn_statistics(case):
    model = case.prior.model_factory()
    client = {k: v for k, v in case.observation.client_state.items()
              if k != "features.5.running_var"}
    stripped = dataclasses.replace(case.observation, client_state=client)
    with pytest.raises(ThreatModelError, match=r"features.5.running_var is not in the "
                                               r"observation; attack.bn_statistics: withheld"):
        check_threat_model("x", ThreatModelNeeds(bn_statistics="b"), stripped, model)


@pytest.mark.parametrize("name", ATTACK_NAMES)
def test_every_attack_declares_its_needs_and_enforces_labels(case, name):
    plain = build_attack(name, {"progress": False}, device=CPU, seed=0)
    strict = build_attack(name, {"require_labels": True, "progress": False}, device=CPU, seed=0)
    assert isinstance(plain.needs, ThreatModelNeeds) and plain.needs.labels is None
    assert strict.needs.labels == "attack.params.require_labels is true"
    with pytest.raises(ThreatModelError, match=rf"^{name}: attack.params.require_labels is true "
                                               r"but the threat model withholds labels "
                                               r"\(attack.labels: recover\)"):
        strict.reconstruct(case.observation, case.prior)


@pytest.mark.parametrize("name, needs_bn", [("dlg", False), ("idlg", False),
                                            ("inverting_gradients", False),
                                            ("gradinversion", True)])
def test_only_the_bn_prior_needs_bn_statistics(name, needs_bn):
    attack = build_attack(name, {}, device=CPU, seed=0)
    assert (attack.needs.bn_statistics is not None) == needs_bn


# --- the config key and the hook ------------------------------------------------------------
def test_bn_statistics_key_is_validated():
    assert load_config(None, []).attack.bn_statistics == "given"
    assert load_config(None, ["attack.bn_statistics=withheld"]).attack.bn_statistics == "withheld"
    with pytest.raises(ConfigError, match=r"attack.bn_statistics: expected one of given, "
                                          r"withheld, got 'secret'"):
        load_config(None, ["attack.bn_statistics=secret"])


def _hook_run(**overrides: object):
    """One client's round and the hook's observation of it (8 px, ConvNet width 4)."""
    config = make_config(**{"attack.params": "{iterations: 2, progress: false}", **overrides})
    client = Federation(config).client_for(1, make_data(), context=None, send_audit=True)
    arrays = fresh_arrays(config)
    sent, n, metrics = client.fit(arrays, fit_config())
    model = build_model("convnet", in_channels=1, num_classes=NUM_CLASSES, image_size=8, width=4)
    prior = Prior(model_factory=lambda: model, image_shape=(1, 8, 8), num_classes=NUM_CLASSES,
                  mean=(0.5,), std=(0.25,))
    hook = make_hook(config, prior, list(model.state_dict()))
    return hook, (1, arrays, ReceivedUpdate(1, sent, n, metrics)), bn_statistic_names(model)


def test_withheld_bn_statistics_leave_the_observation():
    hook, args, buffers = _hook_run(**{"attack.name": "gradinversion",
                                       "attack.bn_statistics": "withheld"})
    observation, _ = hook.observe(*args)
    assert buffers and not set(buffers) & set(observation.client_state)
    assert set(buffers) <= set(observation.global_state)  # the server's own state stays
    with pytest.raises(ThreatModelError, match=r"gradinversion: .*attack.bn_statistics: "
                                               r"withheld"):
        hook.run(*args)


def test_given_bn_statistics_reach_the_attack():
    hook, args, buffers = _hook_run(**{"attack.name": "gradinversion"})
    observation, _ = hook.observe(*args)
    assert set(buffers) <= set(observation.client_state)
    outcome = hook.run(*args)
    assert isinstance(outcome, AttackOutcome)
    assert outcome.reconstruction.info["bn_reference"] == 1.0


@pytest.mark.parametrize("name", ["inverting_gradients", "idlg"])
def test_attacks_without_the_need_run_when_bn_statistics_are_withheld(name):
    hook, args, _ = _hook_run(**{"attack.name": name, "attack.bn_statistics": "withheld",
                                 "attack.params": "{iterations: 1, progress: false}"})
    outcome = hook.run(*args)
    assert isinstance(outcome, AttackOutcome)
    assert outcome.reconstruction.images.shape == (6, 1, 8, 8)


# ---- what the attacker assumes of the local training ----------------------------------------
def test_assumed_training_replaces_the_sent_plan() -> None:
    case = client_update([0, 1], LocalTraining(lr=0.05, batch_size=1))  # two SGD steps
    keys_ = list(case.observation.global_state)
    arrays = [v.numpy() for v in case.observation.global_state.values()]
    sent = [case.observation.client_state[k].numpy() for k in keys_]
    raw = {"partition": {"scheme": "sizes", "num_clients": 1, "sizes": [2], "batch_sizes": [1]},
           "train": {"lr": 0.05}, "attack": {"name": "inverting_gradients"}}
    plain = make_hook(load_config_dict(raw), case.prior, keys_)
    obs, _ = plain.observe(1, arrays, ReceivedUpdate(0, sent, 2, {}))
    assert obs.training.lr == 0.05 and obs.num_local_steps == 2
    raw["attack"]["assumed_training"] = {"lr": 0.01, "batch_size": 2}
    guessing = make_hook(load_config_dict(raw), case.prior, keys_)
    obs, _ = guessing.observe(1, arrays, ReceivedUpdate(0, sent, 2, {}))
    assert obs.training.lr == 0.01 and obs.num_local_steps == 1 and obs.num_images == 2


@pytest.mark.parametrize("assumed,match", [
    ({"learning_rate": 0.1}, (r"attack.assumed_training.learning_rate: unknown key; expected "
                              r"one of: lr, batch_size")),
    ({"lr": 0}, r"attack.assumed_training.lr: expected a number > 0"),
    ({"optimizer": "lbfgs"}, (r"attack.assumed_training.optimizer: expected one of sgd, adam, "
                              r"got 'lbfgs'")),
])
def test_assumed_training_is_validated(assumed: dict, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        load_config_dict({"attack": {"name": "inverting_gradients",
                                     "assumed_training": assumed}})
