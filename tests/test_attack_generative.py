"""GGL and GIAS: generative-prior attacks on small real client updates.

The clients' images are outputs of a small fixed generator (so the generator the attacker
holds can express them, the premise of both papers); the ConvNet trains on them for real and
the attack sees only the server's view (:mod:`tests.attack_cases`). Scores are the project's
protocol, computed here, outside the attack.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from attack_cases import SIZE, Case, client_update, random_scores, scores
from attacks import ATTACKS, GGL, GIAS, build_attack
from attacks.ggl import ggl_lr_factor
from fl_shadow.errors import ConfigError, ThreatModelError
from fl_shadow.generative import ImageGenerator, to_unit
from fl_shadow.training import LocalTraining

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def generator() -> ImageGenerator:
    torch.manual_seed(0)
    return ImageGenerator(16, SIZE, 1, max_channels=32, min_channels=8).eval()


@pytest.fixture(scope="module")
def truth(generator: ImageGenerator) -> torch.Tensor:
    z = torch.randn(4, 16, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        return to_unit(generator(z))


def _case(truth: torch.Tensor, generator: ImageGenerator, n: int) -> Case:
    case = client_update(list(range(n)), LocalTraining(lr=0.05, batch_size=n),
                         images=truth[:n], width=8)
    return replace(case, prior=replace(case.prior, generator=generator))


def _attack(name: str, **params: object):  # type: ignore[no-untyped-def]
    return build_attack(name, {**params, "progress": False}, device=CPU, seed=0)


def test_ggl_cma_recovers_one_image(truth: torch.Tensor, generator: ImageGenerator) -> None:
    case = _case(truth, generator, 1)
    state = np.random.get_state()
    rec = _attack("ggl", optimizer="cma", budget=30).reconstruct(case.observation, case.prior)
    assert np.array_equal(np.random.get_state()[1], state[1])  # pycma's draws leave no trace
    got, floor = scores(rec.images, rec.labels, case), random_scores(case)
    assert got["psnr"] > floor["psnr"] + 8  # measured 22.3 vs 8.3 dB
    assert got["ssim"] > 0.6
    assert got["label_accuracy"] == 1.0
    assert rec.iterations > 30  # evaluations, not generations


def test_ggl_adam_recovers_a_batch(truth: torch.Tensor, generator: ImageGenerator) -> None:
    case = _case(truth, generator, 4)
    rec = _attack("ggl", optimizer="adam", budget=100).reconstruct(case.observation, case.prior)
    got, floor = scores(rec.images, rec.labels, case), random_scores(case)
    assert got["psnr"] > floor["psnr"] + 4  # measured 15.2 vs 9.2 dB
    assert got["label_accuracy"] == 1.0
    assert rec.images.shape == (4, 1, SIZE, SIZE)
    assert rec.iterations == 100


def test_ggl_is_deterministic(truth: torch.Tensor, generator: ImageGenerator) -> None:
    case = _case(truth, generator, 1)
    a = _attack("ggl", optimizer="cma", budget=3).reconstruct(case.observation, case.prior)
    b = _attack("ggl", optimizer="cma", budget=3).reconstruct(case.observation, case.prior)
    assert torch.equal(a.images, b.images) and a.loss == b.loss


def test_gias_generator_search_improves_on_the_latent_search(
        truth: torch.Tensor, generator: ImageGenerator) -> None:
    case = _case(truth, generator, 4)
    latent_only = _attack("gias", latent_iterations=60, generator_iterations=0,
                          restarts=1).reconstruct(case.observation, case.prior)
    full = _attack("gias", latent_iterations=60, generator_iterations=60,
                   restarts=1).reconstruct(case.observation, case.prior)
    assert full.info["generator_cost"] < 0.7 * full.info["latent_cost"]  # 0.23 vs 0.78
    assert full.info["latent_cost"] == pytest.approx(latent_only.loss)
    psnr_full = scores(full.images, full.labels, case)["psnr"]
    psnr_latent = scores(latent_only.images, latent_only.labels, case)["psnr"]
    assert psnr_full > psnr_latent + 1.5  # measured 17.8 vs 14.0 dB
    assert psnr_full > random_scores(case)["psnr"] + 6
    assert full.iterations == 120


def test_gias_keeps_the_best_restart_by_its_own_cost(
        truth: torch.Tensor, generator: ImageGenerator) -> None:
    case = _case(truth, generator, 1)
    rec = _attack("gias", latent_iterations=20, generator_iterations=0,
                  restarts=3).reconstruct(case.observation, case.prior)
    costs = [rec.info[f"restart_{i}_cost"] for i in range(3)]
    assert rec.loss == min(costs)


@pytest.mark.parametrize("n", [1, 3])
def test_gias_batched_restarts_follow_the_sequential_ones(
        truth: torch.Tensor, generator: ImageGenerator, n: int) -> None:
    case = _case(truth, generator, n)
    runs = {batched: _attack("gias", latent_iterations=15, generator_iterations=0, restarts=3,
                             batch_restarts=batched).reconstruct(case.observation, case.prior)
            for batched in (False, True)}
    for i in range(3):  # each restart's best cost, up to the batched kernels' float order
        assert runs[True].info[f"restart_{i}_cost"] == pytest.approx(
            runs[False].info[f"restart_{i}_cost"], rel=1e-3, abs=1e-5)
    torch.testing.assert_close(runs[True].images, runs[False].images, atol=1e-3, rtol=0)


@pytest.mark.parametrize("cls", [GGL, GIAS])
def test_generative_attacks_need_the_generator(cls: type, truth: torch.Tensor,
                                               generator: ImageGenerator) -> None:
    case = _case(truth, generator, 1)
    spec = ATTACKS.get(cls.name)
    assert spec.needs(spec.parse_params({})).generator  # declared: pretrained before the run
    attack = _attack(cls.name)
    with pytest.raises(ThreatModelError, match="needs the public-data generator"):
        attack.reconstruct(case.observation, replace(case.prior, generator=None))
    wrong = ImageGenerator(16, 2 * SIZE, 1, max_channels=16, min_channels=8)
    with pytest.raises(ThreatModelError, match="generator makes images of shape"):
        attack.reconstruct(case.observation, replace(case.prior, generator=wrong))


def test_generative_params_are_validated() -> None:
    with pytest.raises(ConfigError, match=r"attack.params.budget"):
        build_attack("ggl", {"budget": 0}, device=CPU, seed=0)
    with pytest.raises(ConfigError, match=r"attack.params.population"):
        build_attack("ggl", {"population": 1}, device=CPU, seed=0)
    with pytest.raises(ConfigError, match=r"attack.params.generator_lr"):
        build_attack("gias", {"generator_lr": 0}, device=CPU, seed=0)


def test_ggl_adam_schedule_warms_up_and_ramps_down() -> None:
    values = [ggl_lr_factor(i, 100) for i in range(100)]
    assert values[0] == 0.0 and values[5] == pytest.approx(1.0)
    assert values[50] == 1.0
    assert values[99] < 0.01 and all(a >= b for a, b in zip(values[75:], values[76:]))
