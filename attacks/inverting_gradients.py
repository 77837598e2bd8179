"""Inverting Gradients (Geiping et al., NeurIPS 2020, https://arxiv.org/abs/2003.14053).

Optimise candidate images so that the update they would produce matches the observed one:

    min_x  cosine_cost(replay(x, y), Delta) + tv_weight * TV(x)

with Adam on *signed* gradients, a box constraint to the valid normalized pixel range after every
step, step decay of the learning rate at 3/8, 5/8 and 7/8 of the iterations, and random restarts
of which the one with the lowest matching cost (the attack's own loss, never ground truth) is
kept. ``replay`` simulates the client's local training (:mod:`attacks.replay`): one SGD step is
the single-gradient threat model, several steps the FedAvg setting of the paper's Sec. 6.

Labels come from the observation when the threat model hands them over, else from the last
layer's update (:mod:`attacks.label_recovery`: iDLG for one image, the weight-sign ``support``
rule for batches); the paper optimises soft labels jointly instead when B > 1 and labels are
unknown.

Defaults are sized for CPU runs (hundreds of iterations, not the paper's 24,000); see
:class:`InvertingGradientsParams`.
"""

from __future__ import annotations

import itertools
import logging
import math
import time
from collections.abc import Callable, Iterator
from typing import Annotated, Any, Literal

import torch
from pydantic import Field

from attacks.base import Observation, Prior, Reconstruction, register_attack
from attacks.matching import (
    MatchingAttack,
    MatchingProblem,
    attack_device,
    prepare_matching,
)
from attacks.objectives import cosine_cost, l2_cost, layer_weights, total_variation
from attacks.replay import UpdateReplay
from fl_shadow.config import Bool, Float, Int, settings
from fl_shadow.progress import Progress

logger = logging.getLogger(__name__)


@settings
class InvertingGradientsParams:
    """``attack.params`` of ``inverting_gradients``.

    Defaults were measured on a 2-core CPU with the ConvNet (width 32, BatchNorm) on 32x32
    grayscale images (see the module's tests and the attack notes in the project report).

    Attributes:
        iterations: optimisation steps per restart (paper: 24,000). 500 here: ~7 s at batch 1
            (13-18 ms/iteration) and ~12 s at batch 4 (~25 ms/iteration) on an idle 2-core
            CPU; mean PSNR/SSIM 23.2 dB/0.84 (6 images, batch 1) and 23.7 dB/0.85 (2 batches of
            4), single gradient, labels recovered, untrained model. ResNet-18 at 32 px:
            ~0.3 s/iteration.
        lr: Adam learning rate on the (signed) image gradient, in normalized pixel units.
        tv_weight: weight of the total-variation prior (IG-style mean absolute differences,
            in normalized units); 3e-2 was best of 1e-3..1 at 300-800 iterations.
        restarts: independent random initialisations; the lowest matching cost wins. With
            recovered labels on a multi-step update whose steps see different images, restart
            ``r`` also tries the ``r``-th distinct placement of the labels into the steps (a
            summed update does not say which label was in which step; see
            :func:`label_placements`).
        cost: ``cosine`` (the paper's global cosine distance) or ``l2`` (squared distance, needs
            the client's exact lr to be meaningful).
        layer_weighting: per-layer weights of the cost: ``equal``, ``linear`` or ``exp``.
        signed: replace the image gradient by its sign before the Adam step (paper: on).
        boxed: clamp images to the valid normalized range after each step.
        lr_schedule: ``multistep`` (x0.1 at 3/8, 5/8, 7/8 of ``iterations``) or ``constant``.
        init: initial images: ``randn`` (standard normal in normalized space) or ``rand``
            (uniform over the valid range).
        label_strategy: label recovery when the observation withholds labels: ``auto`` (iDLG
            for one image, else ``support``), ``idlg``, ``support``, ``bias_corrected`` or
            ``yin`` (see :mod:`attacks.label_recovery`).
        require_labels: fail with ThreatModelError unless the observation carries labels.
        batch_restarts: run the restarts as one optimisation over a stacked ``(R, K, C, H,
            W)`` tensor (:meth:`attacks.replay.UpdateReplay.batched`: per-restart parameters
            and BatchNorm statistics under ``torch.func.vmap``) instead of one after the
            other. Each restart follows the trajectory it follows alone (Adam and the box are
            elementwise, the schedule is shared) up to float rounding, and the winner is still
            the lowest matching cost. It pays where one candidate set leaves the CPU waiting
            on many small kernels: measured (``experiments/attack_speed_benchmark.py``, 4
            restarts, 1 thread, default model) ~1.45x the restart-iterations per second of
            one after the other at 1 image, ~1.1x at 4 images. Off, or with an adaptive
            attacker's defense model (whose hooks see one set at a time), restarts run one
            after the other.
        compile: trace each iteration's objective and image gradient into one graph with
            :func:`torch.compile` (through :meth:`attacks.replay.UpdateReplay.pure`; restarts
            then run one after the other through the same compiled function: compiling the
            batched restarts measured slower). Same trajectory up to float rounding. Measured
            (same benchmark) ~2.2x the restart-iterations per second of the uncompiled path
            at 1 image and ~1.4x at 4 images once compiled. Compiling costs ~50-60 s the
            first time on a 2-core CPU; inductor's disk cache brings a new process to a few
            seconds, and later attacks of the same shapes and params in the same process
            compile nothing. So it pays for long attacks or many attacks per process, not a
            single 500-iteration one. Off by default; falls back to the uncompiled path,
            with a warning, when compiling fails or a defense model is set.
        progress: report progress: a tqdm bar per restart (one for all batched restarts) on a
            terminal, otherwise a log line every tenth of the iterations. A log line per
            restart is always written.
    """

    iterations: Annotated[Int, Field(ge=1)] = 500
    lr: Annotated[Float, Field(gt=0)] = 0.1
    tv_weight: Annotated[Float, Field(ge=0)] = 3e-2
    restarts: Annotated[Int, Field(ge=1)] = 1
    cost: Literal["cosine", "l2"] = "cosine"
    layer_weighting: Literal["equal", "linear", "exp"] = "equal"
    signed: Bool = True
    boxed: Bool = True
    lr_schedule: Literal["multistep", "constant"] = "multistep"
    init: Literal["randn", "rand"] = "randn"
    label_strategy: Literal["auto", "idlg", "support", "bias_corrected", "yin"] = "auto"
    require_labels: Bool = False
    batch_restarts: Bool = True
    compile: Bool = False
    progress: Bool = True


class _FirstCallTimed:
    """A callable that remembers how long its first call took (compiling happens there)."""

    def __init__(self, function: Callable[..., Any]) -> None:
        self.function = function
        self.first_seconds: float | None = None

    def __call__(self, *args: Any) -> Any:
        if self.first_seconds is not None:
            return self.function(*args)
        start = time.perf_counter()
        out = self.function(*args)
        self.first_seconds = time.perf_counter() - start
        return out


def lr_milestones(iterations: int) -> list[int]:
    """Decay steps of the paper's schedule: ``floor(T/2.667), floor(T/1.6), floor(T/1.142)``."""
    return [int(iterations / 2.667), int(iterations / 1.6), int(iterations / 1.142)]


@register_attack("inverting_gradients", InvertingGradientsParams, max_images=16)
class InvertingGradients(MatchingAttack):
    """Cosine gradient matching with a TV prior (Geiping et al. 2020).

    Constructed as ``InvertingGradients(params, device=..., seed=...)``
    (:class:`~attacks.matching.MatchingAttack`: also its threat-model ``needs``).
    """

    name = "inverting_gradients"
    params: InvertingGradientsParams

    def summary(self) -> str:
        p = self.params
        return (f"inverting_gradients(iterations={p.iterations}, lr={p.lr}, "
                f"tv_weight={p.tv_weight}, restarts={p.restarts}, cost={p.cost}, "
                f"signed={p.signed}, seed={self.seed})")

    # ----------------------------------------------------------------------------------------
    def reconstruct(self, observation: Observation, prior: Prior) -> Reconstruction:
        """Reconstruct the images behind one client update.

        Given labels (``observation.labels``) are read per candidate slot: for a multi-step
        update they must follow the client's step order (batch after batch), as the replay
        assigns slots to steps in order (:mod:`attacks.replay`). For a single step any order
        works.

        Returns:
            images ``(K, C, H, W)`` in [0, 1] and the labels ``(K,)`` of the same slots.

        Raises:
            ThreatModelError: ``require_labels`` is set and the observation has no labels, or
                the observation lacks a parameter of the architecture.
            ValueError: labels of the wrong shape.
        """
        start = time.perf_counter()
        p = self.params
        problem = prepare_matching(self.name, observation, prior,
                                   device=attack_device(observation, self.device),
                                   needs=self.needs,
                                   label_strategy=p.label_strategy, seed=self.seed)
        labels, recovered, replay = problem.labels, problem.labels_recovered, problem.replay
        assert labels is not None  # a label strategy is given
        target = problem.target
        weights = layer_weights(len(target), p.layer_weighting, device=problem.device)
        generator = torch.Generator().manual_seed(self.seed)

        # A summed update does not say which recovered label sat in which step: restarts try
        # distinct placements (restart 0: sorted labels in step order).
        placements = (label_placements(labels, replay.slots, p.restarts, generator)
                      if recovered else [labels])
        # All starts drawn first, in restart order (the same numbers one after the other).
        starts = [problem.init_images(p.init, generator) for _ in range(p.restarts)]
        trials = [placements[r % len(placements)] for r in range(p.restarts)]
        compiled = self._compiled_step(problem, weights) if p.compile else None
        if p.batch_restarts and p.restarts > 1 and replay.defense is None and compiled is None:
            t0 = time.perf_counter()
            finals = self._optimise_batched(torch.stack(starts), torch.stack(trials), problem,
                                            weights, desc=f"IG {p.restarts} restarts")
            seconds = [(time.perf_counter() - t0) / p.restarts] * p.restarts
        else:
            finals, seconds = [], []
            for restart in range(p.restarts):
                t0 = time.perf_counter()
                finals.append(self._optimise(starts[restart], trials[restart], problem, weights,
                                             desc=f"IG restart {restart + 1}/{p.restarts}",
                                             compiled=compiled))
                seconds.append(time.perf_counter() - t0)
        best_x, best_labels = None, labels
        best_score = math.inf
        scores: list[float] = []
        for restart, (x, trial_labels) in enumerate(zip(finals, trials, strict=True)):
            score = self._score(x, trial_labels, replay, target, weights)
            scores.append(score)
            logger.info("inverting_gradients restart %d/%d: matching cost %.5f (%.1f s, %d "
                        "images, %d local steps)", restart + 1, p.restarts, score,
                        seconds[restart], problem.num_images, replay.num_steps)
            if best_x is None or score < best_score:
                best_x, best_labels, best_score = x, trial_labels, score
        assert best_x is not None  # restarts >= 1
        labels = best_labels

        images = problem.to_images(best_x)
        info = {f"restart_{i}_cost": s for i, s in enumerate(scores)}
        info.update(labels_recovered=float(recovered), num_local_steps=float(replay.num_steps),
                    best_restart=float(scores.index(best_score)) if math.isfinite(best_score)
                    else -1.0)
        if isinstance(compiled, _FirstCallTimed) and compiled.first_seconds is not None:
            info["compile_seconds"] = compiled.first_seconds  # the first step, compiling
        return Reconstruction(images=images, labels=labels.cpu(), loss=best_score,
                              iterations=p.iterations * p.restarts,
                              seconds=time.perf_counter() - start, info=info)

    # ----------------------------------------------------------------------------------------
    def _cost(self, trial: list[torch.Tensor], target: list[torch.Tensor],
              weights: torch.Tensor) -> torch.Tensor:
        if self.params.cost == "cosine":
            return cosine_cost(trial, target, weights)
        return l2_cost(trial, target, weights)

    def _start(self, x0: torch.Tensor) -> tuple[torch.Tensor, torch.optim.Adam,
                                                 torch.optim.lr_scheduler.MultiStepLR]:
        """The candidate (a copy of ``x0`` with a gradient), its Adam and the step schedule
        (:func:`lr_milestones`: the rate divided by 10 three times) or none."""
        p = self.params
        x = x0.clone().requires_grad_(True)
        optimizer = torch.optim.Adam([x], lr=p.lr)
        milestones = lr_milestones(p.iterations) if p.lr_schedule == "multistep" else []
        return x, optimizer, torch.optim.lr_scheduler.MultiStepLR(
            optimizer, milestones=milestones, gamma=0.1)

    def _optimise(self, x0: torch.Tensor, labels: torch.Tensor, problem: MatchingProblem,
                  weights: torch.Tensor, *, desc: str,
                  compiled: Callable[..., Any] | None = None) -> torch.Tensor:
        p = self.params
        replay, target = problem.replay, problem.target
        x, optimizer, scheduler = self._start(x0)
        progress = Progress(p.iterations, desc, logger, enabled=p.progress)
        for _ in progress:
            if compiled is not None:
                compiled, grad, objective, cost = self._run_compiled(compiled, x, labels)
            if compiled is None:
                cost = self._cost(replay(x, labels, create_graph=True), target, weights)
                objective = cost + p.tv_weight * total_variation(x) if p.tv_weight else cost
            if not torch.isfinite(objective):
                logger.warning("inverting_gradients: objective became %s; stopping this restart",
                               float(objective))
                break
            if compiled is None:
                (grad,) = torch.autograd.grad(objective, x)
            x.grad = grad.sign() if p.signed else grad
            optimizer.step()
            scheduler.step()
            if p.boxed:
                problem.clamp_(x)
            progress.report(cost=cost.detach())
        return x.detach()

    def _compiled_step(self, problem: MatchingProblem, weights: torch.Tensor
                       ) -> Callable[..., Any] | None:
        """``step(x, labels) -> (image gradient, (objective, cost))``, compiled (lazily, on
        the first call); None when a defense model is set."""
        if problem.replay.defense is not None:
            logger.warning("inverting_gradients: compile does not cover the adaptive "
                           "attacker's defense model; running uncompiled")
            return None
        p, replay, target = self.params, problem.replay, problem.target
        replay.pure_model()  # built here, not while tracing

        def objective(x: torch.Tensor, labels: torch.Tensor
                      ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
            cost = self._cost(replay.pure(x, labels), target, weights)
            value = cost + p.tv_weight * total_variation(x) if p.tv_weight else cost
            return value, (value, cost)

        return _FirstCallTimed(torch.compile(torch.func.grad_and_value(objective, has_aux=True),
                                             dynamic=False))

    @staticmethod
    def _run_compiled(compiled: Callable[..., Any], x: torch.Tensor, labels: torch.Tensor
                      ) -> tuple[Callable[..., Any] | None, torch.Tensor | None,
                                 torch.Tensor | None, torch.Tensor | None]:
        """One compiled step; ``(None, ...)`` (run uncompiled from now on) if it fails."""
        try:
            grad, (_, (objective, cost)) = compiled(x.detach(), labels)
        except Exception as exc:  # noqa: BLE001 (any compiler failure: fall back)
            logger.warning("inverting_gradients: torch.compile failed (%s: %s); running "
                           "uncompiled", type(exc).__name__, str(exc).splitlines()[0][:200])
            return None, None, None, None
        return compiled, grad, objective, cost

    def _optimise_batched(self, x0: torch.Tensor, labels: torch.Tensor,
                          problem: MatchingProblem, weights: torch.Tensor, *,
                          desc: str) -> list[torch.Tensor]:
        """:meth:`_optimise` for ``R`` restarts at once: ``x0`` ``(R, K, C, H, W)``, labels
        ``(R, K)``; returns the ``R`` final candidate sets.

        The objectives are summed over restarts for one backward pass; the restarts share no
        tensor, so each one's image gradient is its own objective's. A restart whose objective
        turns non-finite keeps the images it had then (as :meth:`_optimise` stops there) while
        the others go on.
        """
        p = self.params
        replay, target = problem.replay, problem.target
        x, optimizer, scheduler = self._start(x0)

        def objective(trial: list[torch.Tensor], images: torch.Tensor
                      ) -> tuple[torch.Tensor, torch.Tensor]:
            cost = self._cost(trial, target, weights)
            return (cost + p.tv_weight * total_variation(images) if p.tv_weight else cost), cost

        per_restart = torch.func.vmap(objective)
        stopped: dict[int, torch.Tensor] = {}
        progress = Progress(p.iterations, desc, logger, enabled=p.progress)
        for _ in progress:
            objectives, costs = per_restart(replay.batched(x, labels, create_graph=True), x)
            finite = torch.isfinite(objectives.detach())
            for r in (~finite).nonzero().flatten().tolist():
                if r not in stopped:
                    logger.warning("inverting_gradients: objective of restart %d became %s; "
                                   "stopping this restart", r + 1, float(objectives[r]))
                    stopped[r] = x[r].detach().clone()
            if len(stopped) == len(x):
                break
            live = torch.where(finite, objectives, torch.zeros_like(objectives))
            (grad,) = torch.autograd.grad(live.sum(), x)
            x.grad = grad.sign() if p.signed else grad
            optimizer.step()
            scheduler.step()
            if p.boxed:
                problem.clamp_(x)
            with torch.no_grad():
                for r, frozen in stopped.items():
                    x[r] = frozen
            progress.report(cost=costs.detach()[finite].min())
        return list(x.detach().unbind(0))

    def _score(self, x: torch.Tensor, labels: torch.Tensor, replay: UpdateReplay,
               target: list[torch.Tensor], weights: torch.Tensor) -> float:
        """Matching cost of the final images (no prior term), as the paper scores restarts."""
        trial = replay(x, labels, create_graph=False)
        score = float(self._cost([t.detach() for t in trial], target, weights))
        return score if math.isfinite(score) else math.inf


def label_placements(labels: torch.Tensor, slots: list[torch.Tensor], limit: int,
                     generator: torch.Generator) -> list[torch.Tensor]:
    """Up to ``limit`` distinct ways to seat a label multiset in the replay's slots.

    Only which labels share a step matters (slots within a step are exchangeable), so the
    placements are enumerated per step group: the first puts the sorted labels in step order,
    the next ones follow in lexicographic order of the groups' contents. When the steps' slot
    groups do not partition the slots (a batch larger than the candidate set), random
    permutations are drawn instead.

    Args:
        labels: ``(K,)`` recovered labels.
        slots: slot indices per step (:attr:`attacks.replay.UpdateReplay.slots`).
        limit: how many placements at most (>= 1).
        generator: for the random fallback.

    Returns:
        1 to ``limit`` tensors ``(K,)``, all distinct up to reordering within a step.

    Example:
        >>> slots = [torch.tensor([0, 1]), torch.tensor([2, 3])]
        >>> [p.tolist() for p in label_placements(torch.tensor([5, 1, 3, 3]), slots, 9,
        ...                                       torch.Generator())]
        [[1, 3, 3, 5], [1, 5, 3, 3], [3, 3, 1, 5], [3, 5, 1, 3]]
    """
    groups: list[list[int]] = []
    for step in slots:
        group = sorted(step.tolist())
        if group not in groups:
            groups.append(group)
    num = len(labels)
    values = sorted(labels.tolist())
    if sorted(i for g in groups for i in g) != list(range(num)):
        out = [torch.tensor(values, dtype=torch.long, device=labels.device)]
        out += [out[0][torch.randperm(num, generator=generator).to(labels.device)]
                for _ in range(limit - 1)]
        return out

    def place(remaining: list[int], index: int) -> Iterator[list[tuple[int, ...]]]:
        if index == len(groups):
            yield []
            return
        seen: set[tuple[int, ...]] = set()
        for combo in itertools.combinations(range(len(remaining)), len(groups[index])):
            chosen = tuple(remaining[i] for i in combo)
            if chosen in seen:
                continue
            seen.add(chosen)
            rest = [v for i, v in enumerate(remaining) if i not in combo]
            for tail in place(rest, index + 1):
                yield [chosen, *tail]

    placements = []
    for parts in itertools.islice(place(values, 0), limit):
        seated = torch.empty(num, dtype=torch.long)
        for group, chosen in zip(groups, parts, strict=True):
            seated[group] = torch.tensor(chosen, dtype=torch.long)
        placements.append(seated.to(labels.device))
    return placements


__all__ = ["InvertingGradients", "InvertingGradientsParams", "label_placements", "lr_milestones"]
