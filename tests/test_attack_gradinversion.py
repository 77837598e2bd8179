"""GradInversion and its BatchNorm prior (attacks/gradinversion.py, attacks/bn_prior.py).

The BatchNorm reference is read from the client's running-statistics update; the tests check
the derivation against statistics computed here from the true images, then the attack on small
BatchNorm ConvNets (16 px), scored by the project's protocol.
"""

from __future__ import annotations

import dataclasses
import logging

import pytest
import torch
from torch import nn

from attack_cases import MEAN, STD, client_update, random_scores, scores
from attacks import ATTACKS, GradInversionParams, bn_statistic_names, build_attack
from attacks.bn_prior import (
    BatchNormRecorder,
    BatchNormReference,
    batchnorm_layers,
    bn_prior,
    reference_from_update,
    step_weights,
    update_factors,
)
from attacks.gradinversion import SeedGroup
from attacks.replay import UpdateReplay
from fl_shadow.errors import ConfigError, ThreatModelError
from fl_shadow.training import LocalTraining

CPU = torch.device("cpu")
ONE_STEP = LocalTraining(lr=0.01, batch_size=4, local_steps=1)


def _attack(seed: int = 0, **params):
    return build_attack("gradinversion", {"progress": False, **params}, device=CPU, seed=seed)


def _reference(case):
    model = case.prior.model_factory()
    obs = case.observation
    return model, reference_from_update(model, obs.global_state, obs.client_state,
                                        obs.num_local_steps)


# --- the BatchNorm reference -----------------------------------------------------------------
def test_one_step_update_gives_the_batch_statistics_exactly():
    case = client_update([2, 0, 1], ONE_STEP)
    model, reference = _reference(case)
    assert reference is not None and reference.source == "update"
    # Statistics of the true batch at every BN input, by plain hooks on the global model.
    model.load_state_dict(case.observation.global_state)
    model.train()
    inputs: list[torch.Tensor] = []
    for _, layer in batchnorm_layers(model):
        layer.register_forward_hook(lambda m, i, o: inputs.append(i[0].detach()))
    model((case.truth - MEAN[0]) / STD[0])
    assert len(inputs) == len(reference.means) == 3
    for h, mean, var in zip(inputs, reference.means, reference.variances, strict=True):
        n = h.numel() // h.shape[1]
        torch.testing.assert_close(mean, h.mean(dim=(0, 2, 3)), atol=1e-5, rtol=1e-4)
        # PyTorch stores the unbiased variance; (n - 1) / n gives the normalising one.
        torch.testing.assert_close(var * (n - 1) / n, h.var(dim=(0, 2, 3), unbiased=False),
                                   atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("momentum", [0.1, 0.3, None])
def test_multi_step_reference_equals_the_replayed_weighted_average(momentum):
    # Three SGD steps over two images: the weighted average read from the buffers equals the
    # one the recorder computes while replaying on the true images (any momentum rule).
    plan = LocalTraining(lr=0.05, batch_size=2, local_steps=3)
    case = client_update([2, 0], plan, momentum=momentum)
    model, reference = _reference(case)
    assert reference is not None
    replay = UpdateReplay(model, case.observation.global_state, plan, 2, 2)
    recorder = BatchNormRecorder(model)
    with recorder.recording():
        replay((case.truth - MEAN[0]) / STD[0], case.labels, create_graph=False)
    assert [len(c) for c in recorder.calls] == [3, 3, 3]
    for (mean, var), ref_mean, ref_var in zip(recorder.averaged(reference), reference.means,
                                              reference.variances, strict=True):
        torch.testing.assert_close(mean, ref_mean, atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(var, ref_var, atol=1e-5, rtol=1e-4)
    assert float(bn_prior(recorder.averaged(reference), reference).detach()) < 1e-3


def test_step_weights_hand_values():
    weights, c = step_weights(torch.tensor([0.1, 0.1], dtype=torch.float64))
    # w_1 = 0.1 * 0.9, w_2 = 0.1, c = 0.81, normalised by 1 - c = 0.19.
    assert weights.tolist() == pytest.approx([0.09 / 0.19, 0.1 / 0.19])
    assert c == pytest.approx(0.81)
    one, c1 = step_weights(torch.tensor([0.1], dtype=torch.float64))
    assert one.tolist() == pytest.approx([1.0]) and c1 == pytest.approx(0.9)
    bn = nn.BatchNorm2d(2, momentum=None)
    assert update_factors(bn, 3, 4).tolist() == pytest.approx([1 / 5, 1 / 6, 1 / 7])


def test_bn_prior_hand_value():
    reference = BatchNormReference(means=[torch.zeros(2), torch.zeros(1)],
                                   variances=[torch.ones(2), torch.ones(1)],
                                   weights=[torch.ones(1), torch.ones(1)], source="update")
    stats = [(torch.tensor([3.0, 4.0]), torch.ones(2)), (torch.zeros(1), torch.tensor([3.0]))]
    # first layer: 10 * (5 + 0); second: 1 * (0 + 2)
    assert float(bn_prior(stats, reference)) == pytest.approx(52.0)
    assert float(bn_prior(stats, reference, first_multiplier=1.0)) == pytest.approx(7.0)


def test_unchanged_buffers_give_no_reference():
    case = client_update([1], ONE_STEP)
    global_state = case.observation.global_state
    model = case.prior.model_factory()
    assert reference_from_update(model, global_state, global_state, 1) is None


# --- quality -----------------------------------------------------------------------------------
def test_bn_prior_makes_the_attack_much_stronger():
    case = client_update([2], ONE_STEP, width=16)
    # bn_weight 0.03 is best at this small scale (0.01, the default, at 32 px width 32).
    full = _attack(iterations=150, bn_weight=0.03).reconstruct(case.observation, case.prior)
    no_bn = _attack(iterations=150, bn_weight=0).reconstruct(case.observation, case.prior)
    got, without = scores(full.images, full.labels, case), scores(no_bn.images, no_bn.labels,
                                                                  case)
    random = random_scores(case)
    # Measured: 23.6 dB / SSIM 0.87 with the prior, 16.7 dB / 0.46 without; random 9.1 dB.
    assert got["psnr"] >= random["psnr"] + 10.0, (got, random)
    assert got["psnr"] >= without["psnr"] + 4.0, (got, without)
    assert got["ssim"] >= without["ssim"] + 0.25, (got, without)
    assert full.labels.tolist() == [2] and full.info["bn_reference"] == 1.0


def test_batch_of_four_with_recovered_labels():
    case = client_update([2, 0, 1, 3], ONE_STEP)
    rec = _attack(iterations=150).reconstruct(case.observation, case.prior)
    got, random = scores(rec.images, rec.labels, case), random_scores(case)
    # Measured: PSNR 17.7 dB, SSIM 0.31; random 10.9 dB / 0.06.
    assert got["psnr"] >= random["psnr"] + 5.0, (got, random)
    assert got["ssim"] >= random["ssim"] + 0.15, (got, random)
    assert got["label_accuracy"] == 1.0 and rec.info["labels_recovered"] == 1.0


def test_multi_step_update():
    case = client_update([2, 0], LocalTraining(lr=0.01, batch_size=2, local_steps=3))
    rec = _attack(iterations=150).reconstruct(case.observation, case.prior)
    got, random = scores(rec.images, rec.labels, case), random_scores(case)
    # Measured: PSNR 20.2 dB (18.3 without the BN prior); random 10.6 dB.
    assert got["psnr"] >= random["psnr"] + 7.0, (got, random)
    assert got["label_accuracy"] == 1.0 and rec.info["num_local_steps"] == 3.0


# --- group consistency ---------------------------------------------------------------------------
def test_seed_group_registers_permuted_and_shifted_seeds():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(3, 1, 8, 8, generator=g)
    labels = torch.tensor([1, 1, 2])
    slots = [torch.tensor([0, 1, 2])]
    # Seed 1: slots 0 and 1 swapped (same label: exchangeable), slot 2 shifted by (1, -1).
    other = x[[1, 0, 2]].clone()
    other[2] = torch.roll(other[2], shifts=(1, -1), dims=(-2, -1))
    group = SeedGroup(labels, slots, max_shift=1)
    group.refresh([x, other])
    assert group.classes == [[0, 1], [2]]
    assert group.perms[1].tolist() == [1, 0, 2] and group.shifts[1][2] == (-1, 1)
    assert group.consensus is not None
    torch.testing.assert_close(group.consensus, x)
    assert float(group.distance(other, 1)) == pytest.approx(0.0, abs=1e-6)
    # Different labels are never swapped, slots in different steps neither.
    apart = SeedGroup(labels, [torch.tensor([0, 2]), torch.tensor([1])], max_shift=0)
    assert apart.classes == [[0], [1], [2]]


def test_group_consistency_runs_and_picks_a_candidate_by_its_own_loss():
    case = client_update([2, 0], ONE_STEP)
    rec = _attack(iterations=40, group_size=2, group_start=0.5, group_every=10
                  ).reconstruct(case.observation, case.prior)
    assert rec.images.shape == (2, 1, 16, 16)
    assert rec.info["best_candidate"] in (0.0, 1.0, 2.0)  # seed 0, seed 1 or the consensus
    assert rec.loss == rec.info["restart_0_objective"]


@pytest.mark.parametrize("plan", [ONE_STEP, LocalTraining(lr=0.01, batch_size=1,
                                                        local_steps=2)])
def test_batched_seeds_follow_the_sequential_ones(plan):
    # 3 seeds with the BN prior, the group term and Langevin noise: one vmapped replay per
    # iteration gives each seed its trajectory alone, up to float order
    case = client_update([2, 0], plan)
    runs = {batched: _attack(iterations=30, group_size=3, group_start=0.5, group_every=5,
                             batch_seeds=batched).reconstruct(case.observation, case.prior)
            for batched in (False, True)}
    assert runs[True].info["best_candidate"] == runs[False].info["best_candidate"]
    assert runs[True].loss == pytest.approx(runs[False].loss, rel=1e-3)
    torch.testing.assert_close(runs[True].images, runs[False].images, atol=2e-3, rtol=0)


def test_batched_bn_statistics_are_each_sets_own():
    case = client_update([2, 0, 1, 3], LocalTraining(lr=0.01, batch_size=2, local_steps=2))
    model, reference = _reference(case)
    replay = UpdateReplay(model, case.observation.global_state, case.observation.training,
                          case.observation.num_examples)
    x = torch.randn(3, 4, 1, 16, 16, generator=torch.Generator().manual_seed(0))
    labels = torch.tensor([2, 0, 1, 3])
    recorder = BatchNormRecorder(model)
    with recorder.recording():
        replay.batched(x, labels.expand(3, 4), create_graph=False, recorder=recorder)
    together = recorder.averaged(reference)
    priors = bn_prior(together, reference)
    assert priors.shape == (3,)
    for r in range(3):
        alone = BatchNormRecorder(model)
        with alone.recording():
            replay(x[r], labels, create_graph=False)
        for (m, v), (m1, v1) in zip(together, alone.averaged(reference), strict=True):
            torch.testing.assert_close(m[r], m1, atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(v[r], v1, atol=1e-5, rtol=1e-5)
        assert float(priors[r].detach()) == pytest.approx(float(bn_prior(alone.averaged(reference),
                                                                 reference)), rel=1e-5)


# --- threat model ----------------------------------------------------------------------------
def _withheld(case):
    """The observation the hook builds with ``attack.bn_statistics: withheld``."""
    withheld = bn_statistic_names(case.prior.model_factory())
    client = {k: v for k, v in case.observation.client_state.items() if k not in withheld}
    return dataclasses.replace(case.observation, client_state=client)


def test_withheld_bn_statistics_fail_with_the_config_key():
    case = client_update([2], ONE_STEP)
    with pytest.raises(ThreatModelError, match=r"gradinversion: attack.params.bn_reference is "
                                               r"'update'.*attack.bn_statistics: withheld"):
        _attack(iterations=2).reconstruct(_withheld(case), case.prior)
    # Without the need: the global running statistics, or no BN prior at all.
    rec = _attack(iterations=2, bn_reference="global").reconstruct(_withheld(case), case.prior)
    assert rec.info["bn_reference"] == 0.0
    rec = _attack(iterations=2, bn_weight=0).reconstruct(_withheld(case), case.prior)
    assert rec.info["bn_reference"] == -1.0
    assert _attack(bn_weight=0).needs.bn_statistics is None


def test_buffers_sent_back_unchanged_fall_back_on_the_global_reference(caplog):
    # A defense (dp with bn_buffers: withhold) returns the global buffers: nothing to read.
    case = client_update([2], ONE_STEP)
    obs = case.observation
    buffers = bn_statistic_names(case.prior.model_factory())
    client = {k: obs.global_state[k] if k in buffers else v for k, v in obs.client_state.items()}
    with caplog.at_level(logging.WARNING, logger="attacks.gradinversion"):
        rec = _attack(iterations=2).reconstruct(dataclasses.replace(obs, client_state=client),
                                                case.prior)
    assert rec.info["bn_reference"] == 0.0
    assert any("did not move" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("reference", ["update", "global"])
def test_model_without_batchnorm_runs_without_the_prior(reference):
    case = client_update([2], ONE_STEP, norm="none")
    with pytest.warns(UserWarning, match="no BatchNorm layer; the BN prior is off"):
        rec = _attack(iterations=2, bn_reference=reference).reconstruct(case.observation,
                                                                        case.prior)
    assert rec.info["bn_reference"] == -1.0


# --- restarts, determinism, configuration ---------------------------------------------------------
def test_restarts_keep_the_lowest_objective_and_are_deterministic():
    case = client_update([2], ONE_STEP)
    rec = _attack(iterations=5, restarts=3).reconstruct(case.observation, case.prior)
    objectives = [rec.info[f"restart_{i}_objective"] for i in range(3)]
    assert len(set(objectives)) == 3 and rec.loss == min(objectives)
    assert rec.info["best_restart"] == float(objectives.index(min(objectives)))
    again = _attack(iterations=5, restarts=3).reconstruct(case.observation, case.prior)
    assert torch.equal(rec.images, again.images)
    other = _attack(seed=1, iterations=5, restarts=3).reconstruct(case.observation, case.prior)
    assert not torch.equal(rec.images, other.images)


def test_langevin_noise_and_l2_cost_run_deterministically():
    case = client_update([2], ONE_STEP)
    params = {"iterations": 5, "langevin_noise": 0.2, "cost": "l2", "l2_weight": 1e-4}
    first = _attack(**params).reconstruct(case.observation, case.prior)
    again = _attack(**params).reconstruct(case.observation, case.prior)
    quiet = _attack(**{**params, "langevin_noise": 0.0}).reconstruct(case.observation,
                                                                     case.prior)
    assert torch.equal(first.images, again.images)
    assert not torch.equal(first.images, quiet.images)


def test_registered_with_validated_params():
    assert ATTACKS.get("gradinversion").params_type is GradInversionParams
    attack = _attack(bn_weight=1, tv_weight=0)
    assert attack.params.bn_weight == 1.0 and "bn_weight=1.0 (update)" in attack.summary()
    assert attack.needs.bn_statistics and attack.needs.labels is None


@pytest.mark.parametrize("params, match", [
    ({"iterations": 0}, r"attack.params.iterations: expected an integer >= 1, got 0"),
    ({"bn_weight": -1}, r"attack.params.bn_weight: expected a number >= 0"),
    ({"group_size": 0}, r"attack.params.group_size: expected an integer >= 1"),
    ({"group_start": 1.0}, r"attack.params.group_start: expected a number < 1, got 1.0"),
    ({"bn_reference": "true"}, r"attack.params.bn_reference: expected one of update, global"),
    ({"cost": "l1"}, r"attack.params.cost: expected one of cosine, l2"),
])
def test_bad_params_are_config_errors(params, match):
    with pytest.raises(ConfigError, match=match):
        build_attack("gradinversion", params, device=CPU, seed=0)
