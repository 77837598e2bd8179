"""The Shadow Defense: each stage, the whole defense, and its state across rounds."""

from __future__ import annotations

import copy
import dataclasses
import math

import numpy as np
import pytest
import torch
from flwr.app import Context, RecordDict

from clients.defended import LocalData
from fl_shadow import flower_keys as keys
from fl_shadow.apps.federation import Federation
from fl_shadow.config import load_config
from fl_shadow.defenses import DefenseContext, build_defense, describe_defense
from fl_shadow.defenses.base import Defense
from fl_shadow.defenses.shadow import ShadowDefense, ShadowParams
from fl_shadow.defenses.shadow.defense import attacker_model
from fl_shadow.defenses.shadow.fine_tune import ShadowWeights, pseudo_step, shadow_objective
from fl_shadow.defenses.shadow.noise import (
    cam_alpha,
    equalize_per_image,
    error_to_noise_map,
    noise_weight,
    scale_noise,
    suppress_foreground,
    update_memory,
)
from fl_shadow.errors import ConfigError
from fl_shadow.generative import ImageGenerator, load_checkpoint
from fl_shadow.generative.public import pretrained_generator
from fl_shadow.models import build_model
from fl_shadow.saliency import cam_maps, top_fraction_mask
from fl_shadow.training import LocalTraining, train_locally

MEAN, STD = (0.5,), (0.25,)


# -- noise map -------------------------------------------------------------------------------
def test_noise_concentrates_where_the_shadow_reconstructs_best() -> None:
    g = torch.Generator().manual_seed(0)
    error = 0.5 + torch.rand(2, 1, 16, 16, generator=g)
    error[0, :, :8, :8] = 0.01 * torch.rand(8, 8, generator=g)  # shadow nearly exact here
    error[1, :, 8:, 8:] = 0.01 * torch.rand(8, 8, generator=g)
    noise = error_to_noise_map(error)
    assert torch.allclose(noise.flatten(1).sum(1), torch.ones(2))
    # after equalization the map is rank-based: at T = 20 most noise sits on the ~8% best
    # reconstructed pixels (up to ties in the 256 histogram bins), all inside the quarter
    assert noise[0, :, :8, :8].sum() > 0.85
    assert noise[1, :, 8:, 8:].sum() > 0.85
    assert noise[0, :, 8:, 8:].sum() < 0.05


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("equalize", [True, False])
def test_noise_map_stays_aligned_with_the_image(channels: int, equalize: bool) -> None:
    """Lower error -> at least as much noise at *that* pixel, in every channel and image
    (the reference's equalization moves rows between channels and places)."""
    g = torch.Generator().manual_seed(1)
    error = torch.rand(3, channels, 12, 12, generator=g)
    noise = error_to_noise_map(error, equalize_histogram=equalize)
    for i in range(3):
        for c in range(channels):  # equalization ranks within each image and channel
            e, n = error[i, c].flatten(), noise[i, c].flatten()
            sorted_noise = n[torch.argsort(e)]
            assert bool((sorted_noise[1:] <= sorted_noise[:-1] + 1e-9).all())
            assert n[int(torch.argmin(e))] == n.max()


def test_equalization_matches_opencv_per_image_and_channel() -> None:
    cv2 = pytest.importorskip("cv2")
    g = torch.Generator().manual_seed(2)
    x = torch.rand(2, 3, 16, 16, generator=g) ** 3  # skewed towards dark values
    x[1, 2] = 0.5                                     # one flat channel
    x[0, 0, :8] = 1.0                                 # a large tie at the top
    out = equalize_per_image(x)
    levels = (x * 255).round().to(torch.uint8).numpy()
    for i in range(2):
        for c in range(3):
            if i == 1 and c == 2:
                assert bool((out[i, c] == 1).all())  # flat: everything at the top level
                continue
            expected = torch.from_numpy(cv2.equalizeHist(levels[i, c])).float()
            assert float((out[i, c] * 255 - expected).abs().max()) <= 1.0


def test_equalization_spreads_a_skewed_error_map() -> None:
    """One outlier squeezes the plain map; equalization restores the contrast of the rest."""
    error = torch.linspace(0, 1, 256).view(1, 1, 16, 16).clone()
    error[0, 0, 0, 0] = 1000.0
    plain = error_to_noise_map(error, equalize_histogram=False)
    equalized = error_to_noise_map(error, equalize_histogram=True)
    top = lambda n: float(n.flatten().topk(26).values.sum())  # noqa: E731
    assert top(equalized) > 0.5 and top(plain) < 0.2  # share of the top 10% of pixels


def test_memory_blends_with_momentum() -> None:
    fresh, old = torch.full((1, 1, 2, 2), 1.0), torch.full((1, 1, 2, 2), 3.0)
    assert torch.equal(update_memory(None, fresh, 0.1), fresh)
    torch.testing.assert_close(update_memory(old, fresh, 0.1), torch.full((1, 1, 2, 2), 1.2))


def test_suppression_lowers_noise_inside_the_cam_region_only() -> None:
    noise = torch.full((2, 3, 8, 8), 0.01)
    cam = torch.rand(2, 8, 8, generator=torch.Generator().manual_seed(0))
    region = top_fraction_mask(cam, 0.3)
    out = suppress_foreground(noise, cam, region, alpha=0.5)
    inside = region.unsqueeze(1).expand_as(out)
    assert torch.equal(out[~inside], noise[~inside])
    assert bool((out[inside] < noise[inside]).all())
    assert float(out[inside].mean()) < 0.8 * float(noise[inside].mean())  # strongest pixels
    torch.testing.assert_close(out[:, 0], out[:, 2])  # same factor in every channel


def test_scaling_sets_the_peak_relative_to_the_image() -> None:
    x = torch.tensor([2.0, -4.0]).view(2, 1, 1, 1) * torch.ones(2, 1, 4, 4)
    noise = torch.rand(2, 1, 4, 4, generator=torch.Generator().manual_seed(0))
    out = scale_noise(noise, x, 0.19)
    torch.testing.assert_close(out.flatten(1).max(1).values, torch.tensor([0.38, 0.76]))


def test_schedules_follow_the_paper() -> None:
    assert cam_alpha(0, 100, 0.1, 0.5) == 0.1
    assert cam_alpha(30, 100, 0.1, 0.5) == pytest.approx(0.3)
    assert cam_alpha(90, 100, 0.1, 0.5) == 0.5
    assert noise_weight(0, 100, 0.19) == pytest.approx(0.19)
    assert noise_weight(50, 100, 0.19) == pytest.approx(0.19 * np.exp(0.5))
    assert noise_weight(50, 100, 0.19, increase=False) == 0.19


# -- Grad-CAM++ ------------------------------------------------------------------------------
def tiny_model(size: int = 8, norm: str = "batch") -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model("convnet", in_channels=1, num_classes=3, image_size=size, width=4,
                       norm=norm)


def test_cam_leaves_the_model_untouched_and_explains_each_label() -> None:
    model = tiny_model().train()
    before = copy.deepcopy(model.state_dict())
    x = torch.randn(5, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    maps = cam_maps(model, x, torch.tensor([0, 1, 2, 0, 1]))
    assert maps.shape == (5, 8, 8) and maps.min() >= 0 and maps.max() <= 1
    assert model.training
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k
    other = cam_maps(model, x, torch.tensor([1, 2, 0, 1, 2]))
    assert not torch.allclose(maps, other)


# -- pseudo step and shadow objective --------------------------------------------------------
def test_pseudo_step_matches_autograd_and_changes_nothing() -> None:
    model = tiny_model()
    x = torch.randn(4, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    y = torch.tensor([0, 1, 2, 0])
    before = copy.deepcopy(model.state_dict())
    victim = pseudo_step(model, x, y)
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k
    reference = copy.deepcopy(model).train()
    loss = torch.nn.functional.cross_entropy(reference(x), y)
    expected = torch.autograd.grad(loss, list(reference.parameters()))
    for got, want in zip(victim.gradient, expected, strict=True):
        torch.testing.assert_close(got, want)
    first_bn_input = model.features[0](x)
    torch.testing.assert_close(victim.bn_mean[0], first_bn_input.mean((0, 2, 3)))
    torch.testing.assert_close(victim.bn_var[0], first_bn_input.var((0, 2, 3), unbiased=False))


def test_gradient_matching_has_a_real_path_to_the_generator() -> None:
    model = tiny_model()
    torch.manual_seed(0)
    gen = ImageGenerator(8, 8, 1, max_channels=16, min_channels=8)
    z = torch.randn(2, 8)
    x = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    y = torch.tensor([0, 2])
    victim = pseudo_step(model, x, y)
    only_grad = ShadowWeights(grad_match=1.0, total_var=0, img_norm=0, bn=0, rec=0)
    loss, terms = shadow_objective(gen(z), x, y, model, victim, only_grad)
    grads = torch.autograd.grad(loss, list(gen.parameters()), allow_unused=True)
    assert terms["grad"] > 0 and terms["bn"] > 0
    assert all(g is not None for g in grads)
    assert sum(float(g.abs().sum()) for g in grads) > 0
    # when the shadow's images are the victim's, the matching terms vanish
    same = gen(z).detach()
    _, exact = shadow_objective(same, same, y, model, pseudo_step(model, same, y), only_grad)
    assert exact["grad"] < 1e-5 and exact["bn"] < 1e-5


def test_objective_without_batchnorm_or_victim() -> None:
    model = tiny_model(norm="none")
    x = torch.randn(2, 1, 8, 8)
    y = torch.tensor([0, 1])
    _, terms = shadow_objective(x + 0.1, x, y, model, pseudo_step(model, x, y), ShadowWeights())
    assert "bn" not in terms and terms["grad"] > 0
    _, terms = shadow_objective(x + 0.1, x, y, model, None, ShadowWeights())
    assert set(terms) == {"tv", "img_norm", "rec"}


# -- the whole defense -----------------------------------------------------------------------
def small_generator() -> ImageGenerator:
    torch.manual_seed(0)
    return ImageGenerator(8, 8, 1, max_channels=16, min_channels=8)


def shadow(**params: object) -> ShadowDefense:
    base = {"z_iter": 30, "progress": False, "shadow_final_round": 2}
    return ShadowDefense(ShadowParams(**{**base, **params}),  # type: ignore[arg-type]
                         load_generator=lambda ctx: small_generator())


def context(server_round: int, num_rounds: int = 4) -> DefenseContext:
    return DefenseContext(server_round=server_round, num_rounds=num_rounds, client_id=0,
                          device=torch.device("cpu"),
                          generator=torch.Generator().manual_seed(server_round),
                          mean=MEAN, std=STD)


def local_data(n: int = 6) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    images = torch.rand(n, 1, 8, 8, generator=g)
    return (images - MEAN[0]) / STD[0], torch.arange(n) % 3


def run_round(defense: Defense, model: torch.nn.Module, server_round: int,
              num_rounds: int = 4) -> DefenseContext:
    images, labels = local_data()
    ctx = context(server_round, num_rounds)
    defense.setup(images, labels, model, ctx)
    train_locally(model, images, labels, LocalTraining(lr=0.01, batch_size=3), defense=defense,
                  ctx=ctx, generator=ctx.generator)
    return ctx


def test_defense_perturbs_each_batch_with_bounded_sample_specific_noise() -> None:
    defense, model = shadow(), tiny_model()
    images, labels = local_data()
    ctx = context(1)
    defense.setup(images, labels, model, ctx)
    ctx.batch_index = torch.tensor([0, 1, 2])
    x = images[:3]
    out = defense.perturb_batch(x, labels[:3], model, ctx)
    noise = out - x
    assert bool((noise >= 0).all()) and float(noise.abs().max()) > 0
    peaks = noise.flatten(1).max(1).values
    torch.testing.assert_close(peaks, 0.19 * x.flatten(1).max(1).values.abs())
    assert not torch.allclose(noise[0], noise[1])  # sample-specific
    assert ctx.metrics["shadow_latent_mse"] > 0 and "shadow_grad" in ctx.metrics

    # the same step without foreground suppression puts relatively more noise in the region
    unsuppressed, ctx_plain = shadow(sub_cam=False), context(1)
    unsuppressed.setup(images, labels, model, ctx_plain)
    unsuppressed.region = defense.region
    ctx_plain.batch_index = torch.tensor([0, 1, 2])
    unsuppressed.perturb_batch(x, labels[:3], model, ctx_plain)
    assert ctx.metrics["shadow_noise_fg_ratio"] < ctx_plain.metrics["shadow_noise_fg_ratio"]


def test_update_differs_from_the_undefended_one() -> None:
    base = tiny_model()
    plain, defended = copy.deepcopy(base), copy.deepcopy(base)
    run_round(build_defense("none", None), plain, 1)
    run_round(shadow(), defended, 1)
    diffs = [float((a - b).abs().max()) for a, b in
             zip(plain.state_dict().values(), defended.state_dict().values())]
    assert max(diffs) > 1e-4


def test_state_survives_rounds_and_the_noise_map_freezes_after_the_final_round() -> None:
    model = tiny_model()
    first = shadow(shadow_final_round=2, sub_cam=False, noise_increase=False)
    ctx1 = run_round(first, model, 1)
    state = first.state_dict()
    assert {"latents", "seen", "memory"} <= set(state) and int(state["seen"].sum()) == 6
    assert any(k.startswith("adam.") for k in state)
    assert "shadow_latent_mse" in ctx1.metrics

    second = shadow(shadow_final_round=2, sub_cam=False, noise_increase=False)
    second.load_state_dict(state)
    ctx2 = run_round(second, model, 2)
    assert "shadow_latent_mse" not in ctx2.metrics          # codes kept, not refitted
    assert torch.equal(second.state_dict()["latents"], state["latents"])
    steps = lambda s: max(float(v) for k, v in s.items() if k.endswith(".step"))  # noqa: E731
    assert steps(second.state_dict()) > steps(state)        # Adam keeps its moments
    after_training = second.state_dict()
    assert not torch.equal(after_training["memory"], state["memory"])

    third = shadow(shadow_final_round=2, sub_cam=False, noise_increase=False)
    third.load_state_dict(after_training)
    ctx3 = run_round(third, model, 3)
    frozen = third.state_dict()
    assert "shadow_grad" not in ctx3.metrics                # no shadow training any more
    assert torch.equal(frozen["memory"], after_training["memory"])
    for k in after_training:
        if k.startswith("shadow."):
            assert torch.equal(frozen[k], after_training[k]), k


def test_the_pretrained_checkpoint_is_the_one_loaded(tmp_path) -> None:
    config = load_config(None, ["data.image_size=8", f"data.cache_dir={tmp_path}",
                                "generator.latent_dim=8", "generator.max_channels=16",
                                "generator.min_channels=8", "generator.iterations=3",
                                "generator.batch_size=4"])
    checkpoint = pretrained_generator(config, progress=False)
    saved = load_checkpoint(checkpoint.path).generator.state_dict()
    defense = build_defense("shadow", {"z_iter": 5, "progress": False, "shadow_train": False})
    images, labels = local_data()
    ctx = context(1)
    ctx.public_generator = Federation(config).public_generator  # what the client hands over
    defense.setup(images, labels, tiny_model(), ctx)
    loaded = defense.state_dict()
    for k, v in saved.items():
        assert torch.equal(loaded[f"shadow.{k}"], v), k
    fresh = ImageGenerator(8, 8, 1, max_channels=16, min_channels=8).state_dict()
    assert any(not torch.equal(fresh[k], v) for k, v in saved.items())


def test_params_are_validated_with_the_key_named() -> None:
    with pytest.raises(ConfigError, match="defense.params.perc_cam"):
        build_defense("shadow", {"perc_cam": 0})
    with pytest.raises(ConfigError, match="defense.params.min_cam_alpha"):
        build_defense("shadow", {"min_cam_alpha": 0.6, "max_cam_alpha": 0.5})
    with pytest.raises(ConfigError, match="defense.params"):
        build_defense("shadow", {"not_a_param": 1})


def test_client_keeps_the_shadow_in_its_node_state(tmp_path) -> None:
    """Two rounds through the Flower client: the state goes through context.state."""
    config = load_config(None, [
        "partition.num_clients=2", "partition.sizes=[4, 6]", "partition.batch_sizes=[2, 3]",
        "strategy.min_fit_clients=2", "strategy.min_available_clients=2", "model.width=4",
        "data.image_size=8", "train.device=cpu", f"data.cache_dir={tmp_path}",
        "generator.latent_dim=8", "generator.max_channels=16", "generator.min_channels=8",
        "generator.iterations=3", "generator.batch_size=4", "defense.name=shadow",
        "defense.params={z_iter: 5, progress: false}"])
    images, labels = local_data()
    data = LocalData((images * STD[0] + MEAN[0]), labels, np.arange(6), MEAN, STD, 3)
    node = Context(run_id=1, node_id=1, node_config={}, state=RecordDict(), run_config={})
    client = Federation(config).client_for(1, data, context=node, send_audit=False)
    arrays = [v.numpy() for v in tiny_model().state_dict().values()]
    _, _, m1 = client.fit(arrays, {keys.SERVER_ROUND: 1, keys.NUM_ROUNDS: 3})
    assert "defense-shadow_latent_mse" in m1
    latents = node.state["defense-state"].to_torch_state_dict()["latents"]
    _, _, m2 = client.fit(arrays, {keys.SERVER_ROUND: 2, keys.NUM_ROUNDS: 3})
    assert "defense-shadow_latent_mse" not in m2 and "defense-shadow_grad" in m2
    assert torch.equal(node.state["defense-state"].to_torch_state_dict()["latents"], latents)


def test_cam_maps_are_reused_between_refreshes() -> None:
    model = tiny_model()
    first = shadow(cam_every=2)
    run_round(first, model, 1)
    cam1 = first.state_dict()["cam"]
    second = shadow(cam_every=2)
    second.load_state_dict(first.state_dict())
    run_round(second, model, 2)  # the model trained in round 1, so fresh maps would differ
    assert torch.equal(second.state_dict()["cam"], cam1)
    third = shadow(cam_every=2)
    third.load_state_dict(second.state_dict())
    run_round(third, model, 3)
    assert not torch.equal(third.state_dict()["cam"], cam1)


# -- variants beyond the paper (issue 15) ----------------------------------------------------
def noised_batch(defense: ShadowDefense, server_round: int = 1, num_rounds: int = 4
                 ) -> tuple[torch.Tensor, DefenseContext]:
    images, labels = local_data()
    model, ctx = tiny_model(), context(server_round, num_rounds)
    defense.setup(images, labels, model, ctx)
    ctx.batch_index = torch.arange(6)
    return defense.perturb_batch(images, labels, model, ctx) - images, ctx


def unit_psnr(noise: torch.Tensor) -> torch.Tensor:
    return -10 * torch.log10((noise * STD[0]).flatten(1).pow(2).mean(1))


@pytest.mark.parametrize("target", [18.0, 24.0, 30.0])
@pytest.mark.parametrize("sign", ["positive", "random"])
def test_the_psnr_budget_hits_its_target_distortion(target: float, sign: str) -> None:
    noise, ctx = noised_batch(shadow(budget="psnr", target_psnr_db=target, noise_sign=sign,
                                     noise_increase=False))
    torch.testing.assert_close(unit_psnr(noise), torch.full((6,), target), atol=0.5, rtol=0)
    assert abs(ctx.metrics["shadow_input_psnr"] - target) < 0.5


def test_the_psnr_budget_grows_like_the_peak_budget_over_rounds() -> None:
    # round 3 of 4 (r0 = 2): the peak budget grows by e^(2/4); the PSNR target falls by
    # 20 log10(e^0.5) = 4.343 dB
    noise, _ = noised_batch(shadow(budget="psnr", target_psnr_db=24.0, sub_cam=False,
                                   shadow_train=False), server_round=3)
    torch.testing.assert_close(unit_psnr(noise), torch.full((6,), 24.0 - 4.343), atol=0.01,
                               rtol=0)


def test_per_hospital_strength_follows_the_hospital_size() -> None:
    # 6 local images: 18 + 2 * log2(6) = 23.17 dB; the attacker's model gets the same target
    # from the reported number of examples
    noise, ctx = noised_batch(shadow(budget="psnr", target_psnr_db=18.0, noise_increase=False,
                                     psnr_per_doubling_db=2.0, sub_cam=False,
                                     shadow_train=False))
    expected = 18.0 + 2.0 * math.log2(6)
    torch.testing.assert_close(unit_psnr(noise), torch.full((6,), expected), atol=0.01, rtol=0)
    params = ShadowParams(budget="psnr", target_psnr_db=18.0, noise_increase=False,
                          psnr_per_doubling_db=2.0)
    knowledge = describe_defense("shadow", dataclasses.asdict(params), server_round=1,
                                 num_rounds=4, mean=MEAN, std=STD, num_examples=6)
    model = attacker_model(params, knowledge, [], 0)
    images, _ = local_data()
    torch.testing.assert_close(unit_psnr(model.perturb_input(images, 0) - images),
                               torch.full((6,), expected), atol=0.01, rtol=0)
    with pytest.raises(ConfigError, match="psnr_per_doubling_db: needs budget: psnr"):
        build_defense("shadow", {"psnr_per_doubling_db": 1.0})


def test_random_signs_make_the_noise_zero_mean_and_keep_its_placement() -> None:
    positive, _ = noised_batch(shadow(noise_sign="positive", shadow_train=False))
    defense = shadow(noise_sign="random", shadow_train=False)
    signed, _ = noised_batch(defense)
    assert bool((positive >= 0).all())
    torch.testing.assert_close(signed.flatten(1).mean(1), torch.zeros(6), atol=1e-6, rtol=0)
    assert bool((signed < 0).any()) and bool((signed > 0).any())
    # the signed map minus a per-image constant, rescaled to the same peak: each pixel's
    # magnitude follows the positive map (placement kept, only signs and the offset differ)
    assert defense.signs is not None
    unsigned = signed * defense.signs
    for a, b in zip(unsigned, positive, strict=True):
        corr = torch.corrcoef(torch.stack([a.flatten(), b.flatten()]))[0, 1]
        assert float(corr) > 0.9


def test_the_shuffled_control_moves_the_same_values_elsewhere() -> None:
    placed, _ = noised_batch(shadow(shadow_train=False, sub_cam=False))
    shuffled, _ = noised_batch(shadow(shadow_train=False, sub_cam=False,
                                      placement="shuffled"))
    for a, b in zip(placed, shuffled, strict=True):  # per image: the same multiset of values
        torch.testing.assert_close(a.flatten().sort().values, b.flatten().sort().values)
    assert not torch.allclose(placed, shuffled)
    torch.testing.assert_close(unit_psnr(placed), unit_psnr(shuffled))  # equal distortion


def test_signs_and_permutations_are_kept_across_rounds() -> None:
    model = tiny_model()
    first = shadow(noise_sign="random", placement="shuffled", sub_cam=False)
    run_round(first, model, 1)
    state = first.state_dict()
    assert state["signs"].dtype == torch.int8 and state["permutation"].shape == (6, 64)
    second = shadow(noise_sign="random", placement="shuffled", sub_cam=False)
    second.load_state_dict(state)
    run_round(second, model, 2)
    assert torch.equal(second.state_dict()["signs"], state["signs"])
    assert torch.equal(second.state_dict()["permutation"], state["permutation"])


def test_the_attackers_model_follows_the_variant() -> None:
    from fl_shadow.defenses import describe_defense
    from fl_shadow.defenses.shadow.defense import attacker_model
    knowledge = describe_defense("shadow", {"budget": "psnr", "target_psnr_db": 22.0,
                                            "noise_sign": "random", "noise_increase": False},
                                 server_round=1, num_rounds=4, std=STD)
    model = attacker_model(ShadowParams(**knowledge.params), knowledge, [], 0)
    x = torch.zeros(5, 1, 8, 8)
    noise = model.perturb_input(x, 0) - x
    torch.testing.assert_close(unit_psnr(noise), torch.full((5,), 22.0), atol=0.01, rtol=0)
    assert bool((noise < 0).any())


def test_foreground_region_keeps_the_noise_on_the_anatomy() -> None:
    images, labels = local_data()
    unit = images * STD[0] + MEAN[0]
    unit[:, :, :3] = 0.0  # a black band: background
    x = (unit - MEAN[0]) / STD[0]
    for sign in ("positive", "random"):
        defense, model, ctx = shadow(noise_region="foreground", noise_sign=sign,
                                     budget="psnr", target_psnr_db=20.0,
                                     noise_increase=False), tiny_model(), context(1)
        defense.setup(x, labels, model, ctx)
        ctx.batch_index = torch.arange(6)
        noise = defense.perturb_batch(x, labels, model, ctx) - x
        assert float(noise[:, :, :3].abs().max()) == 0.0
        torch.testing.assert_close(unit_psnr(noise), torch.full((6,), 20.0), atol=0.01,
                                   rtol=0)
        if sign == "random":  # zero-mean over the anatomy
            inside = noise[:, :, 3:].flatten(1).mean(1)
            torch.testing.assert_close(inside, torch.zeros(6), atol=1e-6, rtol=0)
