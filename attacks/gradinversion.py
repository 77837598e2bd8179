"""GradInversion / See through Gradients (Yin et al., CVPR 2021, https://arxiv.org/abs/2104.07586).

Optimise candidate images against gradient matching plus image priors, the strongest of
which on BatchNorm networks is the BatchNorm-statistics prior:

    min_x  a_grad * D(replay(x, y), Delta) + a_BN * R_BN(x) + a_TV * TV(x) + a_l2 * ||x||_2
           + a_group * R_group(x)

* ``D``: gradient matching on the replayed local training (:mod:`attacks.replay`), ``cosine``
  (Geiping et al.'s global cosine distance) or ``l2`` (the paper's squared distance, in
  gradient units: update / lr).
* ``R_BN`` (:mod:`attacks.bn_prior`): per BatchNorm layer, the distance between the
  candidates' batch mean/variance at the layer's input and the client batch's, first layer
  x10. The client's batch statistics are *read from its upload*: the running statistics move
  from ``r_0`` (sent) to ``r_T`` (received) by the momentum rule, which the server inverts
  (derivation in :mod:`attacks.bn_prior`; exact for one step, a matched step-weighted average
  for several). The threat model can withhold them (``attack.bn_statistics: withheld``); the
  attack then fails with ThreatModelError unless ``bn_reference: global`` (the global model's
  running statistics, breaching's reference) or ``bn_weight: 0``. If a defense sends the
  global buffers back unchanged (``dp`` with ``bn_buffers: withhold``), nothing can be read:
  the attack warns and falls back on the global reference.
* ``TV``: mean absolute forward differences (:func:`attacks.objectives.total_variation`);
  ``||x||_2``: the paper's l2 norm prior, per candidate set.
* **Group consistency** (``group_size`` G > 1): G seeds are optimised side by side. From
  ``group_start`` of the iterations on, every ``group_every`` iterations, each seed is
  *registered* to the group: its slots are matched to the consensus within classes of
  exchangeable slots (same label, same local steps; Hungarian on MSE), and each image is
  shifted by the integer translation within ``registration_shift`` pixels that fits the
  consensus best; the consensus ``E`` is the mean of the registered seeds and
  ``R_group = sum_g sum_k ||reg_g(x_g)_k - E_k||_2`` pulls every seed toward it (``E``
  constant). The paper registers with RANSAC-flow; integer translations (``torch.roll``) are
  the part of that a 32 px image needs. Candidates at the end: every seed and the consensus.

**Choosing the answer.** Every candidate (each seed of each restart, and each group's
consensus) is scored by the attack's own objective without the group term (which a single
candidate does not have); the lowest wins. Ground truth is never consulted.

**Labels.** Given by the threat model, else recovered from the last layer
(:mod:`attacks.label_recovery`). ``label_strategy: auto`` (iDLG for one image, the ``support``
rule for batches) is the default rather than the paper's ``yin`` rule, which assumes distinct
labels and was weaker on every setting measured there; ``yin`` stays available. With recovered
labels on a multi-step update, restart ``r`` tries the ``r``-th placement of the labels into
the steps (:func:`attacks.inverting_gradients.label_placements`).

**Optimizer.** Adam with a linear warm-up and cosine decay to 0 (breaching's
``seethroughgradients``), box projection after every step, and Langevin-style noise
``x += langevin_noise * lr_t * N(0, 1)`` after each step (NVFlare; the paper and breaching
add noise too).

**Defaults (deviations from the paper, measured).** Chosen on the project's default model
(ConvNet width 32 with BatchNorm, 32 px MNI152 slices, round 1, one SGD step, labels
recovered, 500 iterations, 3 random batches; PSNR dB / SSIM at 1 and 4 images):

* ``cost: cosine`` instead of the paper's squared L2: with L2 the attack reached only
  14.2 / 0.38 and 14.6 / 0.35 (grad weight 1e-2; 1e-3 and 1e-4 were worse), the cosine
  46.7 / 0.996 and 29.2 / 0.87.
* ``signed: true`` (Inverting Gradients' signed Adam; the paper uses plain Adam): 29.2 vs
  28.3 dB at 4 images, same at 1 image.
* ``bn_weight: 0.01`` (breaching 0.1, LeakPro 1e-2): with signed Adam and no noise, 0.01 /
  0.03 / 0.1 gave 27.5 / 24.2 / 20.7 dB at 4 images (unsigned: 0.003 / 0.01 / 0.03 / 0.1 gave
  25.3 / 26.0 / 26.3 / 24.2 dB). On smaller models (16 px, width 8-16) 0.03 does better.
* ``langevin_noise: 0.1`` (NVFlare 0.1): +1.7 dB at 4 images over no noise (signed);
  0.2 was worse (27.2 dB).
* ``tv_weight: 3e-2`` (Inverting Gradients' value here; the paper's 1e-4 scale is for
  ImageNet): 1e-2 and 1e-1 were worse at 4 images.
* ``group_size: 1``: 4 seeds gave 43.4 / 27.8 dB at 4x the time (vs 46.7 / 29.2 dB).
* ``iterations: 500`` instead of 20,000: ~6 s (1 image) and ~13 s (4 images) on 2 CPU cores.

For comparison, Inverting Gradients with its defaults: 18.6 / 0.57 and 17.5 / 0.58; this
attack with ``bn_weight: 0``: ~18.5 dB at 4 images, i.e. the BN prior makes the difference.
With the global running statistics as reference (``bn_reference: global``), round 1 gives
13.7 / 12.9 dB: the initial 0/1 statistics mislead the prior.
"""

from __future__ import annotations

import logging
import math
import time
import warnings
from typing import Annotated, Literal

import torch
from pydantic import Field
from torch.func import vmap

from attacks.base import Observation, Prior, Reconstruction, ThreatModelNeeds, register_attack
from attacks.bn_prior import (
    BatchNormRecorder,
    BatchNormReference,
    batchnorm_layers,
    bn_prior,
    reference_from_global,
    reference_from_update,
)
from attacks.inverting_gradients import label_placements
from attacks.label_recovery import LabelStrategy
from attacks.matching import (
    ImageInit,
    MatchingAttack,
    MatchingProblem,
    attack_device,
    prepare_matching,
)
from attacks.objectives import cosine_cost, l2_cost, total_variation
from fl_shadow.config import Bool, Float, Int, settings
from fl_shadow.progress import Progress

logger = logging.getLogger(__name__)


@settings
class GradInversionParams:
    """``attack.params`` of ``gradinversion`` (defaults measured: see the module docstring).

    Attributes:
        iterations: Adam steps per restart (paper/breaching: 20,000; LeakPro 8,000).
        lr: Adam learning rate in normalized pixel units (breaching: 0.1).
        cost: gradient matching ``cosine`` or ``l2`` (the paper's; update / lr units).
        grad_weight: ``a_grad``.
        bn_weight: ``a_BN`` (breaching 0.1, LeakPro 1e-2); 0 disables the prior and the need
            for BatchNorm statistics.
        first_bn_multiplier: extra weight of the first BatchNorm layer (breaching: 10).
        bn_reference: ``update`` (read from the client's running-statistics update; needs
            ``attack.bn_statistics: given``) or ``global`` (the global model's running stats).
        tv_weight: ``a_TV``.
        l2_weight: ``a_l2`` on ``||x||_2`` (paper's l2 prior; breaching 1e-6).
        group_size: seeds per group; 1 = no group consistency (LeakPro preset: 4).
        group_weight: ``a_group`` (LeakPro: 1e-2).
        group_start: fraction of ``iterations`` after which the consensus is built.
        group_every: iterations between consensus refreshes (GIAS/CENSOR: 100).
        registration_shift: largest translation in pixels tried when registering a seed to
            the consensus; 0 = slot matching only.
        restarts: independent groups; the best candidate over all wins.
        signed: take the sign of the image gradient before Adam (Inverting Gradients' trick;
            the paper: off).
        langevin_noise: std of the noise added after each step, relative to the current lr
            (NVFlare 0.1, LeakPro 0.2); 0 = none.
        warmup: linear warm-up iterations of the learning rate (breaching: 50).
        lr_schedule: ``cosine`` (decay to 0 after the warm-up) or ``constant``.
        boxed: clamp images to the valid normalized range after each step.
        init: ``randn`` or ``rand`` (uniform over the valid box).
        label_strategy: label recovery when the observation withholds labels, see the
            module docstring.
        require_labels: fail with ThreatModelError unless the threat model gives the labels.
        batch_seeds: optimise a group's seeds (``group_size`` > 1) as one stacked tensor, one
            vmapped replay per iteration (:meth:`attacks.replay.UpdateReplay.batched`, with
            each seed's BatchNorm statistics), instead of one seed after the other; the same
            trajectories up to float rounding (tested). Off, or with an adaptive attacker's
            defense model, one after the other.
        progress: a progress bar per restart on a terminal, else a log line every tenth.
    """

    iterations: Annotated[Int, Field(ge=1)] = 500
    lr: Annotated[Float, Field(gt=0)] = 0.1
    cost: Literal["cosine", "l2"] = "cosine"
    grad_weight: Annotated[Float, Field(gt=0)] = 1.0
    bn_weight: Annotated[Float, Field(ge=0)] = 0.01
    first_bn_multiplier: Annotated[Float, Field(ge=0)] = 10.0
    bn_reference: Literal["update", "global"] = "update"
    tv_weight: Annotated[Float, Field(ge=0)] = 3e-2
    l2_weight: Annotated[Float, Field(ge=0)] = 0.0
    group_size: Annotated[Int, Field(ge=1)] = 1
    group_weight: Annotated[Float, Field(ge=0)] = 1e-2
    group_start: Annotated[Float, Field(ge=0, lt=1)] = 0.5
    group_every: Annotated[Int, Field(ge=1)] = 50
    registration_shift: Annotated[Int, Field(ge=0)] = 1
    restarts: Annotated[Int, Field(ge=1)] = 1
    signed: Bool = True
    langevin_noise: Annotated[Float, Field(ge=0)] = 0.1
    warmup: Annotated[Int, Field(ge=0)] = 50
    lr_schedule: Literal["cosine", "constant"] = "cosine"
    boxed: Bool = True
    init: ImageInit = "randn"
    label_strategy: LabelStrategy = "auto"
    require_labels: Bool = False
    batch_seeds: Bool = True
    progress: Bool = True


def gradinversion_needs(params: GradInversionParams) -> ThreatModelNeeds:
    """Labels with ``require_labels``; the client's BatchNorm statistics when the BN prior is
    on and reads them from the update."""
    return ThreatModelNeeds(
        labels="attack.params.require_labels is true" if params.require_labels else None,
        bn_statistics=("attack.params.bn_reference is 'update' (with bn_weight > 0)"
                       if params.bn_weight > 0 and params.bn_reference == "update" else None))


@register_attack("gradinversion", GradInversionParams, max_images=16, needs=gradinversion_needs)
class GradInversion(MatchingAttack):
    """Gradient matching + BatchNorm-statistics, TV, l2 and group priors (Yin et al. 2021).

    Constructed as ``GradInversion(params, device=..., seed=...)`` (:class:`MatchingAttack`);
    the seed also drives the Langevin noise.
    """

    name = "gradinversion"
    params: GradInversionParams

    def summary(self) -> str:
        p = self.params
        return (f"gradinversion(iterations={p.iterations}, lr={p.lr}, cost={p.cost}, "
                f"bn_weight={p.bn_weight} ({p.bn_reference}), tv_weight={p.tv_weight}, "
                f"group_size={p.group_size}, restarts={p.restarts}, seed={self.seed})")

    # ----------------------------------------------------------------------------------------
    def reconstruct(self, observation: Observation, prior: Prior) -> Reconstruction:
        """Reconstruct the images behind one client update.

        Returns:
            images ``(K, C, H, W)`` in [0, 1] and the labels ``(K,)`` of the same slots;
            ``loss`` = the winning candidate's objective (without the group term).

        Raises:
            ThreatModelError: the threat model withholds what :attr:`needs` asks for, or the
                upload does not fit the architecture.
            ValueError: given labels of the wrong shape.
        """
        start = time.perf_counter()
        p = self.params
        problem = prepare_matching(self.name, observation, prior,
                                   device=attack_device(observation, self.device),
                                   needs=self.needs,
                                   label_strategy=p.label_strategy, seed=self.seed)
        labels = problem.labels
        assert labels is not None  # a label strategy is given
        reference = self._reference(problem, observation)
        generator = torch.Generator().manual_seed(self.seed)
        placements = (label_placements(labels, problem.replay.slots, p.restarts, generator)
                      if problem.labels_recovered else [labels])
        objective = _Objective(problem, reference, p, observation.training.lr)

        best_x, best_labels, best_score, best_candidate = None, labels, math.inf, -1
        scores: list[float] = []
        for restart in range(p.restarts):
            t0 = time.perf_counter()
            trial_labels = placements[restart % len(placements)]
            candidates = self._optimise(problem, objective, trial_labels, generator,
                                        desc=f"GI restart {restart + 1}/{p.restarts}")
            restart_scores = [objective.score(c, trial_labels) for c in candidates]
            score = min(restart_scores)
            scores.append(score)
            logger.info("gradinversion restart %d/%d: objective %.5g (best of %d candidates; "
                        "%.1f s, %d images, %d local steps)", restart + 1, p.restarts, score,
                        len(candidates), time.perf_counter() - t0, problem.num_images,
                        problem.replay.num_steps)
            if best_x is None or score < best_score:
                best_candidate = restart_scores.index(score)
                best_x = candidates[best_candidate]
                best_labels, best_score = trial_labels, score
        assert best_x is not None  # restarts >= 1
        info = {f"restart_{i}_objective": s for i, s in enumerate(scores)}
        info.update(labels_recovered=float(problem.labels_recovered),
                    num_local_steps=float(problem.replay.num_steps),
                    bn_reference={"update": 1.0, "global": 0.0}.get(
                        reference.source if reference else "", -1.0),
                    best_restart=float(scores.index(best_score)) if math.isfinite(best_score)
                    else -1.0,
                    best_candidate=float(best_candidate))
        return Reconstruction(images=problem.to_images(best_x), labels=best_labels.cpu(),
                              loss=best_score, iterations=p.iterations * p.restarts,
                              seconds=time.perf_counter() - start, info=info)

    # ----------------------------------------------------------------------------------------
    def _reference(self, problem: MatchingProblem,
                   observation: Observation) -> BatchNormReference | None:
        p = self.params
        if p.bn_weight == 0:
            return None
        model, steps = problem.model, problem.replay.num_steps
        if not batchnorm_layers(model):
            warnings.warn("gradinversion: bn_weight > 0 but the architecture has no "
                          "BatchNorm layer; the BN prior is off", stacklevel=3)
            return None
        if p.bn_reference == "update":
            reference = reference_from_update(model, observation.global_state,
                                              observation.client_state, steps,
                                              device=problem.device)
            if reference is not None:
                self._check_step_count(model, observation, steps)
                return reference
            logger.warning("gradinversion: the client's BatchNorm running statistics did not "
                           "move (a defense sent the global ones back); using the global "
                           "model's running statistics as the BN reference")
        return reference_from_global(model, observation.global_state, steps,
                                     device=problem.device)

    @staticmethod
    def _check_step_count(model: torch.nn.Module, observation: Observation,
                          steps: int) -> None:
        """Warn when ``num_batches_tracked`` says the client ran another number of train-mode
        forwards than the plan's steps (the reference then mixes other batches)."""
        name = batchnorm_layers(model)[0][0]
        key = f"{name}.num_batches_tracked"
        if key in observation.client_state and key in observation.global_state:
            moved = int(observation.client_state[key]) - int(observation.global_state[key])
            if moved != steps:
                logger.warning("gradinversion: BatchNorm counted %d forwards, the plan has %d "
                               "local steps; the BN reference is approximate", moved, steps)

    def _optimise(self, problem: MatchingProblem, objective: _Objective,
                  labels: torch.Tensor, generator: torch.Generator, *,
                  desc: str) -> list[torch.Tensor]:
        """One restart: ``group_size`` seeds side by side; returns the candidates."""
        p = self.params
        starts = problem.init_images(p.init, generator, num=p.group_size)
        if p.batch_seeds and p.group_size > 1 and problem.replay.defense is None:
            return self._optimise_batched(problem, objective, labels, generator, starts,
                                          desc=desc)
        seeds = [x.clone().requires_grad_(True) for x in starts]
        optimizer = torch.optim.Adam(seeds, lr=p.lr)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, self._lr_factor)
        group = (SeedGroup(labels, problem.replay.slots, p.registration_shift)
                 if p.group_size > 1 else None)
        group_from = int(p.group_start * p.iterations)
        progress = Progress(p.iterations, desc, logger, enabled=p.progress)
        for it in progress:
            if group is not None and it >= group_from and (it - group_from) % p.group_every == 0:
                group.refresh([x.detach() for x in seeds])
            costs = []
            for g, x in enumerate(seeds):
                loss, cost = objective(x, labels)
                if group is not None and group.consensus is not None and p.group_weight:
                    loss = loss + p.group_weight * group.distance(x, g)
                if not torch.isfinite(loss):
                    logger.warning("gradinversion: objective became %s; stopping this restart",
                                   float(loss))
                    return [s.detach() for s in seeds]
                (grad,) = torch.autograd.grad(loss, x)
                x.grad = grad.sign() if p.signed else grad
                costs.append(cost.detach())
            optimizer.step()
            lr_now = optimizer.param_groups[0]["lr"]
            scheduler.step()
            with torch.no_grad():
                for x in seeds:
                    if p.langevin_noise:
                        noise = torch.randn(x.shape, generator=generator).to(x.device)
                        x.add_(p.langevin_noise * lr_now * noise)
                    if p.boxed:
                        problem.clamp_(x)
            progress.report(cost=min(costs))
        candidates = [s.detach() for s in seeds]
        if group is not None:
            group.refresh(candidates)
            assert group.consensus is not None  # refresh builds it
            candidates.append(group.consensus)
        return candidates

    def _optimise_batched(self, problem: MatchingProblem, objective: _Objective,
                          labels: torch.Tensor, generator: torch.Generator,
                          starts: torch.Tensor, *, desc: str) -> list[torch.Tensor]:
        """:meth:`_optimise` with the seeds stacked ``(G, K, C, H, W)``: one vmapped replay per
        iteration for all of them (each seed its own parameters and BatchNorm statistics).
        Adam, the signed gradient, the box and the schedule are elementwise or shared, and the
        Langevin noise is drawn seed by seed in the same order, so each seed follows the
        trajectory it follows in :meth:`_optimise` up to float rounding."""
        p = self.params
        x = starts.clone().requires_grad_(True)
        optimizer = torch.optim.Adam([x], lr=p.lr)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, self._lr_factor)
        group = SeedGroup(labels, problem.replay.slots, p.registration_shift)
        group_from = int(p.group_start * p.iterations)
        progress = Progress(p.iterations, desc, logger, enabled=p.progress)
        for it in progress:
            if it >= group_from and (it - group_from) % p.group_every == 0:
                group.refresh(list(x.detach().unbind(0)))
            losses, costs = objective.batched(x, labels)
            if group.consensus is not None and p.group_weight:
                losses = losses + p.group_weight * torch.stack(
                    [group.distance(x[g], g) for g in range(len(x))])
            if not bool(torch.isfinite(losses).all()):
                logger.warning("gradinversion: objective became %s; stopping this restart",
                               float(losses[~torch.isfinite(losses)][0]))
                return list(x.detach().unbind(0))
            (grad,) = torch.autograd.grad(losses.sum(), x)
            x.grad = grad.sign() if p.signed else grad
            optimizer.step()
            lr_now = optimizer.param_groups[0]["lr"]
            scheduler.step()
            with torch.no_grad():
                for seed in x:
                    if p.langevin_noise:
                        noise = torch.randn(seed.shape, generator=generator).to(seed.device)
                        seed.add_(p.langevin_noise * lr_now * noise)
                    if p.boxed:
                        problem.clamp_(seed)
            progress.report(cost=costs.detach().min())
        candidates = list(x.detach().unbind(0))
        group.refresh(candidates)
        assert group.consensus is not None  # refresh builds it
        candidates.append(group.consensus)
        return candidates

    def _lr_factor(self, it: int) -> float:
        p = self.params
        warm = min(1.0, (it + 1) / p.warmup) if p.warmup else 1.0
        if p.lr_schedule == "constant":
            return warm
        return warm * 0.5 * (1 + math.cos(math.pi * min(it, p.iterations) / p.iterations))


class _Objective:
    """The per-candidate-set objective (no group term) and its score."""

    def __init__(self, problem: MatchingProblem, reference: BatchNormReference | None,
                 params: GradInversionParams, client_lr: float) -> None:
        self.problem = problem
        self.reference = reference
        self.params = params
        self.scale = 1.0 / client_lr ** 2  # l2 in gradient units
        self.recorder = BatchNormRecorder(problem.model)

    def __call__(self, x: torch.Tensor, labels: torch.Tensor, *,
                 create_graph: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
        """``(objective, matching cost)`` of candidates ``x`` ``(K, C, H, W)``."""
        p, problem = self.params, self.problem
        with self.recorder.recording():
            trial = problem.replay(x, labels, create_graph=create_graph)
        if p.cost == "cosine":
            cost = cosine_cost(trial, problem.target)
        else:
            cost = l2_cost(trial, problem.target) * self.scale
        loss = p.grad_weight * cost
        if self.reference is not None:
            statistics = self.recorder.averaged(self.reference)
            if not create_graph:
                statistics = [(m.detach(), v.detach()) for m, v in statistics]
            loss = loss + p.bn_weight * bn_prior(statistics, self.reference,
                                                 first_multiplier=p.first_bn_multiplier)
        if p.tv_weight:
            loss = loss + p.tv_weight * total_variation(x)
        if p.l2_weight:
            loss = loss + p.l2_weight * x.norm()
        return loss, cost

    def batched(self, x: torch.Tensor, labels: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(objectives, matching costs)``, ``(G,)`` each, of ``G`` candidate sets ``x``
        ``(G, K, C, H, W)`` with the same ``labels`` ``(K,)``: :meth:`__call__` of each set,
        in one vmapped replay."""
        p, problem = self.params, self.problem
        sets = labels.expand(len(x), *labels.shape)
        with self.recorder.recording():
            trial = problem.replay.batched(x, sets, create_graph=True,
                                           recorder=self.recorder if self.reference else None)
        if p.cost == "cosine":
            cost = vmap(lambda t: cosine_cost(t, problem.target))(trial)
        else:
            cost = vmap(lambda t: l2_cost(t, problem.target))(trial) * self.scale
        loss = p.grad_weight * cost
        if self.reference is not None:
            loss = loss + p.bn_weight * bn_prior(self.recorder.averaged(self.reference),
                                                 self.reference,
                                                 first_multiplier=p.first_bn_multiplier)
        if p.tv_weight:
            loss = loss + p.tv_weight * vmap(total_variation)(x)
        if p.l2_weight:
            loss = loss + p.l2_weight * x.flatten(1).norm(dim=1)
        return loss, cost

    def score(self, x: torch.Tensor, labels: torch.Tensor) -> float:
        """The objective of final candidates, as a float (inf when not finite)."""
        loss, _ = self(x.detach(), labels, create_graph=False)
        value = float(loss.detach())
        return value if math.isfinite(value) else math.inf


class SeedGroup:
    """Registration of seeds to their consensus (group consistency).

    Slots are exchangeable when they carry the same label and enter the same local steps;
    each seed's slots are matched to the consensus within such classes (Hungarian on the
    Euclidean distance), then each image is shifted by the integer translation within
    ``max_shift`` pixels that fits the consensus best.

    Args:
        labels: ``(K,)`` the slots' labels.
        slots: slot indices of each local step (:attr:`attacks.replay.UpdateReplay.slots`).
        max_shift: largest translation tried, in pixels (0: none).

    Attributes:
        consensus: ``(K, C, H, W)`` mean of the registered seeds (None until
            :meth:`refresh`).
    """

    def __init__(self, labels: torch.Tensor, slots: list[torch.Tensor], max_shift: int) -> None:
        num = len(labels)
        steps_of = [tuple(t for t, idx in enumerate(slots) if k in idx.tolist())
                    for k in range(num)]
        signature = [(int(labels[k]), steps_of[k]) for k in range(num)]
        self.classes = [[k for k in range(num) if signature[k] == s]
                        for s in dict.fromkeys(signature)]
        self.max_shift = max_shift
        self.consensus: torch.Tensor | None = None
        self.perms: list[torch.Tensor] = []
        self.shifts: list[list[tuple[int, int]]] = []

    def refresh(self, seeds: list[torch.Tensor]) -> None:
        """Register every seed to the consensus (first time: to seed 0) and average."""
        anchor = self.consensus if self.consensus is not None else seeds[0]
        self.perms, self.shifts = [], []
        for x in seeds:
            perm = self._match(x, anchor)
            shifts = [self._best_shift(x[perm[k]], anchor[k]) for k in range(len(perm))]
            self.perms.append(perm)
            self.shifts.append(shifts)
        with torch.no_grad():
            self.consensus = torch.stack([self.register(x, g) for g, x in enumerate(seeds)]
                                         ).mean(dim=0)

    def register(self, x: torch.Tensor, g: int) -> torch.Tensor:
        """Seed ``g``'s candidates in the consensus' slot order and position
        (differentiable in ``x``)."""
        moved = x[self.perms[g]]
        return torch.stack([torch.roll(moved[k], shifts=self.shifts[g][k], dims=(-2, -1))
                            for k in range(len(moved))])

    def distance(self, x: torch.Tensor, g: int) -> torch.Tensor:
        """``sum_k ||reg_g(x)_k - E_k||_2``."""
        assert self.consensus is not None  # only called once built
        return (self.register(x, g) - self.consensus).flatten(1).norm(dim=1).sum()

    def _match(self, x: torch.Tensor, anchor: torch.Tensor) -> torch.Tensor:
        """Slot permutation ``perm`` with ``x[perm[k]]`` ~ ``anchor[k]`` within classes."""
        # Imported here: scipy.optimize costs ~0.5 s at import, and the federation builder loads
        # every attack in every Flower process, most of which never run this one.
        from scipy.optimize import linear_sum_assignment

        perm = torch.arange(len(x))
        for members in self.classes:
            if len(members) < 2:
                continue
            idx = torch.tensor(members)
            cost = torch.cdist(anchor[idx].flatten(1), x[idx].flatten(1)).cpu().numpy()
            rows, cols = linear_sum_assignment(cost)
            perm[idx[rows]] = idx[cols]
        return perm.to(x.device)

    def _best_shift(self, image: torch.Tensor, anchor: torch.Tensor) -> tuple[int, int]:
        s = self.max_shift
        options = [(dy, dx) for dy in range(-s, s + 1) for dx in range(-s, s + 1)]
        errors = [float((torch.roll(image, shifts=o, dims=(-2, -1)) - anchor).pow(2).mean())
                  for o in options]
        return options[errors.index(min(errors))]


__all__ = ["GradInversion", "GradInversionParams", "SeedGroup"]
