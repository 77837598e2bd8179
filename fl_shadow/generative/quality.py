"""Is the public-data generator worth the name? Two checks on images it never trained on.

A generator trained on a handful of public images reproduces them instead of the domain (the
issue's chest radiographs: 2 public images, memorised). Then a shadow built from it models no
hospital's images, and a generative-prior attack searches a space of a few pictures. Two
measurements tell it apart from one that learned the domain:

* **fit gap**: the latent fit's PSNR (:func:`~fl_shadow.generative.fit_latents`) on public
  images it trained on against held-out images of the same domain it never saw. A generator of
  the domain fits both alike; one that memorised fits its own images far better.
* **nearest neighbours**: for samples ``G(z), z ~ N(0, I)``, the PSNR to the closest public
  image, against the same for held-out images. Samples much closer to a public image than
  unseen images of the domain are to one are copies.

The held-out images are the dataset's test split (disjoint from the public split and from
every client's data; the server's own evaluation images). They judge the generator and are
never used to train or fit anything a client or an attack uses. PSNR is in [0, 1] pixel
units, per image, then the median (fit: the mean) over images.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch

from fl_shadow.generative.inversion import fit_latents
from fl_shadow.generative.networks import ImageGenerator, to_unit

__all__ = ["FIT_GAP_DB", "GeneratorQuality", "MEMORISATION_MARGIN_DB", "generator_quality"]

#: A generator that fits its public images this many dB better than held-out ones has learned
#: its public images rather than their domain.
FIT_GAP_DB = 3.0
#: Samples this many dB closer (median) to their nearest public image than held-out images are
#: to theirs are copies of public images.
MEMORISATION_MARGIN_DB = 3.0


@dataclass(frozen=True)
class GeneratorQuality:
    """The two checks' numbers (see the module docstring).

    Attributes:
        public_fit_psnr: mean latent-fit PSNR (dB) on up to ``images`` public images.
        held_out_fit_psnr: the same on up to ``images`` held-out images.
        sample_to_public_psnr: median PSNR of a sample to its nearest public image.
        held_out_to_public_psnr: median PSNR of a held-out image to its nearest public image.
        public_images, held_out_images, samples: how many images each figure rests on.
        fit_iterations: the latent fit's most iterations.
    """

    public_fit_psnr: float
    held_out_fit_psnr: float
    sample_to_public_psnr: float
    held_out_to_public_psnr: float
    public_images: int
    held_out_images: int
    samples: int
    fit_iterations: int

    @property
    def fit_gap_db(self) -> float:
        return self.public_fit_psnr - self.held_out_fit_psnr

    @property
    def memorisation_db(self) -> float:
        return self.sample_to_public_psnr - self.held_out_to_public_psnr

    def warnings(self) -> list[str]:
        """One line per failed check (empty: the generator passes both)."""
        out = []
        if self.fit_gap_db > FIT_GAP_DB:
            out.append(f"generator: fits its public images {self.fit_gap_db:.1f} dB better "
                       f"than unseen ones ({self.public_fit_psnr:.1f} vs "
                       f"{self.held_out_fit_psnr:.1f} dB latent-fit PSNR): it learned its "
                       "public images, not the domain (add public images)")
        if self.memorisation_db > MEMORISATION_MARGIN_DB:
            out.append(f"generator: its samples are {self.memorisation_db:.1f} dB closer to a "
                       f"public image than unseen images are ({self.sample_to_public_psnr:.1f} "
                       f"vs {self.held_out_to_public_psnr:.1f} dB nearest-neighbour PSNR): it "
                       "reproduces its public images (add public images)")
        return out

    def to_json(self) -> dict[str, float]:
        return {**asdict(self), "fit_gap_db": self.fit_gap_db,
                "memorisation_db": self.memorisation_db}


def _psnr(mse: torch.Tensor) -> torch.Tensor:
    return -10 * torch.log10(mse.clamp_min(1e-10))


def nearest_psnr(queries: torch.Tensor, references: torch.Tensor, *,
                 chunk: int = 256) -> torch.Tensor:
    """``(Q,)`` PSNR of each query image to its closest reference image (both in [0, 1])."""
    refs = references.flatten(1)
    best = []
    for start in range(0, len(queries), chunk):
        q = queries[start:start + chunk].flatten(1)
        mse = torch.cdist(q, refs).pow(2) / q.shape[1]     # (q, R) mean squared error
        best.append(mse.min(dim=1).values)
    return _psnr(torch.cat(best))


def generator_quality(generator: ImageGenerator, public: torch.Tensor, held_out: torch.Tensor,
                      *, images: int = 32, samples: int = 256, iterations: int = 100,
                      lr: float = 0.2, seed: int = 0) -> GeneratorQuality:
    """Both checks for ``generator`` trained on ``public``, against ``held_out`` (both
    ``(N, C, H, W)`` in [0, 1], the generator's shape).

    Args:
        images: the most images of each split fitted (the first ones; fits cost time).
        samples: generator samples for the nearest-neighbour check.
        iterations, lr: the latent fit's settings (early stopping per image).
        seed: draws the fits' starting codes and the samples.

    Raises:
        ValueError: a split is empty.
    """
    if len(public) == 0 or len(held_out) == 0:
        raise ValueError(f"generator quality: needs public and held-out images, got "
                         f"{len(public)} and {len(held_out)}")
    rng = torch.Generator().manual_seed(seed)
    fits = {}
    for name, split in (("public", public), ("held_out", held_out)):
        fit = fit_latents(generator, split[:images], iterations=iterations, lr=lr, rng=rng)
        fits[name] = float(_psnr(fit.mse).mean())
    with torch.no_grad():
        was_training = generator.training
        generator.eval()
        drawn = to_unit(generator(generator.sample_latents(samples, rng, public.device)))
        generator.train(was_training)
    sample_nn = float(nearest_psnr(drawn, public).median())
    held_nn = float(nearest_psnr(held_out, public).median())
    if not math.isfinite(sample_nn) or not math.isfinite(held_nn):
        raise ValueError("generator quality: a non-finite nearest-neighbour distance")
    return GeneratorQuality(public_fit_psnr=fits["public"], held_out_fit_psnr=fits["held_out"],
                            sample_to_public_psnr=sample_nn, held_out_to_public_psnr=held_nn,
                            public_images=min(images, len(public)),
                            held_out_images=min(images, len(held_out)), samples=samples,
                            fit_iterations=iterations)
