"""The Shadow Defense: sample-specific input noise placed where a simulated attacker succeeds.

Method (tekap404/ShadowDef; spec in ``shared/reference/shadow-defense-spec.md``). Each client
keeps a *shadow*: a copy of a generator pretrained on public data
(:mod:`fl_shadow.generative`), plus one latent code per local image fitted before federated
training. At every local step of the rounds before ``shadow_final_round``:

1. **pseudo local training** on the clean batch gives the victim gradient ``g*`` and the BN
   batch statistics (:func:`~.fine_tune.pseudo_step`);
2. **shadow fine-tuning**: ``gan_rounds`` Adam steps on the generator's weights so that the
   shadow's images reproduce ``g*`` (gradient matching with a real second-order path), with TV,
   image-norm, BN-statistic and reconstruction terms (:func:`~.fine_tune.shadow_objective`);
3. **noise map**: the shadow's per-pixel error -> ``1/softmax(E/T)`` -> histogram equalization
   -> ``softmax(./T)`` -> momentum over rounds (:mod:`~.noise`); the generator's weights then
   move to ``ema_shadow * old + (1 - ema_shadow) * fine-tuned``;
4. **foreground suppression**: less noise inside the top ``perc_cam`` Grad-CAM++ region of the
   global model, by ``alpha = clip(r/R, min_cam_alpha, max_cam_alpha)``;
5. **scaling** to ``w_N * |max(x)|`` with ``w_N = noise_rescale * exp(r/R)``, noise added in
   normalized space; **real local training** runs on the noised batch.

After ``shadow_final_round``, the per-image noise memory is frozen and reused; the shadow is
no longer trained (the client's round time returns close to plain FedAvg's).

Deliberate differences from the reference code (each also in the README):

* The shadow starts from the **pretrained** generator (the reference builds a random one and
  discards the checkpoint it loaded); the latent fit's early stopping works (its list was never
  filled) and uses a larger step (``z_lr`` 0.05, not 1e-3, because our generator's latent space
  is 64-d with a unit Gaussian prior; at 1e-3, 500 steps move a code by at most 0.5).
* The shadow's gradient-matching term is differentiable (see :mod:`~.fine_tune`); ``g*``, the BN
  targets and the shadow's gradient come from the same local model at every step.
* Adam's moments persist across steps and rounds with the shadow (the reference restores them
  before every batch, so Adam never accumulates statistics).
* The momentum memory is used in every round (the reference only reads it after round 20), and
  the noise map, equalization and foreground suppression follow :mod:`~.noise`.
* Grad-CAM++ explains each image's own label on a copy of the global model in eval mode (the
  reference always explains class 1 and lets the CAM forward passes update the global BN
  statistics in round 1).
* The shadow's reconstruction error and the added noise are in normalized space, as in the
  reference; peak noise is relative to each image's own maximum.
"""

from __future__ import annotations

import copy
import logging
import math
import time
from collections.abc import Callable, Mapping
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
    load_pretrained_generator,
    per_channel,
    register_defense,
    unnormalize,
)
from fl_shadow.defenses.shadow.fine_tune import (
    ShadowWeights,
    pseudo_step,
    shadow_objective,
)
from fl_shadow.defenses.shadow.noise import (
    cam_alpha,
    error_to_noise_map,
    noise_weight,
    scale_noise,
    scale_to_psnr,
    shuffle_per_image,
    suppress_foreground,
    update_memory,
    zero_mean,
)
from fl_shadow.errors import ConfigError
from fl_shadow.generative import ImageGenerator, fit_latents, to_unit
from fl_shadow.saliency import cam_maps, top_fraction_mask
from fl_shadow.threat_model import DefenseKnowledge

__all__ = ["ShadowDefense", "ShadowParams"]

logger = logging.getLogger(__name__)


@settings
class ShadowParams:
    """Parameters of ``shadow`` (the reference's names and defaults, ``epoch`` -> ``round``).

    Attributes:
        shadow_train: fine-tune the shadow during the early rounds (off: the pretrained
            generator with fitted latents makes the noise map).
        shadow_final_round: the shadow is trained in rounds ``1..shadow_final_round``
            (1-based) and the noise map is frozen after (reference ``shadow_final_epoch = 20``
            with 0-based ``r < 20``: the same rounds).
        gan_rounds: Adam steps on the shadow per local step (``GAN_round``).
        gan_lr: the shadow's Adam learning rate (``GAN_lr``).
        ema_shadow: weight of the old shadow in the EMA after each step.
        shadow_grad_match, shadow_total_var, shadow_img_norm, shadow_bn, shadow_rec: weights of
            the shadow objective's terms.
        pseudo_train_img: run the pseudo step; off drops the gradient and BN terms.
        z_iter, z_lr, z_patience: per-image latent fit (most iterations, AdamW step, early
            stopping patience).
        z_batch_size: images fitted together (codes are independent; this bounds memory).
        noise_equ: histogram-equalize the inverted error map.
        sub_cam: suppress noise in the Grad-CAM++ foreground.
        noise_momentum: share of the old noise map kept each round.
        perc_cam: share of pixels in the foreground region.
        cam_every: recompute the Grad-CAM++ maps every this many rounds (1, the reference:
            every round); in between the client reuses its last maps. Each recomputation is a
            forward pass over the local data, which is most of the defense's cost once the
            shadow is frozen.
        min_cam_alpha, max_cam_alpha: bounds of the suppression strength.
        noise_rescale: ``w0`` of ``w_N = w0 * exp(r/R)`` (``budget: peak``).
        noise_increase: grow the noise over rounds: ``w_N = w0 * exp(r/R)``, or under
            ``budget: psnr`` the target lowered by ``20 log10 exp(r/R)`` dB, the same growth
            (off: constant).
        budget: how much noise. ``peak`` (the reference): each image's noise peaks at
            ``w_N * |max x|``. ``psnr`` (beyond the paper): the noised input is
            ``target_psnr_db`` from the clean one, the same distortion on every dataset.
        target_psnr_db: the ``psnr`` budget's distortion (dB in [0, 1] image units); with
            ``psnr_per_doubling_db``, the one-image hospital's.
        psnr_per_doubling_db: per-hospital strength (beyond the paper; ``psnr`` budget): a
            hospital of ``n`` local images trains ``target_psnr_db + psnr_per_doubling_db *
            log2 n`` dB from its clean images (:func:`~fl_shadow.defenses.base.
            hospital_psnr_db`): most noise where one update is one patient's image, least
            where the utility comes from. 0: every hospital at ``target_psnr_db``.
        noise_sign: ``positive`` (the reference: the map only brightens, mostly the
            background) or ``random`` (beyond the paper: each pixel's noise gets a private
            random sign, drawn once per local image, then each image and channel's mean is
            subtracted, so the noise is exactly zero-mean and does not shift the image's
            brightness; where the noise goes is kept).
        noise_region: ``image`` (the method) or ``foreground`` (beyond the paper): noise only
            on the anatomy (a clean pixel above
            :data:`~fl_shadow.defenses.base.FOREGROUND_LEVEL`), ranked by the shadow's error
            within it. The shadow reconstructs the black background best, so the method puts
            86-94% of the noise energy there, where it hides nothing
            (``experiments/results/shadow_diagnosis_default.md``).
        placement: ``shadow`` (the method) or ``shuffled``, a control: the same values moved
            to random places within each image (one private permutation per local image), so
            what the shadow's placement buys can be measured at equal distortion.
        temperature: softmax temperature ``T`` (hard-coded 20 in the reference).
        progress: show the latent fit's progress.
    """

    shadow_train: Bool = True
    shadow_final_round: Annotated[Int, Field(ge=0)] = 20
    gan_rounds: Annotated[Int, Field(ge=0)] = 5
    gan_lr: Annotated[Float, Field(gt=0)] = 1e-3
    ema_shadow: Annotated[Float, Field(ge=0, le=1)] = 0.5
    shadow_grad_match: Annotated[Float, Field(ge=0)] = 1e-2
    shadow_total_var: Annotated[Float, Field(ge=0)] = 1e-5
    shadow_img_norm: Annotated[Float, Field(ge=0)] = 1e2
    shadow_bn: Annotated[Float, Field(ge=0)] = 1e-2
    shadow_rec: Annotated[Float, Field(ge=0)] = 1.0
    pseudo_train_img: Bool = True
    z_iter: Annotated[Int, Field(ge=0)] = 500
    z_lr: Annotated[Float, Field(gt=0)] = 0.05
    z_patience: Annotated[Int, Field(ge=0)] = 5
    z_batch_size: Annotated[Int, Field(ge=1)] = 64
    noise_equ: Bool = True
    sub_cam: Bool = True
    noise_momentum: Annotated[Float, Field(ge=0, le=1)] = 0.1
    perc_cam: Annotated[Float, Field(gt=0, le=1)] = 0.3
    cam_every: Annotated[Int, Field(ge=1)] = 1
    min_cam_alpha: Annotated[Float, Field(ge=0, le=1)] = 0.1
    max_cam_alpha: Annotated[Float, Field(ge=0, le=1)] = 0.5
    noise_rescale: Annotated[Float, Field(ge=0)] = 0.19
    noise_increase: Bool = True
    budget: Literal["peak", "psnr"] = "peak"
    target_psnr_db: Annotated[Float, Field(gt=0, le=100)] = 21.0
    psnr_per_doubling_db: Annotated[Float, Field(ge=0, le=20)] = 0.0
    noise_sign: Literal["positive", "random"] = "positive"
    noise_region: Literal["image", "foreground"] = "image"
    placement: Literal["shadow", "shuffled"] = "shadow"
    temperature: Annotated[Float, Field(gt=0)] = 20.0
    progress: Bool = True

    def __post_init__(self) -> None:
        if self.psnr_per_doubling_db and self.budget != "psnr":
            raise ConfigError("psnr_per_doubling_db: needs budget: psnr (it schedules the "
                              f"target PSNR), got budget {self.budget!r}")
        if self.min_cam_alpha > self.max_cam_alpha:
            raise ConfigError(f"min_cam_alpha: expected at most max_cam_alpha "
                              f"({self.max_cam_alpha}), got {self.min_cam_alpha!r}")

    @property
    def weights(self) -> ShadowWeights:
        return ShadowWeights(grad_match=self.shadow_grad_match, total_var=self.shadow_total_var,
                             img_norm=self.shadow_img_norm, bn=self.shadow_bn,
                             rec=self.shadow_rec)


class ShadowNoiseModel(DefenseModel):
    """The adaptive attacker's model: the expectation over the shadow defense's input noise,
    by sampling (EOT).

    Each call draws noise maps with the public shape of an equalized map through
    ``softmax(./T)``: ``exp(-(255/T)(1 - e))``, ``e ~ U[0, 1]`` per pixel, random signs when
    ``noise_sign`` is ``random``, and the public budget: the peak ``w_N * |max x|`` (``w_N``
    from ``noise_rescale``, the round and ``noise_increase``) or the target PSNR (per
    hospital from the reported number of examples under ``psnr_per_doubling_db``). Where the
    noise goes depends on the client's private shadow and Grad-CAM, so positions are random.
    """

    modelled = True

    def __init__(self, params: ShadowParams, knowledge: DefenseKnowledge, seed: int) -> None:
        self.params, self.sharpness = params, 255.0 / params.temperature
        self.growth = noise_weight(knowledge.server_round - 1, knowledge.num_rounds, 1.0,
                                   increase=params.noise_increase)
        self.mean, self.std = knowledge.mean, knowledge.std
        self.target_db = hospital_psnr_db(params.target_psnr_db,
                                          per_doubling_db=params.psnr_per_doubling_db,
                                          num_images=knowledge.num_examples)
        self.generator = torch.Generator().manual_seed(seed)

    def perturb_input(self, x: torch.Tensor, step: int) -> torch.Tensor:
        p = self.params
        e = torch.rand(x.shape, generator=self.generator).to(x.device)
        shape = torch.exp(-self.sharpness * (1 - e))
        mask = None
        if p.noise_region == "foreground":  # the rule is public: apply it to the candidate
            mask = foreground_mask(unnormalize(x, self.mean, self.std))
            shape = shape * mask
        if p.noise_sign == "random":
            bits = torch.randint(0, 2, x.shape, generator=self.generator).to(x.device)
            shape = zero_mean(shape * (2 * bits - 1).to(shape.dtype), mask)
        if p.budget == "psnr":
            return x + scale_to_psnr(shape, self.target_db - 20 * math.log10(self.growth),
                                     per_channel(self.std, x))
        return x + scale_noise(shape, x, p.noise_rescale * self.growth)


def attacker_model(params: ShadowParams, knowledge: DefenseKnowledge,
                   received: list[torch.Tensor], seed: int) -> ShadowNoiseModel:
    return ShadowNoiseModel(params, knowledge, seed)


@register_defense("shadow", ShadowParams, needs_generator=True, keeps_client_state=True,
                  attacker_model=attacker_model)
class ShadowDefense(Defense):
    """Shadow Defense (see the module docstring).

    Args:
        params: validated :class:`ShadowParams`.
        load_generator: returns the pretrained generator for a context (default: the
            experiment's cached checkpoint); tests pass a small one. Called once per client,
            in its first round; afterwards the client's own shadow comes from its state.
    """

    def __init__(self, params: ShadowParams,
                 load_generator: Callable[[DefenseContext], ImageGenerator] = (
                     load_pretrained_generator)) -> None:
        self.params = params
        self.load_generator = load_generator
        self.shadow: ImageGenerator | None = None
        self.optimizer: torch.optim.Adam | None = None
        self.latents: torch.Tensor | None = None
        self.memory: torch.Tensor | None = None   # (N, C, H, W) noise map per local image
        self.seen: torch.Tensor | None = None     # (N,) bool: memory holds a map
        self.cam: torch.Tensor | None = None      # (N, H, W) this round's Grad-CAM++
        self.region: torch.Tensor | None = None   # (N, H, W) its top-perc_cam pixels
        self.signs: torch.Tensor | None = None    # (N, C, H, W) +-1 (noise_sign: random)
        self.permutation: torch.Tensor | None = None  # (N, C*H*W) (placement: shuffled)
        self.foreground: torch.Tensor | None = None   # (N, 1, H, W) (noise_region: foreground)
        self._pending: dict[str, torch.Tensor] = {}
        self._mean = self._std = torch.zeros(0)
        self._target_db = params.target_psnr_db  # this hospital's (psnr_per_doubling_db)

    # -- round setup ------------------------------------------------------------------------
    def setup(self, images: torch.Tensor, labels: torch.Tensor, model: nn.Module,
              ctx: DefenseContext) -> None:
        start = time.perf_counter()
        p = self.params
        device = images.device
        self._mean = torch.tensor(ctx.mean, device=device).view(1, -1, 1, 1)
        self._std = torch.tensor(ctx.std, device=device).view(1, -1, 1, 1)
        self._target_db = hospital_psnr_db(p.target_psnr_db,
                                           per_doubling_db=p.psnr_per_doubling_db,
                                           num_images=len(images))
        if self.shadow is None:
            self._build_shadow(self.load_generator(ctx), device)
        assert self.shadow is not None
        if self.latents is None or len(self.latents) != len(images):
            if self.latents is not None:
                logger.warning("client %d: %d local images but %d latent codes; refitting",
                               ctx.client_id, len(images), len(self.latents))
            fit_start = time.perf_counter()
            rng = torch.Generator().manual_seed(ctx.generator.initial_seed() ^ 0x5EED)
            unit = self._to_unit_images(images)
            fits = [fit_latents(self.shadow, unit[i:i + p.z_batch_size], iterations=p.z_iter,
                                lr=p.z_lr, patience=p.z_patience, rng=rng,
                                progress=p.progress,
                                desc=f"client {ctx.client_id} latent fit "
                                     f"({i + 1}-{min(i + p.z_batch_size, len(unit))}"
                                     f"/{len(unit)})")
                    for i in range(0, len(unit), p.z_batch_size)]
            self.latents = torch.cat([f.latents for f in fits]).detach()
            ctx.metrics["shadow_latent_mse"] = float(torch.cat([f.mse for f in fits]).mean())
            ctx.metrics["shadow_latent_iterations"] = float(max(f.iterations for f in fits))
            ctx.metrics["shadow_latent_seconds"] = time.perf_counter() - fit_start
            self.memory, self.seen = None, torch.zeros(len(images), dtype=torch.bool)
        if self.seen is None:
            self.seen = torch.zeros(len(images), dtype=torch.bool)
        self._draw_private(images, ctx.generator)
        self.foreground = (foreground_mask(self._to_unit_images(images))
                           if p.noise_region == "foreground" else None)
        if p.sub_cam:
            stale = self.cam is None or len(self.cam) != len(images) \
                or (ctx.server_round - 1) % p.cam_every == 0
            if stale:
                cam_start = time.perf_counter()
                self.cam = cam_maps(model, images, labels)
                ctx.metrics["shadow_cam_seconds"] = time.perf_counter() - cam_start
            assert self.cam is not None
            self.region = top_fraction_mask(self.cam, p.perc_cam)
        ctx.metrics["shadow_seconds"] = time.perf_counter() - start

    def _draw_private(self, images: torch.Tensor, generator: torch.Generator) -> None:
        """The per-image random signs and permutations the variants use, drawn once from the
        client's private generator (kept across rounds, so a frozen map stays frozen)."""
        n, flat = len(images), images[0].numel()
        if self.params.noise_sign == "random" and (
                self.signs is None or self.signs.shape != images.shape):
            bits = torch.randint(0, 2, images.shape, generator=generator)
            self.signs = (2 * bits - 1).to(images.dtype).to(images.device)
        if self.params.placement == "shuffled" and (
                self.permutation is None or self.permutation.shape != (n, flat)):
            self.permutation = torch.stack([torch.randperm(flat, generator=generator)
                                            for _ in range(n)]).to(images.device)

    def _scale(self, noise_map: torch.Tensor, x: torch.Tensor, round_index: int,
               num_rounds: int) -> torch.Tensor:
        """The budget: the peak ratio (the reference) or a target PSNR of the noised input."""
        p = self.params
        growth = noise_weight(round_index, num_rounds, 1.0, increase=p.noise_increase)
        if p.budget == "psnr":
            return scale_to_psnr(noise_map, self._target_db - 20 * math.log10(growth),
                                 self._std)
        return scale_noise(noise_map, x, p.noise_rescale * growth)

    def _build_shadow(self, generator: ImageGenerator, device: torch.device) -> None:
        self.shadow = copy.deepcopy(generator).to(device).train()
        self.shadow.requires_grad_(True)
        self.optimizer = torch.optim.Adam(self.shadow.parameters(), lr=self.params.gan_lr)
        if self._pending:
            self._restore(self._pending)
            self._pending = {}

    def _to_unit_images(self, x: torch.Tensor) -> torch.Tensor:
        return (x * self._std + self._mean).clamp(0, 1)

    def _shadow_images(self, idx: torch.Tensor) -> torch.Tensor:
        """Normalized shadow images of the local images ``idx`` (with a graph to the shadow)."""
        assert self.shadow is not None and self.latents is not None
        return (to_unit(self.shadow(self.latents[idx])) - self._mean) / self._std

    # -- per step ---------------------------------------------------------------------------
    def perturb_batch(self, x: torch.Tensor, y: torch.Tensor, model: nn.Module,
                      ctx: DefenseContext) -> torch.Tensor:
        start = time.perf_counter()
        p = self.params
        assert self.seen is not None and ctx.batch_index is not None
        idx = ctx.batch_index.to(x.device)
        seen = self.seen[ctx.batch_index]
        r0, rounds = ctx.server_round - 1, ctx.num_rounds
        training_round = p.shadow_train and ctx.server_round <= p.shadow_final_round
        if training_round or not bool(seen.all()):
            fresh = self._fresh_noise_map(x, y, idx, model, ctx, fine_tune=training_round)
            old = self.memory[idx] if self.memory is not None else fresh
            # Training rounds blend into the memory; frozen rounds only fill never-seen images.
            blended = update_memory(old, fresh, p.noise_momentum) if training_round else old
            noise_map = torch.where(seen.to(x.device).view(-1, 1, 1, 1), blended, fresh)
            self._remember(idx, noise_map)
        else:
            assert self.memory is not None
            noise_map = self.memory[idx]
        if p.sub_cam:
            assert self.cam is not None and self.region is not None
            alpha = cam_alpha(r0, rounds, p.min_cam_alpha, p.max_cam_alpha)
            noise_map = suppress_foreground(noise_map, self.cam[idx], self.region[idx], alpha)
        mask = self.foreground[idx] if self.foreground is not None else None
        if mask is not None:
            noise_map = noise_map * mask
        if self.permutation is not None:
            noise_map = shuffle_per_image(noise_map, self.permutation[idx])
        if self.signs is not None:
            noise_map = zero_mean(noise_map * self.signs[idx], mask)
        noise = self._scale(noise_map, x, r0, rounds)
        self._log_noise(noise, idx, ctx)
        ctx.metrics["shadow_seconds"] = ctx.metrics.get("shadow_seconds", 0.0) + \
            time.perf_counter() - start
        return x + noise

    def _fresh_noise_map(self, x: torch.Tensor, y: torch.Tensor, idx: torch.Tensor,
                         model: nn.Module, ctx: DefenseContext, *, fine_tune: bool
                         ) -> torch.Tensor:
        """This step's noise map from the shadow (fine-tuned first when ``fine_tune``)."""
        assert self.shadow is not None and self.optimizer is not None
        p = self.params
        if fine_tune:
            tune_start = time.perf_counter()
            victim = pseudo_step(model, x, y) if p.pseudo_train_img else None
            old = [q.detach().clone() for q in self.shadow.parameters()]
            params = list(self.shadow.parameters())
            terms: dict[str, float] = {}
            for _ in range(p.gan_rounds):
                loss, terms = shadow_objective(self._shadow_images(idx), x, y, model, victim,
                                               p.weights)
                self.optimizer.zero_grad(set_to_none=True)
                grads = torch.autograd.grad(loss, params)  # never into the task model's .grad
                for q, g in zip(params, grads, strict=True):
                    q.grad = g
                self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
            for name, value in terms.items():
                ctx.metrics[f"shadow_{name}"] = value
            ctx.metrics["shadow_fine_tune_seconds"] = ctx.metrics.get(
                "shadow_fine_tune_seconds", 0.0) + time.perf_counter() - tune_start
        with torch.no_grad():
            error = (self._shadow_images(idx) - x).pow(2)
            if self.foreground is not None:  # the background ranks last: least noise there
                top = error.flatten(1).max(1).values.view(-1, 1, 1, 1)
                error = torch.where(self.foreground[idx].bool().expand_as(error), error,
                                    top.expand_as(error))
            if fine_tune:  # the noise comes from the fine-tuned shadow, then the EMA moves it
                for q, q_old in zip(self.shadow.parameters(), old, strict=True):
                    q.lerp_(q_old, p.ema_shadow)
        ctx.metrics["shadow_error"] = float(error.mean())
        return error_to_noise_map(error, temperature=p.temperature,
                                  equalize_histogram=p.noise_equ)

    def _remember(self, idx: torch.Tensor, noise_map: torch.Tensor) -> None:
        assert self.seen is not None and self.latents is not None
        if self.memory is None:
            n = len(self.latents)
            self.memory = noise_map.new_zeros((n, *noise_map.shape[1:]))
        self.memory[idx] = noise_map.detach()
        self.seen[idx.cpu()] = True

    def _log_noise(self, noise: torch.Tensor, idx: torch.Tensor, ctx: DefenseContext) -> None:
        ctx.metrics["shadow_noise_l2"] = float(noise.flatten(1).norm(dim=1).mean())
        mse = (noise * self._std).flatten(1).pow(2).mean(dim=1).clamp_min(1e-24)
        ctx.metrics["shadow_input_psnr"] = float((-10 * torch.log10(mse)).mean())
        if self.region is not None:
            inside = self.region[idx].unsqueeze(1).expand_as(noise)
            if bool(inside.any()) and bool((~inside).any()):
                ctx.metrics["shadow_noise_fg_ratio"] = float(
                    noise[inside].mean() / noise[~inside].mean().clamp_min(1e-12))

    # -- state across rounds ----------------------------------------------------------------
    def state_dict(self) -> dict[str, torch.Tensor]:
        if self.shadow is None or self.latents is None:
            return {}
        state = {f"shadow.{k}": v for k, v in self.shadow.state_dict().items()}
        state["latents"] = self.latents
        assert self.seen is not None
        state["seen"] = self.seen.to(torch.uint8)
        if self.memory is not None:
            state["memory"] = self.memory
        if self.cam is not None:
            state["cam"] = self.cam
        if self.signs is not None:
            state["signs"] = self.signs.to(torch.int8)
        if self.permutation is not None:
            state["permutation"] = self.permutation
        assert self.optimizer is not None
        for i, entry in self.optimizer.state_dict()["state"].items():
            for k, v in entry.items():
                state[f"adam.{i}.{k}"] = torch.as_tensor(v)
        return {k: v.detach().cpu().clone() for k, v in state.items()}  # a snapshot

    def load_state_dict(self, state: Mapping[str, torch.Tensor]) -> None:
        if self.shadow is None:
            # The architecture comes from the pretrained generator, built in setup().
            self._pending = dict(state)
            return
        self._restore(state)

    def _restore(self, state: Mapping[str, torch.Tensor]) -> None:
        assert self.shadow is not None and self.optimizer is not None
        device = next(self.shadow.parameters()).device
        # Copies throughout: the optimizer and the memory update in place, and the caller's
        # state must stay what it was.
        self.shadow.load_state_dict({k[len("shadow."):]: v for k, v in state.items()
                                     if k.startswith("shadow.")})
        self.latents = state["latents"].to(device).clone()
        self.seen = state["seen"].bool().cpu().clone()
        self.memory = state["memory"].to(device).clone() if "memory" in state else None
        self.cam = state["cam"].to(device).clone() if "cam" in state else None
        self.signs = (state["signs"].to(device).float() if "signs" in state else None)
        self.permutation = (state["permutation"].to(device).clone() if "permutation" in state
                            else None)
        adam: dict[int, dict[str, torch.Tensor]] = {}
        for key, value in state.items():
            if key.startswith("adam."):
                _, i, name = key.split(".", 2)
                adam.setdefault(int(i), {})[name] = (value.cpu() if name == "step"
                                                     else value.to(device)).clone()
        if adam:
            saved = self.optimizer.state_dict()
            saved["state"] = adam
            self.optimizer.load_state_dict(saved)

    def summary(self) -> str:
        p = self.params
        budget = (f"target_psnr_db={p.target_psnr_db:g}" if p.budget == "psnr"
                  else f"w0={p.noise_rescale:g}")
        if p.budget == "psnr" and p.psnr_per_doubling_db:
            budget += f" +{p.psnr_per_doubling_db:g} dB per doubling of the hospital"

        variants = "".join(f", {k}={v}" for k, v, paper in (
            ("noise_sign", p.noise_sign, "positive"), ("noise_region", p.noise_region, "image"),
            ("placement", p.placement, "shadow")) if v != paper)
        return (f"shadow(final_round={p.shadow_final_round}, gan_rounds={p.gan_rounds}, "
                f"{budget}, perc_cam={p.perc_cam:g}{variants})")
