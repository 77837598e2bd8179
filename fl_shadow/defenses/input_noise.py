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

Pure math: :func:`noise_std` and :func:`gaussian_noise`; the class only keeps the frozen draws.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Annotated, Literal

import torch
from pydantic import Field
from torch import nn

from fl_shadow.config import Bool, Float, settings
from fl_shadow.defenses.base import (
    Defense,
    DefenseContext,
    DefenseModel,
    foreground_mask,
    per_channel,
    register_defense,
    unnormalize,
)
from fl_shadow.threat_model import DefenseKnowledge

__all__ = ["InputNoise", "InputNoiseParams", "gaussian_noise", "noise_std", "psnr_of_noise",
           "within"]


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


@settings
class InputNoiseParams:
    """Parameters of ``input_noise``.

    Attributes:
        target_psnr_db: PSNR of the noised input against the clean one, in dB (lower = more
            noise); the sweep's strength. 20.7 dB is the Shadow Defense's round-1 distortion on
            the offline default at ``w0 = 0.19``.
        fresh: new noise at every local step (True) or one frozen draw per local image.
        region: ``image`` (every pixel) or ``foreground``: only on the anatomy (a pixel above
            :data:`~fl_shadow.defenses.base.FOREGROUND_LEVEL`), at the same PSNR over the
            whole image (a control for defenses that place their noise on the anatomy).
    """

    target_psnr_db: Annotated[Float, Field(gt=0, le=100)] = 21.0
    fresh: Bool = True
    region: Literal["image", "foreground"] = "image"


class InputNoiseModel(DefenseModel):
    """The adaptive attacker's model: the same Gaussian (its std is public), sampled afresh
    at each call (expectation over transformations)."""

    modelled = True

    def __init__(self, params: InputNoiseParams, knowledge: DefenseKnowledge, seed: int) -> None:
        self.params, self.mean, self.std = params, tuple(knowledge.mean), tuple(knowledge.std)
        self.generator = torch.Generator().manual_seed(seed)

    def perturb_input(self, x: torch.Tensor, step: int) -> torch.Tensor:
        std = per_channel(self.std, x).flatten().tolist()
        noise = gaussian_noise(x.shape, target_psnr_db=self.params.target_psnr_db, std=std,
                               generator=self.generator, device=x.device)
        if self.params.region == "foreground":  # the rule is public: apply it to the candidate
            noise = within(noise, foreground_mask(unnormalize(x, self.mean, self.std)))
        return x + noise


def attacker_model(params: InputNoiseParams, knowledge: DefenseKnowledge,
                   received: list[torch.Tensor], seed: int) -> InputNoiseModel:
    return InputNoiseModel(params, knowledge, seed)


@register_defense("input_noise", InputNoiseParams, keeps_client_state=True,
                  attacker_model=attacker_model)
class InputNoise(Defense):
    """Gaussian input noise at a target PSNR (see the module docstring)."""

    def __init__(self, params: InputNoiseParams) -> None:
        self.params = params
        self.frozen: torch.Tensor | None = None  # (N, C, H, W) one draw per local image

    def setup(self, images: torch.Tensor, labels: torch.Tensor, model: nn.Module,
              ctx: DefenseContext) -> None:
        if not self.params.fresh and (self.frozen is None or self.frozen.shape != images.shape):
            self.frozen = self._draw(images, ctx)

    def _draw(self, x: torch.Tensor, ctx: DefenseContext) -> torch.Tensor:
        noise = gaussian_noise(x.shape, target_psnr_db=self.params.target_psnr_db, std=ctx.std,
                               generator=ctx.generator, device=x.device)
        if self.params.region == "foreground":
            noise = within(noise, foreground_mask(unnormalize(x, ctx.mean, ctx.std)))
        return noise

    def perturb_batch(self, x: torch.Tensor, y: torch.Tensor, model: nn.Module,
                      ctx: DefenseContext) -> torch.Tensor:
        if self.params.fresh:
            noise = self._draw(x, ctx)
        else:
            assert self.frozen is not None and ctx.batch_index is not None
            noise = self.frozen[ctx.batch_index.to(self.frozen.device)].to(x.device)
        unit = noise * per_channel(ctx.std, x)
        ctx.metrics["input_noise_psnr"] = float(psnr_of_noise(unit).mean())
        return x + noise

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {} if self.frozen is None else {"frozen": self.frozen.detach().cpu().clone()}

    def load_state_dict(self, state: Mapping[str, torch.Tensor]) -> None:
        self.frozen = state["frozen"].clone() if "frozen" in state else None

    def summary(self) -> str:
        p = self.params
        return (f"input_noise(target_psnr_db={p.target_psnr_db:g}, "
                f"{'fresh' if p.fresh else 'frozen'}, {p.region})")

