"""Differentiable replay of a client's local training, for matching FedAvg updates.

The server knows the local-training plan it sent (:class:`~fl_shadow.training.LocalTraining`:
optimizer, lr, momentum, weight decay, batch size, epochs or steps, FedProx's proximal weight)
and the example count the client reported, so it can simulate the update ``theta_T - theta_0``
that candidate images would have produced, as a differentiable function of those images. With one local step this is the
single-gradient threat model (``-lr * grad`` for plain SGD); with several it is the multi-step
FedAvg setting of Geiping et al. 2020 (Sec. 6) and breaching's ``UserMultiStep``.

Slot assignment. Candidate images are *slots* ``x[0..K-1]``. Step ``t`` takes the next
``plan.step_batch_sizes(num_examples)[t]`` consecutive slots, restarting at slot 0 when an
epoch's worth is used up (the same walk as :func:`fl_shadow.training.batch_indices`, with the
identity permutation). The client's permutation is private, so within one epoch this is without
loss of generality: the attacker simply learns the images in the client's batch order. Beyond one
epoch the client reshuffles, which the attacker cannot know; reusing the same slot order every
epoch is then an approximation.

Like the client, the replay runs the model in train mode (BatchNorm normalises with batch
statistics). Buffers are cloned for every call, so running statistics never leak into the
attacker's model or between calls.

:meth:`UpdateReplay.batched` replays ``R`` candidate sets at once (an attack's restarts), each
with its own parameters, buffers and batch statistics, under :func:`torch.func.vmap`.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, grad, replace_all_batch_norm_modules_, vmap

from fl_shadow.training import LocalTraining, proximal_term

if TYPE_CHECKING:
    from attacks.bn_prior import BatchNormRecorder
    from fl_shadow.defenses.base import DefenseModel

# PyTorch's Adam defaults (the client builds torch.optim.Adam with them).
_ADAM_BETAS = (0.9, 0.999)
_ADAM_EPS = 1e-8


def step_slots(plan: LocalTraining, num_examples: int, num_images: int) -> list[torch.Tensor]:
    """Candidate-slot indices used by each local step.

    Args:
        plan: the local-training plan.
        num_examples: the example count the client reported (fixes the batch schedule).
        num_images: number of candidate slots ``K`` (distinct images the attacker models).

    Returns:
        one ``(B_t,)`` long tensor per step with indices in ``[0, K)``.

    Example:
        >>> plan = LocalTraining(lr=0.1, batch_size=2, local_epochs=2)
        >>> [s.tolist() for s in step_slots(plan, 3, 3)]
        [[0, 1], [2], [0, 1], [2]]
    """
    if num_examples < 1:
        raise ValueError(f"num_examples must be >= 1, got {num_examples}")
    if num_images < 1:
        raise ValueError(f"num_images must be >= 1, got {num_images}")
    slots: list[torch.Tensor] = []
    pos = 0
    for size in plan.step_batch_sizes(num_examples):
        if pos + size > num_images:
            pos = 0
        # A batch larger than K (attacker models fewer images than a batch holds) cycles.
        slots.append(torch.arange(pos, pos + size) % num_images)
        pos += size
    return slots


class UpdateReplay:
    """Simulates ``client - global`` for candidate images, differentiably in the images.

    Args:
        model: the task architecture; only its structure and training flag are used (weights
            come from ``global_state``); never modified.
        global_state: the global ``state_dict`` the server sent (parameters and buffers).
        plan: the local-training plan the server sent.
        num_examples: the example count the client reported.
        num_images: candidate slots ``K``; default: ``plan.num_distinct_images(num_examples)``.

    Attributes:
        names: trainable parameter names, in ``model.parameters()`` order (the order of the
            returned update and of :meth:`fl_shadow.attacks.base.Observation.parameter_update`).
        slots: slot indices per step, see :func:`step_slots`.
        defense: the adaptive attacker's model of the client's defense
            (:class:`fl_shadow.defenses.base.DefenseModel`), applied where the client applies it:
            to each step's batch, to each step's gradient and to the final update; None
            replays an undefended client.
    """

    def __init__(self, model: nn.Module, global_state: Mapping[str, torch.Tensor],
                 plan: LocalTraining, num_examples: int, num_images: int | None = None) -> None:
        if plan.optimizer not in ("sgd", "adam"):
            raise ValueError(f"cannot replay optimizer {plan.optimizer!r}; expected sgd or adam")
        self.model = model
        self.plan = plan
        self.num_images = (plan.num_distinct_images(num_examples) if num_images is None
                           else num_images)
        self.slots = step_slots(plan, num_examples, self.num_images)
        self.defense: DefenseModel | None = None
        # built by pure_model() on first use
        self._pure_model: tuple[nn.Module, dict[str, torch.Tensor]] | None = None
        device = next(model.parameters()).device
        self.names = [n for n, p in model.named_parameters() if p.requires_grad]
        missing = [n for n in self.names if n not in global_state]
        if missing:
            raise KeyError(f"global_state lacks parameter {missing[0]!r}")
        self._initial = {n: global_state[n].detach().to(device=device, dtype=torch.float32)
                         for n in self.names}
        # Frozen parameters and buffers: taken from the global state where present.
        self._constants = {}
        for name, tensor in [*model.named_parameters(), *model.named_buffers()]:
            if name in self._initial:
                continue
            source = global_state.get(name, tensor)
            self._constants[name] = source.detach().to(device)

    @property
    def num_steps(self) -> int:
        return len(self.slots)

    def __call__(self, x: torch.Tensor, labels: torch.Tensor, *,
                 create_graph: bool = True) -> list[torch.Tensor]:
        """The simulated update, one tensor per trainable parameter.

        Args:
            x: ``(K, C, H, W)`` candidate images in normalized space (``requires_grad`` for
                attacks).
            labels: ``(K,)`` class indices or ``(K, num_classes)`` probabilities, per slot.
            create_graph: keep the graph through every step so the update can be
                differentiated with respect to ``x`` (off for plain evaluation).

        Returns:
            ``theta_T - theta_0`` per parameter (same order as :attr:`names`).
        """
        if x.shape[0] != self.num_images:
            raise ValueError(f"expected {self.num_images} candidate images, got {x.shape[0]}")
        if labels.shape[0] != self.num_images:
            raise ValueError(f"expected {self.num_images} labels, got {labels.shape[0]}")
        return self._replay(x, labels, create_graph=create_graph, sets=None)

    def batched(self, x: torch.Tensor, labels: torch.Tensor, *,
                create_graph: bool = True, recorder: BatchNormRecorder | None = None
                ) -> list[torch.Tensor]:
        """The simulated updates of ``R`` independent candidate sets in one pass.

        What an attack's restarts (or seeds) need at every iteration, as one computation
        instead of ``R``: each set gets its own copy of the parameters and buffers, and the
        model runs under :func:`torch.func.vmap` over the sets, so BatchNorm normalises each
        set with its own batch statistics (stacking the sets into one batch would couple
        them) and each set's local steps move only its own parameters. Row ``r`` equals
        ``self(x[r], labels[r])`` up to float rounding (the batched kernels sum in another
        order).

        Args:
            x: ``(R, K, C, H, W)`` candidate sets in normalized space.
            labels: ``(R, K)`` class indices or ``(R, K, num_classes)`` probabilities.
            create_graph: as in :meth:`__call__`.
            recorder: a :class:`~attacks.bn_prior.BatchNormRecorder` of :attr:`model`,
                recording (inside its ``recording()`` block): each step's BatchNorm input
                statistics of every set, ``(R, C)`` per layer and step (forward hooks see one
                set at a time under vmap; the statistics leave the vmap as its output).

        Returns:
            per parameter ``(R, *shape)``: the sets' ``theta_T - theta_0``.

        Raises:
            ValueError: wrong shapes, or a :attr:`defense` model is set (a defense's hooks see
                one candidate set at a time; replay the sets one by one instead).
        """
        if self.defense is not None:
            raise ValueError("batched replay does not model a defense; replay each candidate "
                             "set alone")
        if x.dim() != 5 or x.shape[1] != self.num_images:
            raise ValueError(f"expected candidate sets (R, {self.num_images}, C, H, W), got "
                             f"{tuple(x.shape)}")
        if tuple(labels.shape[:2]) != tuple(x.shape[:2]):
            raise ValueError(f"expected labels of shape ({x.shape[0]}, {self.num_images}[, "
                             f"classes]), got {tuple(labels.shape)}")
        return self._replay(x, labels, create_graph=create_graph, sets=x.shape[0],
                            recorder=recorder)

    def _replay(self, x: torch.Tensor, labels: torch.Tensor, *, create_graph: bool,
                sets: int | None, recorder: BatchNormRecorder | None = None
                ) -> list[torch.Tensor]:
        """The local training on one candidate set (``sets`` None) or on ``sets`` stacked
        ones (leading dim; parameters and buffers stacked alike, the model vmapped)."""
        defense = self.defense

        def stacked(t: torch.Tensor) -> torch.Tensor:
            return t.clone() if sets is None else t.expand(sets, *t.shape).clone()

        params = {n: stacked(t).requires_grad_(True) for n, t in self._initial.items()}
        # Fresh buffer copies: BatchNorm updates them in place in train mode.
        constants = {n: stacked(t) for n, t in self._constants.items()}

        def step_loss(p: dict[str, torch.Tensor], c: dict[str, torch.Tensor],
                      batch: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            return F.cross_entropy(functional_call(self.model, {**p, **c}, (batch,)), y)

        def step_loss_and_statistics(p: dict[str, torch.Tensor], c: dict[str, torch.Tensor],
                                     batch: torch.Tensor, y: torch.Tensor
                                     ) -> tuple[torch.Tensor, list[list[tuple[torch.Tensor,
                                                                              torch.Tensor]]]]:
            assert recorder is not None
            since = [len(calls) for calls in recorder.calls]
            loss = step_loss(p, c, batch, y)
            return loss, recorder.take(since)

        # One loss per set, summed: set r's parameters get set r's gradient only.
        if sets is None:
            losses = step_loss
        elif recorder is None:
            losses = vmap(step_loss)
        else:
            recording = vmap(step_loss_and_statistics)

            def losses(p: dict[str, torch.Tensor], c: dict[str, torch.Tensor],
                       batch: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
                assert recorder is not None
                per_set, statistics = recording(p, c, batch, y)
                recorder.extend(statistics)
                return per_set
        state: dict[str, list[torch.Tensor]] = {}
        was_training = self.model.training
        self.model.train()
        try:
            for step, idx in enumerate(self.slots):
                idx = idx.to(x.device)
                if sets is None:
                    batch = x[idx] if defense is None else defense.perturb_input(x[idx], step)
                    y = labels[idx]
                else:
                    batch, y = x[:, idx], labels[:, idx]
                loss = losses(params, constants, batch, y).sum()
                tensors = [params[n] for n in self.names]
                if self.plan.proximal_mu:  # FedProx: the clients' loss has the proximal term
                    # (a sum over entries: separable across stacked sets)
                    loss = loss + proximal_term(tensors, [self._initial[n] for n in self.names],
                                                self.plan.proximal_mu)
                grads = torch.autograd.grad(loss, tensors, create_graph=create_graph,
                                            allow_unused=True)
                grads = [torch.zeros_like(p) if g is None else g
                         for p, g in zip(tensors, grads, strict=True)]
                if defense is not None:
                    grads = defense.protect_gradient(grads, step)
                new = self._optimizer_step(tensors, grads, state, step + 1)
                if not create_graph:
                    new = [p.detach().requires_grad_(True) for p in new]
                params = dict(zip(self.names, new, strict=True))
        finally:
            self.model.train(was_training)
        update = [params[n] - self._initial[n] for n in self.names]
        if defense is not None:
            update = defense.protect_update(update)
        return update if create_graph else [u.detach() for u in update]

    def pure_model(self) -> tuple[nn.Module, dict[str, torch.Tensor]]:
        """The model copy :meth:`pure` runs (BatchNorm without running statistics) and the
        frozen parameters it is called with; built on the first call. Call it once before
        tracing :meth:`pure` with :func:`torch.compile` (building modules does not trace)."""
        if self._pure_model is None:
            buffers = {n for n, _ in self.model.named_buffers()}
            model = replace_all_batch_norm_modules_(copy.deepcopy(self.model)).train()
            frozen = {n: t for n, t in self._constants.items() if n not in buffers}
            self._pure_model = (model, frozen)
        return self._pure_model

    def pure(self, x: torch.Tensor, labels: torch.Tensor) -> list[torch.Tensor]:
        """:meth:`__call__` as a pure function of ``x``, for :mod:`torch.func` transforms and
        :func:`torch.compile`.

        Each step's gradient comes from :func:`torch.func.grad` instead of
        ``torch.autograd.grad(create_graph=True)``, so ``torch.func.grad`` of a cost of the
        result differentiates through the whole local training and the computation can be
        traced into one graph (``create_graph`` autograd cannot be compiled). The model runs
        as a copy whose BatchNorm layers keep no running statistics: train-mode BatchNorm
        normalises with batch statistics either way, and updating buffers in place is what
        the transforms forbid. Equals ``self(x, labels)`` up to float rounding.

        Raises:
            ValueError: a :attr:`defense` model is set (its hooks are not written for the
                transforms).
        """
        if self.defense is not None:
            raise ValueError("the pure replay does not model a defense; use the replay itself")
        if x.shape[0] != self.num_images or labels.shape[0] != self.num_images:
            raise ValueError(f"expected {self.num_images} candidate images and labels, got "
                             f"{x.shape[0]} and {labels.shape[0]}")
        model, frozen = self.pure_model()
        anchor = [self._initial[n] for n in self.names]

        def step_loss(p: dict[str, torch.Tensor], batch: torch.Tensor,
                      y: torch.Tensor) -> torch.Tensor:
            loss = F.cross_entropy(functional_call(model, {**p, **frozen}, (batch,)), y)
            if self.plan.proximal_mu:
                loss = loss + proximal_term([p[n] for n in self.names], anchor,
                                            self.plan.proximal_mu)
            return loss

        step_grad = grad(step_loss)
        params = dict(self._initial)
        state: dict[str, list[torch.Tensor]] = {}
        for step, idx in enumerate(self.slots):
            idx = idx.to(x.device)
            grads = step_grad(params, x[idx], labels[idx])
            new = self._optimizer_step([params[n] for n in self.names],
                                       [grads[n] for n in self.names], state, step + 1)
            params = dict(zip(self.names, new, strict=True))
        return [params[n] - self._initial[n] for n in self.names]

    def _optimizer_step(self, params: list[torch.Tensor], grads: list[torch.Tensor],
                        state: dict[str, list[torch.Tensor]], t: int) -> list[torch.Tensor]:
        """One functional step of ``torch.optim.SGD``/``Adam`` (default flags) at step ``t``."""
        plan = self.plan
        if plan.weight_decay:
            grads = [g + plan.weight_decay * p for p, g in zip(params, grads, strict=True)]
        if plan.optimizer == "sgd":
            if plan.momentum:
                if "buf" not in state:  # torch: first step sets the buffer to the gradient
                    state["buf"] = list(grads)
                else:
                    state["buf"] = [plan.momentum * b + g
                                    for b, g in zip(state["buf"], grads, strict=True)]
                grads = state["buf"]
            return [p - plan.lr * g for p, g in zip(params, grads, strict=True)]
        beta1, beta2 = _ADAM_BETAS
        m = state.get("m", [torch.zeros_like(g) for g in grads])
        v = state.get("v", [torch.zeros_like(g) for g in grads])
        m = [beta1 * a + (1 - beta1) * g for a, g in zip(m, grads, strict=True)]
        v = [beta2 * b + (1 - beta2) * g * g for b, g in zip(v, grads, strict=True)]
        state["m"], state["v"] = m, v
        step_size = plan.lr / (1 - beta1 ** t)
        root_c2 = (1 - beta2 ** t) ** 0.5
        # clamp keeps d sqrt(v)/dv finite where v == 0 (a zero gradient entry); below 1e-30
        # the clamp changes sqrt(v) by < 1e-15, far under eps.
        return [p - step_size * a / (b.clamp_min(1e-30).sqrt() / root_c2 + _ADAM_EPS)
                for p, a, b in zip(params, m, v, strict=True)]


def simulate_update(model: nn.Module, global_state: Mapping[str, torch.Tensor],
                    x: torch.Tensor, labels: torch.Tensor, plan: LocalTraining,
                    num_examples: int, *, create_graph: bool = True) -> list[torch.Tensor]:
    """One-shot :class:`UpdateReplay` with ``K = x.shape[0]`` slots; see its docs."""
    replay = UpdateReplay(model, global_state, plan, num_examples, num_images=x.shape[0])
    return replay(x, labels, create_graph=create_graph)


__all__ = ["UpdateReplay", "simulate_update", "step_slots"]
