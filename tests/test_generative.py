"""The public-data generator: architecture, GAN pretraining, cached checkpoints, latent fits."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from fl_shadow.apps.experiment import resolve_components
from fl_shadow.config import GeneratorConfig, load_config
from fl_shadow.generative import (
    ImageGenerator,
    base_resolution,
    checkpoint_path,
    fit_latents,
    load_checkpoint,
    to_unit,
    train_generator,
)
from fl_shadow.generative import pretrain
from fl_shadow.generative.public import pretrained_generator

ROOT = Path(__file__).resolve().parent.parent
TINY = GeneratorConfig(latent_dim=8, max_channels=16, min_channels=8, iterations=4,
                       batch_size=4)


@pytest.mark.parametrize(("size", "expected"), [(8, (4, 1)), (32, (4, 3)), (64, (4, 4)),
                                                (224, (7, 5)), (28, (7, 2))])
def test_base_resolution(size: int, expected: tuple[int, int]) -> None:
    assert base_resolution(size) == expected


@pytest.mark.parametrize("size", [4, 33, 100, 9])
def test_base_resolution_rejects_other_sizes(size: int) -> None:
    with pytest.raises(ValueError, match=str(size)):
        base_resolution(size)


@pytest.mark.parametrize(("size", "channels"), [(8, 1), (28, 3), (32, 1)])
def test_generator_shape_range_and_batch_independence(size: int, channels: int) -> None:
    torch.manual_seed(0)
    gen = ImageGenerator(8, size, channels, max_channels=16, min_channels=8).eval()
    z = torch.randn(5, 8)
    out = gen(z)
    assert out.shape == (5, channels, size, size)
    assert out.min() >= -1 and out.max() <= 1
    # Pixel norm, no BatchNorm: an image does not depend on the rest of its batch.
    torch.testing.assert_close(gen(z[2:3]), out[2:3], rtol=1e-5, atol=1e-6)


def _square_images(n: int = 16, size: int = 8) -> torch.Tensor:
    images = torch.zeros(n, 1, size, size)
    images[:, :, 2:6, 2:6] = 1.0
    return images


def test_gan_pretraining_is_deterministic_and_learns_the_public_images() -> None:
    public = _square_images()
    spec = dataclasses.replace(TINY, iterations=150, lr=2e-3, augment=False)
    gen_a, facts = train_generator(public, spec, progress=False)
    gen_b, _ = train_generator(public, spec, progress=False)
    for pa, pb in zip(gen_a.parameters(), gen_b.parameters()):
        torch.testing.assert_close(pa, pb, rtol=0, atol=0)
    torch.manual_seed(0)
    untrained = ImageGenerator(8, 8, 1, max_channels=16, min_channels=8).eval()
    z = torch.randn(64, 8, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        err_trained = (to_unit(gen_a(z)) - public[:1]).abs().mean()
        err_untrained = (to_unit(untrained(z)) - public[:1]).abs().mean()
    assert err_trained < 0.5 * err_untrained
    assert facts["num_public_images"] == 16 and facts["seconds"] > 0


def test_pretraining_needs_two_images() -> None:
    with pytest.raises(ValueError, match="at least 2"):
        train_generator(_square_images(1), TINY, progress=False)


def test_checkpoint_path_depends_on_settings_and_data(tmp_path) -> None:
    public = _square_images()
    a = checkpoint_path(tmp_path, "mni152", TINY, public)
    assert a.parent == tmp_path / "generators" and a.name.startswith("mni152-8px-1ch-")
    assert checkpoint_path(tmp_path, "mni152", TINY, public) == a
    assert checkpoint_path(tmp_path, "mni152", dataclasses.replace(TINY, seed=1), public) != a
    assert checkpoint_path(tmp_path, "mni152", TINY, 1 - public) != a


def tiny_experiment(tmp_path, **generator):
    items = ["data.image_size=8", f"data.cache_dir={tmp_path}", "generator.latent_dim=8",
             "generator.max_channels=16", "generator.min_channels=8",
             "generator.iterations=3", "generator.batch_size=4"]
    items += [f"generator.{k}={v}" for k, v in generator.items()]
    return load_config(None, items)


def test_pretrained_generator_trains_once_then_loads_the_cached_file(tmp_path,
                                                                     monkeypatch) -> None:
    config = tiny_experiment(tmp_path)
    first = pretrained_generator(config, progress=False)
    assert first.path.exists() and first.path.is_relative_to(tmp_path)
    assert first.meta["image_size"] == 8 and first.meta["spec"]["iterations"] == 3

    def no_training(*args, **kwargs):
        raise AssertionError("the cached checkpoint should have been used")

    monkeypatch.setattr(pretrain, "train_generator", no_training)
    second = pretrained_generator(config, progress=False)
    assert second.path == first.path
    reloaded = load_checkpoint(first.path).generator
    for pa, pb in zip(second.generator.parameters(), reloaded.parameters()):
        assert torch.equal(pa, pb)


def test_load_checkpoint_rejects_other_files(tmp_path) -> None:
    bad = tmp_path / "bad.pt"
    torch.save({"format": 99}, bad)
    with pytest.raises(ValueError, match="bad.pt"):
        load_checkpoint(bad)


def test_generator_config_errors_name_the_key() -> None:
    with pytest.raises(Exception, match="generator.min_channels"):
        load_config(None, ["generator.max_channels=8", "generator.min_channels=16"])


def _generator() -> ImageGenerator:
    torch.manual_seed(0)
    return ImageGenerator(8, 8, 1, max_channels=16, min_channels=8)


def test_latent_fit_recovers_images_the_generator_can_make() -> None:
    gen = _generator()
    with torch.no_grad():
        targets = to_unit(gen(torch.randn(4, 8, generator=torch.Generator().manual_seed(3))))
    start = fit_latents(gen, targets, iterations=1, rng=torch.Generator().manual_seed(0))
    fit = fit_latents(gen, targets, iterations=300, rng=torch.Generator().manual_seed(0),
                      patience=50)
    assert fit.latents.shape == (4, 8)
    assert float(fit.mse.mean()) < 0.1 * float(start.mse.mean())
    # the returned code of each image is its best one: re-rendering gives the reported MSE
    with torch.no_grad():
        again = (to_unit(gen(fit.latents)) - targets).pow(2).flatten(1).mean(1)
    torch.testing.assert_close(again, fit.mse, rtol=1e-4, atol=1e-7)
    assert all(p.requires_grad for p in gen.parameters())  # flags restored


def test_latent_fit_stops_early_on_a_plateau() -> None:
    gen = _generator()
    targets = torch.rand(2, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    # a step too small to improve the loss by the relative tolerance: a plateau from the start
    fit = fit_latents(gen, targets, iterations=500, lr=1e-7, min_iterations=20, patience=5,
                      rng=torch.Generator().manual_seed(0))
    assert fit.stopped_early and fit.iterations == 20
    long = fit_latents(gen, targets, iterations=60, lr=0.05, min_iterations=60, patience=5,
                       rng=torch.Generator().manual_seed(0))
    assert not long.stopped_early and long.iterations == 60


def test_cli_pretrains_into_the_cache_and_knows_who_needs_a_generator(tmp_path) -> None:
    items = ["data.image_size=8", f"data.cache_dir={tmp_path}", "generator.latent_dim=8",
             "generator.max_channels=16", "generator.min_channels=8",
             "generator.iterations=3", "generator.batch_size=4"]
    cmd = [sys.executable, "-m", "fl_shadow.apps.cli", "pretrain-generator"]
    for item in items:
        cmd += ["--set", item]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert proc.returncode == 0, proc.stderr
    path = Path(proc.stdout.strip().split()[-1])
    assert path.exists() and path.is_relative_to(tmp_path)
    assert load_checkpoint(path).meta["spec"]["iterations"] == 3
    assert resolve_components(load_config(None, ["defense.name=shadow"])).needs_generator
    assert not resolve_components(load_config(None, ["defense.name=dp"])).needs_generator
    assert resolve_components(load_config(None, ["attack.name=ggl"])).needs_generator


def test_latent_fits_are_memoized_bit_for_bit(tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    from fl_shadow.generative.inversion import LATENT_CACHE_ENV

    torch.manual_seed(0)
    gen = ImageGenerator(latent_dim=8, image_size=8, channels=1, max_channels=16,
                         min_channels=8).eval()
    images = torch.rand(3, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    plain_rng = torch.Generator().manual_seed(7)
    plain = fit_latents(gen, images, iterations=20, rng=plain_rng)
    after_plain = plain_rng.initial_seed(), torch.rand(1, generator=plain_rng)
    monkeypatch.setenv(LATENT_CACHE_ENV, str(tmp_path))
    fits = []
    for _ in range(2):  # the first writes the cache, the second reads it
        rng = torch.Generator().manual_seed(7)
        fits.append((fit_latents(gen, images, iterations=20, rng=rng), torch.rand(1,
                                                                                 generator=rng)))
    assert len(list(tmp_path.glob("*.pt"))) == 1
    for fit, next_draw in fits:
        assert torch.equal(fit.latents, plain.latents) and torch.equal(fit.mse, plain.mse)
        assert fit.iterations == plain.iterations
        assert torch.equal(next_draw, after_plain[1])  # rng left where the real fit left it
    other = fit_latents(gen, images, iterations=21, rng=torch.Generator().manual_seed(7))
    assert len(list(tmp_path.glob("*.pt"))) == 2 and other.iterations != 0


def test_each_image_stops_on_its_own_plateau() -> None:
    gen = _generator()
    codes = torch.randn(2, 8, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        exact = to_unit(gen(codes[:1]))       # image 0: its start code makes it exactly
    other = torch.rand(1, 1, 8, 8, generator=torch.Generator().manual_seed(6))
    fit = fit_latents(gen, torch.cat([exact, other]), iterations=200, lr=0.05,
                      min_iterations=20, patience=5, initial=codes)
    assert fit.image_iterations is not None
    # image 0 never improves on its zero loss: it stops as soon as the rule may stop it
    assert int(fit.image_iterations[0]) == 20
    assert float(fit.mse[0]) < 1e-12  # zero up to the batched forward's float order
    torch.testing.assert_close(fit.latents[0], codes[0])
    # image 1 keeps improving for longer, and the fit ran as long as it did
    assert int(fit.image_iterations[1]) > 20
    assert fit.iterations == int(fit.image_iterations[1])


def test_a_batched_fit_equals_fitting_each_image_alone() -> None:
    gen = _generator()
    images = torch.rand(3, 1, 8, 8, generator=torch.Generator().manual_seed(2))
    codes = torch.randn(3, 8, generator=torch.Generator().manual_seed(4))
    settings = dict(iterations=150, lr=0.05, min_iterations=20, patience=5, tol=1e-3)
    batched = fit_latents(gen, images, initial=codes, **settings)  # type: ignore[arg-type]
    alone = [fit_latents(gen, images[i:i + 1], initial=codes[i:i + 1], **settings)  # type: ignore[arg-type]
             for i in range(3)]
    torch.testing.assert_close(batched.latents, torch.cat([f.latents for f in alone]),
                               rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(batched.mse, torch.cat([f.mse for f in alone]),
                               rtol=1e-4, atol=1e-7)
    assert batched.image_iterations is not None
    assert batched.image_iterations.tolist() == [f.iterations for f in alone]
    assert len(set(batched.image_iterations.tolist())) > 1  # they did stop at different times


def test_initial_codes_must_match_the_images() -> None:
    gen = _generator()
    with pytest.raises(ValueError, match=r"initial: expected shape \(2, 8\), got \(3, 8\)"):
        fit_latents(gen, torch.rand(2, 1, 8, 8), initial=torch.zeros(3, 8))
