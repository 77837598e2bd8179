"""The cross-round attacker: aligning, standardizing and averaging one hospital's
reconstructions over the rounds (``attack.combine_rounds``)."""

from __future__ import annotations

import torch

from attack_cases import client_update
from fl_shadow.config import load_config_dict
from fl_shadow.cross_round import combine_rounds, standardize
from fl_shadow.threat_model import Reconstruction
from fl_shadow.training import LocalTraining
from strategies.attack_hook import AttackHook, ReceivedUpdate


def _truth() -> torch.Tensor:
    """Three distinct smooth images in [0.2, 0.8] (a noisy copy stays inside [0, 1])."""
    ramp = torch.linspace(0, 1, 32)
    return 0.2 + 0.6 * torch.stack([ramp.view(1, 32, 1).expand(1, 32, 32),
                                    ramp.view(1, 1, 32).expand(1, 32, 32),
                                    (ramp.view(32, 1) * ramp.view(1, 32)).unsqueeze(0)])


def _noisy(truth: torch.Tensor, seed: int, std: float = 0.05) -> torch.Tensor:
    return truth + std * torch.randn(truth.shape, generator=torch.Generator().manual_seed(seed))


def _mse(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((standardize(a) - standardize(b)).pow(2).mean())


def test_nothing_earlier_leaves_the_reconstruction_as_it_is() -> None:
    now = _noisy(_truth(), 0)
    assert torch.equal(combine_rounds(now, []), now)
    # an earlier round of another batch size cannot be aligned: left out
    assert torch.equal(combine_rounds(now, [now[:2]]), now)


def test_fresh_noise_averages_away_after_aligning_the_order() -> None:
    truth = _truth()
    now = _noisy(truth, 1)
    earlier = [_noisy(truth, s)[torch.tensor([2, 0, 1])] for s in (2, 3, 4)]  # shuffled order
    combined = combine_rounds(now, earlier)
    # four independent draws: the noise's share of the error falls to about a quarter
    assert _mse(combined, truth) < 0.35 * _mse(now, truth)


def test_frozen_noise_gains_nothing() -> None:
    truth = _truth()
    now = _noisy(truth, 1)
    combined = combine_rounds(now, [now[torch.tensor([1, 2, 0])], now.clone()])
    torch.testing.assert_close(combined, now, rtol=0, atol=1e-5)


def test_brightness_and_contrast_of_an_earlier_round_do_not_matter() -> None:
    truth = _truth()
    now, other = _noisy(truth, 1), _noisy(truth, 2)
    plain = combine_rounds(now, [other])
    torch.testing.assert_close(combine_rounds(now, [0.5 * other + 0.1]), plain, rtol=0,
                               atol=1e-5)


class _Replay:
    """An attack that answers with the given images, one call after another."""

    name = "replay"

    def __init__(self, answers: list[torch.Tensor]) -> None:
        self.answers = answers

    def reconstruct(self, observation: object, prior: object) -> Reconstruction:
        images = self.answers.pop(0)
        return Reconstruction(images, torch.zeros(len(images), dtype=torch.long), 0.0, 1, 0.0)


def test_the_hook_combines_a_clients_rounds_and_keeps_clients_apart() -> None:
    case = client_update([0, 1, 2], LocalTraining(lr=0.01, batch_size=3))
    keys_ = list(case.observation.global_state)
    arrays = [case.observation.global_state[k].numpy() for k in keys_]
    sent = [case.observation.client_state[k].numpy() for k in keys_]
    truth = _truth()
    rounds = [_noisy(truth, 1), _noisy(truth, 9), _noisy(truth, 2)]
    for combine in (False, True):
        selection = load_config_dict({"train": {"rounds": 2}, "attack": {
            "name": "inverting_gradients", "rounds": [1, 2], "combine_rounds": combine}}).attack
        hook = AttackHook(_Replay([r.clone() for r in rounds]), case.prior,  # type: ignore[arg-type]
                          selection=selection, num_rounds=2,
                          plan_for=lambda _c: LocalTraining(lr=0.01, batch_size=3),
                          state_keys=keys_, label_lookup=None, defense_knowledge=None,
                          device=torch.device("cpu"))
        first = hook.run(1, arrays, ReceivedUpdate(0, sent, 3, {}))
        other = hook.run(1, arrays, ReceivedUpdate(1, sent, 3, {}))   # another hospital
        second = hook.run(2, arrays, ReceivedUpdate(0, sent, 3, {}))
        assert torch.equal(first.reconstruction.images, rounds[0])  # type: ignore[union-attr]
        assert torch.equal(other.reconstruction.images, rounds[1])  # type: ignore[union-attr]
        got = second.reconstruction.images  # type: ignore[union-attr]
        if combine:  # hospital 0's rounds 1 and 2, not hospital 1's
            torch.testing.assert_close(got, combine_rounds(rounds[2], [rounds[0]]))
            assert second.reconstruction.info["combined_rounds"] == 2.0  # type: ignore[union-attr]
        else:
            assert torch.equal(got, rounds[2])
