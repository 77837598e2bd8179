"""Inverting Gradients end to end on a small undefended ConvNet (attacks/inverting_gradients.py).

The client update comes from the project's real local-training loop; PSNR and SSIM are computed
here (not with fl_shadow.metrics) against a downsampled ``skimage.data.camera()``.
"""

from __future__ import annotations

import ast
import dataclasses
import logging
import math
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from skimage.metrics import structural_similarity

from attacks import ATTACKS, InvertingGradientsParams, Observation, Prior, build_attack
from attacks.inverting_gradients import label_placements, lr_milestones
from attacks.objectives import cosine_cost
from attacks.replay import UpdateReplay
from fl_shadow.errors import ConfigError, ThreatModelError
from fl_shadow.defenses import Defense
from fl_shadow.models import ConvNet
from fl_shadow.sample_images import sample_images
from fl_shadow.training import LocalTraining, train_locally

SIZE, CLASSES, WIDTH = 16, 4, 16
MEAN, STD = (0.5,), (0.25,)
CPU = torch.device("cpu")
ATTACKS_DIR = Path(__file__).resolve().parent.parent / "attacks"


def _factory() -> ConvNet:
    return ConvNet(1, CLASSES, width=WIDTH, image_size=SIZE)


def _image(name: str = "camera") -> torch.Tensor:
    """``(1, 1, SIZE, SIZE)`` in [0, 1]: a scikit-image sample's central square, downsampled."""
    return sample_images(1, SIZE, names=(name,))


def _camera() -> torch.Tensor:
    return _image("camera")


def _observe(images: torch.Tensor, labels: list[int], plan: LocalTraining, *,
             give_labels: bool = False, seed: int = 0) -> tuple[Observation, Prior]:
    """Run the client's real training on ``images`` ([0, 1]) and package what the server sees."""
    torch.manual_seed(seed)
    model = _factory()
    global_state = {k: v.clone() for k, v in model.state_dict().items()}
    x = (images - MEAN[0]) / STD[0]
    y = torch.tensor(labels)
    result = train_locally(model, x, y, plan, defense=Defense(), ctx=SimpleNamespace(step=0),
                           generator=torch.Generator().manual_seed(seed))
    order = torch.tensor([i for batch in result.batches for i in batch])
    num = len(labels)
    observation = Observation(global_state=global_state, client_state=model.state_dict(),
                              num_examples=num, training=plan,
                              num_images=plan.num_distinct_images(num),
                              labels=y[order][:num] if give_labels else None)
    prior = Prior(model_factory=_factory, image_shape=(1, SIZE, SIZE), num_classes=CLASSES,
                  mean=MEAN, std=STD)
    return observation, prior


def _psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    mse = float(((a - b) ** 2).mean())
    return 10 * math.log10(1.0 / mse)


def _ssim(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(structural_similarity(a[0, 0].numpy(), b[0, 0].numpy(), data_range=1.0))


def _random_image(seed: int = 123) -> torch.Tensor:
    """The attack's starting point, de-normalized: N(0, 1) in normalized space, clamped."""
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(1, 1, SIZE, SIZE, generator=g) * STD[0] + MEAN[0]).clamp(0, 1)


def _attack(seed: int = 0, **params):
    return build_attack("inverting_gradients", {"progress": False, **params}, device=CPU,
                        seed=seed)


# --- quality -----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def single_gradient_run():
    truth = _camera()
    observation, prior = _observe(truth, [2], LocalTraining(lr=0.01, batch_size=1,
                                                            local_steps=1))
    reconstruction = _attack(iterations=300).reconstruct(observation, prior)
    return truth, observation, prior, reconstruction


def test_single_gradient_reconstruction_beats_random(single_gradient_run):
    truth, _, _, rec = single_gradient_run
    psnr, ssim = _psnr(rec.images, truth), _ssim(rec.images, truth)
    psnr_random, ssim_random = _psnr(_random_image(), truth), _ssim(_random_image(), truth)
    psnr_flat = _psnr(torch.full_like(truth, float(truth.mean())), truth)
    # Measured: PSNR 18.2 dB, SSIM 0.75; random image 9.1 dB / 0.02; flat mean image 11.9 dB.
    assert psnr >= psnr_random + 6.0, (psnr, psnr_random)
    assert psnr >= psnr_flat + 3.0, (psnr, psnr_flat)
    assert ssim >= ssim_random + 0.4, (ssim, ssim_random)
    assert rec.labels.tolist() == [2]  # iDLG
    assert rec.info["labels_recovered"] == 1.0


def test_reconstruction_contract(single_gradient_run):
    _, _, _, rec = single_gradient_run
    assert rec.images.shape == (1, 1, SIZE, SIZE) and rec.images.dtype == torch.float32
    assert float(rec.images.min()) >= 0.0 and float(rec.images.max()) <= 1.0
    assert rec.labels.dtype == torch.long
    assert rec.iterations == 300 and rec.seconds > 0 and math.isfinite(rec.loss)


def _matched(rec_images: torch.Tensor, truth: torch.Tensor) -> tuple[list[float], list[float]]:
    """PSNR and SSIM per true image under the better of the two pairings (scoring's job)."""
    pairings = [(0, 1), (1, 0)]
    best = max(pairings, key=lambda p: sum(_psnr(rec_images[[i]], truth[[j]])
                                           for j, i in enumerate(p)))
    return ([_psnr(rec_images[[i]], truth[[j]]) for j, i in enumerate(best)],
            [_ssim(rec_images[[i]], truth[[j]]) for j, i in enumerate(best)])


def test_multi_step_update_reconstruction_beats_random():
    # FedAvg: two images, three local SGD steps on them; labels recovered from the update.
    truth = torch.cat([_image("camera"), _image("moon")])
    plan = LocalTraining(lr=0.05, batch_size=2, local_steps=3)
    observation, prior = _observe(truth, [2, 0], plan)
    assert observation.num_local_steps == 3
    rec = _attack(iterations=300).reconstruct(observation, prior)
    psnr, ssim = _matched(rec.images, truth)
    # Measured: PSNR 16.4 / 27.0 dB, SSIM 0.68 / 0.75; random image 9.1 / 12.0 dB, SSIM 0.02.
    for j in range(2):
        assert psnr[j] >= _psnr(_random_image(), truth[[j]]) + 5.0, psnr
        assert ssim[j] >= _ssim(_random_image(), truth[[j]]) + 0.4, ssim
    assert sorted(rec.labels.tolist()) == [0, 2]
    assert rec.info["num_local_steps"] == 3.0


@pytest.mark.parametrize("labels", [[2, 0], [0, 2]])
def test_restarts_search_which_recovered_label_sat_in_which_step(labels):
    # Two images, batch 1: two steps with one image each. The summed update gives the labels
    # {0, 2} but not their order; restart 0 tries (0, 2), restart 1 (2, 0), and the attack's
    # own cost picks the client's step order (measured after 100 iterations: 0.23 right vs
    # 0.27 wrong, and 0.21 vs 0.28; after 300: ~0.27 vs ~0.61).
    truth = torch.cat([_image("camera"), _image("moon")])
    plan = LocalTraining(lr=0.01, batch_size=1, local_epochs=1)
    observation, prior = _observe(truth, labels, plan, give_labels=True)  # labels: step order
    step_order = observation.labels.tolist()
    withheld = dataclasses.replace(observation, labels=None)
    rec = _attack(iterations=100, restarts=2).reconstruct(withheld, prior)
    assert rec.labels.tolist() == step_order
    assert rec.info["best_restart"] == float([[0, 2], [2, 0]].index(step_order))


# --- restarts, determinism -------------------------------------------------------------------
@pytest.mark.parametrize("batch_restarts", [True, False])
def test_restarts_keep_the_lowest_attack_loss(batch_restarts):
    observation, prior = _observe(_camera(), [0], LocalTraining(lr=0.01, batch_size=1))
    rec = _attack(iterations=15, restarts=3,
                  batch_restarts=batch_restarts).reconstruct(observation, prior)
    costs = [rec.info[f"restart_{i}_cost"] for i in range(3)]
    assert len(set(costs)) == 3  # independent starts
    assert rec.loss == min(costs)
    assert rec.info["best_restart"] == float(costs.index(min(costs)))
    assert rec.iterations == 45
    # The returned images are the winner: re-scoring them gives the reported loss.
    model = _factory()
    model.load_state_dict(observation.global_state)
    replay = UpdateReplay(model, observation.global_state, observation.training, 1, 1)
    x = (rec.images - MEAN[0]) / STD[0]
    rescored = float(cosine_cost(replay(x, rec.labels, create_graph=False),
                                 observation.parameter_update(model)))
    assert rescored == pytest.approx(rec.loss, abs=1e-4)


@pytest.mark.parametrize("plan", [
    LocalTraining(lr=0.05, batch_size=1, local_epochs=1),  # 2 steps, one image each
    LocalTraining(lr=0.05, batch_size=2, local_steps=2, momentum=0.9, weight_decay=1e-3),
    LocalTraining(lr=0.01, batch_size=2, local_steps=2, optimizer="adam", proximal_mu=0.1),
], ids=["sgd", "momentum", "adam_fedprox"])
def test_batched_replay_equals_each_set_replayed_alone(plan):
    """Row r of the batched replay is the replay of set r: own parameters, own BatchNorm
    statistics (the test model has BatchNorm), own local steps; gradients w.r.t. the images
    too."""
    torch.manual_seed(0)
    model = _factory()
    replay = UpdateReplay(model, model.state_dict(), plan, 2, 2)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(3, 2, 1, SIZE, SIZE, generator=g).requires_grad_(True)
    labels = torch.tensor([[0, 1], [2, 2], [3, 0]])
    batched = replay.batched(x, labels)
    probe = [torch.randn(u.shape[1:], generator=g) for u in batched]
    (grad_batched,) = torch.autograd.grad(
        sum((u * v).sum() for u, v in zip(batched, probe, strict=True)), x)
    for r in range(3):
        xr = x[r].detach().clone().requires_grad_(True)
        alone = replay(xr, labels[r])
        # Float rounding only (Adam's first steps amplify it where a gradient entry is tiny).
        for u, a in zip(batched, alone, strict=True):
            torch.testing.assert_close(u[r], a, rtol=1e-3,
                                       atol=1e-4 * float(a.detach().abs().max()))
        (grad_alone,) = torch.autograd.grad(
            sum((a * v).sum() for a, v in zip(alone, probe, strict=True)), xr)
        torch.testing.assert_close(grad_batched[r], grad_alone, rtol=1e-3,
                                   atol=1e-3 * float(grad_alone.abs().max()))
    plain = replay.batched(x.detach(), labels, create_graph=False)
    assert all(not u.requires_grad for u in plain)
    with pytest.raises(ValueError, match="expected candidate sets"):
        replay.batched(x[0], labels[0])
    from fl_shadow.defenses.base import DefenseModel
    replay.defense = DefenseModel()
    with pytest.raises(ValueError, match="does not model a defense"):
        replay.batched(x, labels)


@pytest.mark.parametrize("plan, labels", [
    (LocalTraining(lr=0.01, batch_size=2), [2, 0]),  # one step, BatchNorm couples the pair
    (LocalTraining(lr=0.05, batch_size=1, local_epochs=1), [2, 0]),  # labels placed per restart
])
def test_batched_restarts_follow_their_sequential_trajectories(plan, labels):
    """One batched optimisation of R restarts = the R restarts one after the other: same
    starts, same trajectories (to float rounding), same scores and the same winner."""
    truth = torch.cat([_image("camera"), _image("moon")])
    observation, prior = _observe(truth, labels, plan)
    runs = [_attack(iterations=20, restarts=3, batch_restarts=b).reconstruct(observation, prior)
            for b in (False, True)]
    sequential, batched = runs
    for i in range(3):
        assert batched.info[f"restart_{i}_cost"] == pytest.approx(
            sequential.info[f"restart_{i}_cost"], rel=1e-3, abs=1e-5)
    assert batched.info["best_restart"] == sequential.info["best_restart"]
    assert batched.labels.tolist() == sequential.labels.tolist()
    torch.testing.assert_close(batched.images, sequential.images, rtol=0, atol=1e-3)
    assert batched.iterations == sequential.iterations == 60


def test_one_restart_is_the_same_with_batching_on_or_off():
    observation, prior = _observe(_camera(), [1], LocalTraining(lr=0.01, batch_size=1))
    on = _attack(iterations=10, batch_restarts=True).reconstruct(observation, prior)
    off = _attack(iterations=10, batch_restarts=False).reconstruct(observation, prior)
    assert torch.equal(on.images, off.images) and on.loss == off.loss


@pytest.mark.parametrize("plan", [
    LocalTraining(lr=0.05, batch_size=1, local_epochs=1),
    LocalTraining(lr=0.01, batch_size=2, local_steps=2, optimizer="adam", proximal_mu=0.1),
], ids=["sgd", "adam_fedprox"])
def test_pure_replay_equals_the_replay_and_its_image_gradient(plan):
    """What ``compile: true`` traces: the torch.func replay, differentiated by torch.func.grad,
    gives the autograd replay's update and image gradient."""
    torch.manual_seed(0)
    model = _factory()
    replay = UpdateReplay(model, model.state_dict(), plan, 2, 2)
    g = torch.Generator().manual_seed(3)
    x = torch.randn(2, 1, SIZE, SIZE, generator=g)
    labels = torch.tensor([1, 3])
    probe = [torch.randn(t.shape, generator=g) for t in replay._initial.values()]

    def score(update: list[torch.Tensor]) -> torch.Tensor:
        return sum((u * v).sum() for u, v in zip(update, probe, strict=True))

    xr = x.clone().requires_grad_(True)
    reference = replay(xr, labels)
    (grad_reference,) = torch.autograd.grad(score(reference), xr)
    for u, a in zip(replay.pure(x, labels), reference, strict=True):
        torch.testing.assert_close(u, a.detach(), rtol=1e-3,
                                   atol=1e-4 * float(a.detach().abs().max()))
    grad_pure = torch.func.grad(lambda images: score(replay.pure(images, labels)))(x)
    torch.testing.assert_close(grad_pure, grad_reference, rtol=1e-3,
                               atol=1e-3 * float(grad_reference.abs().max()))


@pytest.mark.slow
def test_compiled_attack_follows_the_uncompiled_trajectory():
    """``compile: true`` (~50 s to compile on a 2-core CPU the first time)."""
    observation, prior = _observe(_camera(), [2], LocalTraining(lr=0.01, batch_size=1))
    eager = _attack(iterations=20, restarts=2, batch_restarts=False).reconstruct(observation,
                                                                               prior)
    compiled = _attack(iterations=20, restarts=2, compile=True).reconstruct(observation, prior)
    assert compiled.info["compile_seconds"] > 0
    assert compiled.info["best_restart"] == eager.info["best_restart"]
    assert compiled.loss == pytest.approx(eager.loss, rel=1e-3)
    torch.testing.assert_close(compiled.images, eager.images, rtol=0, atol=1e-3)


def test_deterministic_under_its_seed():
    observation, prior = _observe(_camera(), [3], LocalTraining(lr=0.01, batch_size=1))
    first = _attack(seed=7, iterations=10).reconstruct(observation, prior)
    second = _attack(seed=7, iterations=10).reconstruct(observation, prior)
    other = _attack(seed=8, iterations=10).reconstruct(observation, prior)
    assert torch.equal(first.images, second.images) and first.loss == second.loss
    assert not torch.equal(first.images, other.images)


# --- labels and threat model -------------------------------------------------------------------
def test_given_labels_are_used_as_they_are():
    images = torch.cat([_camera(), _camera().flip(-1)])
    observation, prior = _observe(images, [3, 1], LocalTraining(lr=0.01, batch_size=2),
                                  give_labels=True)
    rec = _attack(iterations=2).reconstruct(observation, prior)
    assert rec.labels.tolist() == observation.labels.tolist()
    assert rec.info["labels_recovered"] == 0.0
    assert rec.images.shape == (2, 1, SIZE, SIZE)


def test_require_labels_raises_threat_model_error_when_labels_are_withheld():
    observation, prior = _observe(_camera(), [0], LocalTraining(lr=0.01, batch_size=1))
    with pytest.raises(ThreatModelError, match="require_labels is true but the threat model "
                                               "withholds labels"):
        _attack(iterations=2, require_labels=True).reconstruct(observation, prior)
    given = dataclasses.replace(observation, labels=torch.tensor([0]))
    assert _attack(iterations=2, require_labels=True).reconstruct(given, prior).labels.tolist() \
        == [0]


def test_missing_parameter_in_upload_is_a_threat_model_error():
    observation, prior = _observe(_camera(), [0], LocalTraining(lr=0.01, batch_size=1))
    client = {k: v for k, v in observation.client_state.items() if k != "fc.weight"}
    stripped = dataclasses.replace(observation, client_state=client)
    with pytest.raises(ThreatModelError, match="lacks parameter 'fc.weight'"):
        _attack(iterations=2).reconstruct(stripped, prior)


def test_too_many_images_are_skipped_by_the_hook():
    """``attack.max_images`` is the one limit: the hook skips a larger update, with the reason
    (a ``skipped`` privacy row), and attacks one within it."""
    from fl_shadow.config import load_config_dict
    from fl_shadow.threat_model import AttackOutcome
    from strategies.attack_hook import AttackHook, ReceivedUpdate, Skipped

    plan = LocalTraining(lr=0.01, batch_size=1)
    observation, prior = _observe(_camera(), [0], plan)
    selection = load_config_dict({"train": {"rounds": 1},
                                  "attack": {"name": "inverting_gradients",
                                             "max_images": 4}}).attack
    keys_ = list(observation.global_state)
    hook = AttackHook(_attack(iterations=2), prior, selection=selection, num_rounds=1,
                      plan_for=lambda _client: plan, state_keys=keys_, label_lookup=None,
                      defense_knowledge=None, device=CPU)
    global_arrays = [observation.global_state[k].numpy() for k in keys_]
    sent = [observation.client_state[k].numpy() for k in keys_]
    skipped = hook.run(1, global_arrays, ReceivedUpdate(0, sent, 5, {}))
    assert isinstance(skipped, Skipped)
    assert (skipped.server_round, skipped.client_id) == (1, 0)
    assert skipped.reason == "the update holds 5 images > attack.max_images=4"
    attacked = hook.run(1, global_arrays, ReceivedUpdate(0, sent, 1, {}))
    assert isinstance(attacked, AttackOutcome) and attacked.reconstruction.images.shape[0] == 1


def test_max_images_above_the_attacks_ceiling_is_refused_at_load():
    from fl_shadow.apps.experiment import load_experiment

    assert ATTACKS.get("inverting_gradients").max_images == 16
    config, _ = load_experiment(None, ["attack.name=inverting_gradients",
                                       "attack.max_images=16"], data=False)
    assert config.attack.max_images == 16
    with pytest.raises(ConfigError, match=r"^attack.max_images: expected at most 16 .*got 17$"):
        load_experiment(None, ["attack.name=inverting_gradients", "attack.max_images=17"],
                        data=False)


def test_wrong_number_of_given_labels():
    observation, prior = _observe(_camera(), [0], LocalTraining(lr=0.01, batch_size=1))
    bad = dataclasses.replace(observation, labels=torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="observation.labels has 2 entries, expected "
                                         "num_images=1"):
        _attack(iterations=2).reconstruct(bad, prior)


# --- configuration, logging ----------------------------------------------------------------------
def test_registered_with_a_validated_params_dataclass():
    assert "inverting_gradients" in ATTACKS
    spec = ATTACKS.get("inverting_gradients")
    assert spec.params_type is InvertingGradientsParams
    attack = _attack(iterations=3, tv_weight=0)  # YAML ints are accepted for floats
    assert attack.params.tv_weight == 0.0 and attack.params.iterations == 3
    assert attack.name == "inverting_gradients" and "iterations=3" in attack.summary()


@pytest.mark.parametrize("params, match", [
    ({"iterations": 0}, r"attack.params.iterations: expected an integer >= 1, got 0"),
    ({"lr": -1}, r"attack.params.lr: expected a number > 0"),
    ({"tv_weight": -0.1}, r"attack.params.tv_weight: expected a number >= 0"),
    ({"restarts": 0}, r"attack.params.restarts: expected an integer >= 1"),
    ({"cost": "l3"}, r"attack.params.cost: expected one of cosine, l2"),
    ({"iteration": 5}, r"attack.params.iteration: unknown key"),
])
def test_bad_params_are_config_errors(params, match):
    with pytest.raises(ConfigError, match=match):
        build_attack("inverting_gradients", params, device=CPU, seed=0)


def test_lr_milestones_follow_the_paper():
    assert lr_milestones(24000) == [8998, 15000, 21015]
    assert lr_milestones(8) == [2, 5, 7]


def test_logs_one_line_per_restart(caplog):
    observation, prior = _observe(_camera(), [0], LocalTraining(lr=0.01, batch_size=1))
    with caplog.at_level(logging.INFO, logger="attacks.inverting_gradients"):
        _attack(iterations=2, restarts=2).reconstruct(observation, prior)
    lines = [r.getMessage() for r in caplog.records if "restart" in r.getMessage()]
    assert len(lines) == 2 and lines[1].startswith("inverting_gradients restart 2/2")


# --- the no-ground-truth guarantee, structural half -------------------------------------------
FORBIDDEN = ("fl_shadow.data", "fl_shadow.metrics")


def _imported_modules(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


@pytest.mark.parametrize("path", sorted(ATTACKS_DIR.glob("*.py")), ids=lambda p: p.name)
def test_attack_modules_do_not_import_ground_truth_sources(path):
    bad = [m for m in _imported_modules(path)
           if any(m == f or m.startswith(f + ".") for f in FORBIDDEN)]
    assert not bad, f"{path.name} imports {bad}"


def test_importing_the_attacks_package_loads_no_ground_truth_module():
    code = ("import sys, attacks; "
            f"bad = [m for m in sys.modules if m.startswith({FORBIDDEN!r})]; "
            "print(bad); sys.exit(1 if bad else 0)")
    done = subprocess.run([sys.executable, "-c", code], cwd=ATTACKS_DIR.parent,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr


def test_label_placements_enumerate_distinct_step_groupings():
    slots = [torch.tensor([0, 1]), torch.tensor([2, 3]), torch.tensor([0, 1])]  # 2 epochs
    got = [p.tolist() for p in label_placements(torch.tensor([5, 1, 3, 3]), slots, 9,
                                                torch.Generator())]
    assert got == [[1, 3, 3, 5], [1, 5, 3, 3], [3, 3, 1, 5], [3, 5, 1, 3]]
    assert len(label_placements(torch.tensor([5, 1, 3, 3]), slots, 2, torch.Generator())) == 2
    # One step group: a single placement (the order inside a batch is irrelevant).
    one = label_placements(torch.tensor([2, 0]), [torch.tensor([0, 1])], 5, torch.Generator())
    assert [p.tolist() for p in one] == [[0, 2]]
    # Groups that do not partition the slots: random permutations, seeded.
    odd = [torch.tensor([0, 1, 0])]
    first = label_placements(torch.tensor([1, 0]), odd, 3, torch.Generator().manual_seed(0))
    again = label_placements(torch.tensor([1, 0]), odd, 3, torch.Generator().manual_seed(0))
    assert len(first) == 3 and all(torch.equal(a, b) for a, b in zip(first, again))
