"""The generator's quality checks: nearest neighbours, the fit gap, and the load warning."""

from __future__ import annotations

import warnings

import pytest
import torch

from fl_shadow.apps import experiment
from fl_shadow.config import load_config
from fl_shadow.generative import ImageGenerator
from fl_shadow.generative.quality import (
    GeneratorQuality,
    generator_quality,
    nearest_psnr,
)


def test_nearest_psnr_is_the_closest_reference() -> None:
    refs = torch.stack([torch.zeros(1, 4, 4), torch.full((1, 4, 4), 0.5)])
    queries = torch.stack([torch.full((1, 4, 4), 0.1), torch.full((1, 4, 4), 0.5)])
    psnr = nearest_psnr(queries, refs)
    # 0.1 from the black reference: MSE 0.01, 20 dB; an exact copy is capped at 100 dB
    torch.testing.assert_close(psnr[0], torch.tensor(20.0), rtol=0, atol=1e-3)
    assert float(psnr[1]) > 90


def _quality(**changes: float) -> GeneratorQuality:
    values = dict(public_fit_psnr=22.0, held_out_fit_psnr=21.0, sample_to_public_psnr=16.0,
                  held_out_to_public_psnr=17.0, public_images=32, held_out_images=32,
                  samples=256, fit_iterations=100)
    values.update(changes)
    return GeneratorQuality(**values)  # type: ignore[arg-type]


def test_a_generator_of_the_domain_passes_and_each_failure_is_named() -> None:
    assert _quality().warnings() == []
    gap = _quality(public_fit_psnr=25.5).warnings()
    assert len(gap) == 1 and "fits its public images 4.5 dB better than unseen ones" in gap[0]
    copies = _quality(sample_to_public_psnr=21.0).warnings()
    assert len(copies) == 1 and "samples are 4.0 dB closer to a public image" in copies[0]
    assert _quality(public_fit_psnr=24.0, sample_to_public_psnr=20.0).warnings() == []  # 3 dB


class CopyingGenerator(ImageGenerator):
    """Makes only blends of two stored images: what a GAN trained on two images learns."""

    def __init__(self, images: torch.Tensor) -> None:
        super().__init__(4, 8, 1, max_channels=8, min_channels=8)
        self.register_buffer("stored", images * 2 - 1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        weights = torch.softmax(8 * z[:, :2], dim=1)
        return torch.einsum("nk,kchw->nchw", weights, self.stored)


def test_a_generator_that_copies_its_public_images_is_caught() -> None:
    gen = torch.Generator().manual_seed(0)
    public = torch.rand(2, 1, 8, 8, generator=gen)
    held_out = torch.rand(6, 1, 8, 8, generator=gen)
    quality = generator_quality(CopyingGenerator(public), public, held_out, images=4,
                                samples=64, iterations=100)
    messages = quality.warnings()
    assert quality.fit_gap_db > 3 and quality.memorisation_db > 3
    assert len(messages) == 2 and all("(add public images)" in m for m in messages)


def test_an_empty_split_is_refused() -> None:
    with pytest.raises(ValueError, match="needs public and held-out images, got 2 and 0"):
        generator_quality(CopyingGenerator(torch.rand(2, 1, 8, 8)), torch.rand(2, 1, 8, 8),
                          torch.rand(0, 1, 8, 8))


def test_the_load_check_warns_of_a_poor_generator(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    config = load_config(None, ["defense.name=shadow"])
    poor = _quality(sample_to_public_psnr=30.0)
    monkeypatch.setattr(experiment, "cached_generator_quality", lambda *_: poor)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        experiment.check_experiment(config)
    assert any("reproduces its public images" in str(w.message) for w in caught)
    monkeypatch.setattr(experiment, "cached_generator_quality", lambda *_: _quality())
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        experiment.check_experiment(config)
    assert not any("generator:" in str(w.message) for w in caught)
