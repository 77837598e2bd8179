"""Input noise at a target distortion: the control every input-space defense must beat.

Each local step trains on ``x + N`` with ``N`` i.i.d. Gaussian in [0, 1] image units, its
standard deviation set so that the noised input is ``target_psnr_db`` from the clean one:
``PSNR = 10 log10(1 / E[N^2])``, so ``sigma = 10^(-target_psnr_db / 20)`` for every image and
dataset (the noised input is not clipped, so the distortion is exactly the target in
expectation). In the normalized inputs the clients train on that is ``sigma / std_c`` per
channel.

Why it exists: an input-noise defense (the Shadow Defense) is only worth its cost if it
protects more than plain random noise that distorts the training images equally
(``shared/DESIGN.md``: controls at equal input distortion). ``fresh: true`` draws new noise at
every step (an attacker that averages several rounds' reconstructions gains from it);
``fresh: false`` draws one noise image per local image, once, and keeps it across rounds (a
frozen memory, like the Shadow Defense's after ``shadow_final_round``).

Two more controls of issue 15:

* ``region: outside_cam``: the noise only outside the top ``perc_cam`` of each image's
  Grad-CAM++ map of the global model (recomputed every round, as the Shadow Defense's), at the
  same PSNR: noise that spares what the classifier looks at, with no shadow.
* ``budget: ssim``: each image's noise level is set so that the noised input (clipped to
  [0, 1], as SSIM needs) has SSIM ``target_ssim`` against the clean one, by bisection on a
  private calibration draw (:func:`sigma_for_ssim`), every round. Matching on SSIM and on PSNR
  are separate controls: at equal PSNR Gaussian noise has a lower SSIM than noise with
  structure.

Pure math: :func:`noise_std`, :func:`gaussian_noise`, :func:`within` and :func:`sigma_for_ssim`;
the class keeps the frozen draws, the region mask and the per-image levels.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Annotated, Literal

import torch
from pydantic import Field
from torch import nn

from fl_shadow.config import Bool, Float, Int, settings
from fl_shadow.defenses.base import (
    Defense,
    DefenseContext,
    DefenseModel,
    foreground_mask,
    hospital_psnr_db,
    per_channel,
    register_defense,
    unnormalize,
)
from fl_shadow.saliency import cam_maps, top_fraction_mask
from fl_shadow.structural_similarity import structural_similarity
from fl_shadow.errors import ConfigError
from fl_shadow.threat_model import DefenseKnowledge

__all__ = ["InputNoise", "InputNoiseParams", "gaussian_noise", "noise_std", "psnr_of_noise",
           "sigma_for_ssim", "within"]

#: Bisection bounds and steps of :func:`sigma_for_ssim`, on log10 of the image-unit std: 1e-4
#: (SSIM 1 to 4 decimals) to 3 (pure noise); 24 halvings leave 4e-7 decades.
SIGMA_RANGE_LOG10 = (-4.0, 0.5)
SSIM_BISECTION_STEPS = 24


def noise_std(*, target_psnr_db: float) -> float:
    """The Gaussian's std in [0, 1] image units whose expected PSNR is ``target_psnr_db``."""
    return 10.0 ** (-target_psnr_db / 20.0)


def psnr_of_noise(noise_unit: torch.Tensor) -> torch.Tensor:
    """Per image, the PSNR (dB) of ``x + noise`` against ``x``: ``10 log10(1 / mean(N^2))``,
    for ``noise_unit`` ``(N, C, H, W)`` in [0, 1] image units."""
    mse = noise_unit.flatten(1).pow(2).mean(dim=1).clamp_min(1e-20)
    return -10.0 * torch.log10(mse)


def gaussian_noise(shape: Sequence[int], *, target_psnr_db: float, std: Sequence[float],
                   generator: torch.Generator, device: torch.device | str = "cpu"
                   ) -> torch.Tensor:
    """Gaussian noise of ``shape`` ``(N, C, H, W)`` in **normalized** units (the image-unit
    std :func:`noise_std` divided by each channel's normalization ``std``)."""
    scale = torch.tensor([noise_std(target_psnr_db=target_psnr_db) / s for s in std])
    draw = torch.randn(tuple(shape), generator=generator)
    return (draw * scale.view(1, -1, 1, 1)).to(device)


def within(noise: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``noise`` kept only where ``mask`` ``(N, 1, H, W)`` is 1, scaled by
    ``1 / sqrt(share of the image in the mask)`` so each image's mean squared noise, and
    with it the PSNR, is unchanged in expectation."""
    share = mask.flatten(1).mean(1).clamp_min(1e-12).view(-1, 1, 1, 1)
    return noise * mask / share.sqrt()


@torch.no_grad()
def sigma_for_ssim(clean_unit: torch.Tensor, pattern: torch.Tensor, *, target_ssim: float,
                   steps: int = SSIM_BISECTION_STEPS) -> torch.Tensor:
    """Per image, the scale ``s`` with ``SSIM(clip(x + s * pattern, 0, 1), x) = target_ssim``.

    Args:
        clean_unit: ``(N, C, H, W)`` clean images in [0, 1].
        pattern: ``(N, C, H, W)`` the noise at unit scale (a standard Gaussian draw, masked by
            :func:`within` when the noise has a region), in [0, 1] image units.
        target_ssim: in (0, 1).
        steps: bisection halvings on ``log10 s`` over :data:`SIGMA_RANGE_LOG10`.

    Returns:
        ``(N,)`` scales (SSIM falls as the scale grows; an image whose SSIM cannot reach the
        target inside the range gets the range's end).
    """
    if not 0.0 < target_ssim < 1.0:
        raise ValueError(f"target_ssim: expected a value in (0, 1), got {target_ssim!r}")
    lo = torch.full((len(clean_unit),), SIGMA_RANGE_LOG10[0], dtype=torch.float64)
    hi = torch.full_like(lo, SIGMA_RANGE_LOG10[1])
    for _ in range(steps):
        mid = (lo + hi) / 2
        scale = (10.0 ** mid).to(clean_unit.dtype).to(clean_unit.device).view(-1, 1, 1, 1)
        score = structural_similarity((clean_unit + scale * pattern).clamp(0, 1), clean_unit).double().cpu()
        too_much = score < target_ssim  # more noise than the target: shrink
        hi = torch.where(too_much, mid, hi)
        lo = torch.where(too_much, lo, mid)
    return (10.0 ** ((lo + hi) / 2)).to(clean_unit.dtype)


@settings
class InputNoiseParams:
    """Parameters of ``input_noise``.

    Attributes:
        target_psnr_db: PSNR of the noised input against the clean one, in dB (lower = more
            noise); the sweep's strength. 20.7 dB is the Shadow Defense's round-1 distortion on
            the offline default at ``w0 = 0.19``. With ``psnr_per_doubling_db``, the
            one-image hospital's.
        psnr_per_doubling_db: per-hospital strength (``psnr`` budget): a hospital of ``n``
            images at ``target_psnr_db + psnr_per_doubling_db * log2 n``
            (:func:`~fl_shadow.defenses.base.hospital_psnr_db`; the shadow's parameter of the
            same name, so the control follows the same schedule).
        fresh: new noise at every local step (True) or one frozen draw per local image.
        region: ``image`` (every pixel), ``foreground``: only on the anatomy (a pixel above
            :data:`~fl_shadow.defenses.base.FOREGROUND_LEVEL`; a control for defenses that
            place their noise on the anatomy), or ``outside_cam``: only outside the top
            ``perc_cam`` of the global model's Grad-CAM++ map of the image. Either way at the
            same distortion over the whole image.
        perc_cam: share of each image's pixels in the Grad-CAM++ region (``outside_cam``).
        budget: ``psnr`` (``target_psnr_db``) or ``ssim`` (``target_ssim``, per image).
        target_ssim: SSIM of the (clipped) noised input against the clean one (``ssim``).
        recalibrate_every: under ``budget: ssim``, the adaptive attacker's model sets its
            noise level on its current candidate every this many replays.
    """

    target_psnr_db: Annotated[Float, Field(gt=0, le=100)] = 21.0
    psnr_per_doubling_db: Annotated[Float, Field(ge=0, le=20)] = 0.0
    fresh: Bool = True
    region: Literal["image", "foreground", "outside_cam"] = "image"
    perc_cam: Annotated[Float, Field(gt=0, lt=1)] = 0.3
    budget: Literal["psnr", "ssim"] = "psnr"
    target_ssim: Annotated[Float, Field(gt=0, lt=1)] = 0.8
    recalibrate_every: Annotated[Int, Field(ge=1)] = 25

    def __post_init__(self) -> None:
        if self.psnr_per_doubling_db and self.budget != "psnr":
            raise ConfigError("psnr_per_doubling_db: needs budget: psnr (it schedules the "
                              f"target PSNR), got budget {self.budget!r}")


class InputNoiseModel(DefenseModel):
    """The adaptive attacker's model: the same Gaussian (its level is public), sampled afresh
    at each call (expectation over transformations).

    ``region: foreground`` is applied to the candidate (the rule is public). ``outside_cam``
    is modelled as noise everywhere: the region comes from a Grad-CAM++ pass the attacker's
    replay does not make. Under ``budget: ssim`` the level is set on the attacker's current
    candidate, as the client sets it on its image, every ``recalibrate_every`` replays.
    """

    modelled = True

    def __init__(self, params: InputNoiseParams, knowledge: DefenseKnowledge, seed: int) -> None:
        self.params, self.mean, self.std = params, tuple(knowledge.mean), tuple(knowledge.std)
        self.target_db = hospital_psnr_db(params.target_psnr_db,
                                          per_doubling_db=params.psnr_per_doubling_db,
                                          num_images=knowledge.num_examples)
        self.generator = torch.Generator().manual_seed(seed)
        self.replays = 0
        self.sigma: torch.Tensor | None = None  # (N,) under budget: ssim

    def perturb_input(self, x: torch.Tensor, step: int) -> torch.Tensor:
        p = self.params
        std = per_channel(self.std, x).flatten().tolist()
        level = self.target_db if p.budget == "psnr" else 0.0  # ssim: a unit pattern
        noise = gaussian_noise(x.shape, target_psnr_db=level, std=std,
                               generator=self.generator, device=x.device)
        if p.region == "foreground":
            noise = within(noise, foreground_mask(unnormalize(x, self.mean, self.std)))
        if p.budget == "ssim":
            if step == 0:
                stale = self.sigma is None or len(self.sigma) != len(x) or \
                    self.replays % p.recalibrate_every == 0
                if stale:
                    clean = unnormalize(x.detach(), self.mean, self.std).clamp(0, 1)
                    self.sigma = sigma_for_ssim(clean, noise.detach() * per_channel(self.std, x),
                                                target_ssim=p.target_ssim)
                self.replays += 1
            assert self.sigma is not None
            noise = noise * self.sigma.to(x.device).view(-1, 1, 1, 1)
        return x + noise


def attacker_model(params: InputNoiseParams, knowledge: DefenseKnowledge,
                   received: list[torch.Tensor], seed: int) -> InputNoiseModel:
    return InputNoiseModel(params, knowledge, seed)


@register_defense("input_noise", InputNoiseParams, keeps_client_state=True,
                  attacker_model=attacker_model)
class InputNoise(Defense):
    """Gaussian input noise at a target PSNR or SSIM (see the module docstring)."""

    def __init__(self, params: InputNoiseParams) -> None:
        self.params = params
        self.frozen: torch.Tensor | None = None  # (N, C, H, W) one draw per local image
        self.outside: torch.Tensor | None = None  # (N, 1, H, W) outside the CAM region
        self.sigma: torch.Tensor | None = None    # (N,) image-unit std (budget: ssim)
        self.target_db = params.target_psnr_db    # this hospital's (psnr_per_doubling_db)

    def setup(self, images: torch.Tensor, labels: torch.Tensor, model: nn.Module,
              ctx: DefenseContext) -> None:
        p = self.params
        everyone = torch.arange(len(images))
        self.target_db = hospital_psnr_db(p.target_psnr_db,
                                          per_doubling_db=p.psnr_per_doubling_db,
                                          num_images=len(images))
        if p.region == "outside_cam":
            region = top_fraction_mask(cam_maps(model, images, labels), p.perc_cam)
            self.outside = (~region).unsqueeze(1).to(images.dtype)
        if p.budget == "ssim":
            pattern = self._pattern(images, ctx, everyone) * per_channel(ctx.std, images)
            clean = unnormalize(images, ctx.mean, ctx.std).clamp(0, 1)
            self.sigma = sigma_for_ssim(clean, pattern, target_ssim=p.target_ssim)
            ctx.metrics["input_noise_sigma"] = float(self.sigma.mean())
        if not p.fresh and (self.frozen is None or self.frozen.shape != images.shape):
            self.frozen = self._draw(images, ctx, everyone)

    def _pattern(self, x: torch.Tensor, ctx: DefenseContext, index: torch.Tensor
                 ) -> torch.Tensor:
        """Normalized noise of ``x`` (local images ``index``) in its region, at the PSNR
        budget's level, or at unit image-unit std under ``budget: ssim``."""
        p = self.params
        level = self.target_db if p.budget == "psnr" else 0.0
        noise = gaussian_noise(x.shape, target_psnr_db=level, std=ctx.std,
                               generator=ctx.generator, device=x.device)
        if p.region == "foreground":
            noise = within(noise, foreground_mask(unnormalize(x, ctx.mean, ctx.std)))
        elif p.region == "outside_cam":
            assert self.outside is not None
            noise = within(noise, self.outside[index.to(self.outside.device)].to(x.device))
        return noise

    def _draw(self, x: torch.Tensor, ctx: DefenseContext, index: torch.Tensor) -> torch.Tensor:
        noise = self._pattern(x, ctx, index)
        if self.params.budget == "ssim":
            assert self.sigma is not None
            noise = noise * self.sigma[index.to(self.sigma.device)].to(x.device).view(-1, 1, 1, 1)
        return noise

    def perturb_batch(self, x: torch.Tensor, y: torch.Tensor, model: nn.Module,
                      ctx: DefenseContext) -> torch.Tensor:
        assert ctx.batch_index is not None or (self.params.fresh and
                                               self.params.region != "outside_cam"
                                               and self.params.budget == "psnr")
        index = ctx.batch_index if ctx.batch_index is not None else torch.arange(len(x))
        if self.params.fresh:
            noise = self._draw(x, ctx, index)
        else:
            assert self.frozen is not None
            noise = self.frozen[index.to(self.frozen.device)].to(x.device)
        unit = noise * per_channel(ctx.std, x)
        ctx.metrics["input_noise_psnr"] = float(psnr_of_noise(unit).mean())
        # SSIM is the ssim budget's target, reported there only: a float64 SSIM at every step
        # of every input-noise run would add to the hot path for a number nobody asked for
        if self.params.budget == "ssim":
            clean = unnormalize(x, ctx.mean, ctx.std).clamp(0, 1)
            ctx.metrics["input_noise_ssim"] = float(
                structural_similarity((clean + unit).clamp(0, 1), clean).mean())
        return x + noise

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {} if self.frozen is None else {"frozen": self.frozen.detach().cpu().clone()}

    def load_state_dict(self, state: Mapping[str, torch.Tensor]) -> None:
        self.frozen = state["frozen"].clone() if "frozen" in state else None

    def summary(self) -> str:
        p = self.params
        level = (f"target_psnr_db={p.target_psnr_db:g}" if p.budget == "psnr"
                 else f"target_ssim={p.target_ssim:g}")
        if p.budget == "psnr" and p.psnr_per_doubling_db:
            level += f" +{p.psnr_per_doubling_db:g} dB per doubling of the hospital"

        return f"input_noise({level}, {'fresh' if p.fresh else 'frozen'}, {p.region})"
