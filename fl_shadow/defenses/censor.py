"""CENSOR: share a gradient drawn from the subspace orthogonal to the true one.

Method: K. Zhang, S. Cheng, G. Shen, B. Ribeiro, S. An, P.-Y. Chen, X. Zhang and N. Li, "CENSOR:
Defense Against Gradient Inversion via Orthogonal Subspace Bayesian Sampling" (NDSS 2025);
code ``KaiyuanZh/censor`` (``defense.py: orthogonal_gradient``, ``run_rec.py``).

Each local step of a round it is applied in (:meth:`protect_gradient`), with the step's batch
``(x, y)``, parameters ``theta`` and true gradient ``g``:

1. per trainable tensor ``l``: an orthonormal basis ``Q_l`` of ``g_l`` and the last
   ``history_size`` true gradients of that tensor (float64 Gram-Schmidt, done twice);
2. ``num_trials`` candidates: per tensor, ``r ~ N(0, I)`` from the client's private generator,
   ``o_l = r - Q_l Q_l^T r`` (projected twice), rescaled to ``||o_l|| = ||g_l||``;
3. each candidate is scored by the batch loss after a probe step,
   ``L(theta - probe_lr * o; x, y)`` (eval mode, nothing kept), and the lowest-loss candidate is
   the gradient the optimizer applies (the cold-posterior limit of the paper's Bayesian
   sampling: the posterior's mode among the samples);
4. the chosen candidate is checked against the bound ``|cos(o_l, v)| <= epsilon`` for ``v =
   g_l`` and every history direction of that tensor before it is used.

In rounds outside ``rounds`` the true gradients are applied (and leave the client), as in the
released code, which protects epochs 0-9 only. With one local SGD step (no momentum, no weight
decay) the update that leaves the client is ``-lr * o``, orthogonal to the true gradient; with
several steps each step is orthogonal to its own gradient.

Readings chosen / differences from the public code:

* **Correct projection.** The code subtracts ``(<r, g> / ||g||) g`` instead of
  ``(<r, g> / ||g||^2) g``, so its candidates are orthogonal only when ``||g_l|| = 1``; here the
  projection is exact (``|cos| < 1e-6`` in float32).
* **epsilon.** The code passes ``epsilon`` (``defense_setting.orthogonal``, 1e-4) and never reads
  it; here it is the orthogonality tolerance checked in step 4. The probe step the code
  hard-codes (``learning_rate = 1e-4``) is ``probe_lr``.
* **No raw-gradient fallback.** The code starts from ``best_loss = L(theta)`` and shares the
  *true* gradient when no candidate lowers the loss (which is common: a direction orthogonal to
  the gradient is not a first-order descent direction). Sharing the gradient the defense exists
  to hide is not the paper's intent, so the best candidate is always used; the fit metric
  ``defense-improved_fraction`` reports how often it also beat ``L(theta)``.
* **History (extension, off by default).** The released code is orthogonal to the current
  gradient only (``history_size: 0``). With ``history_size: k`` the candidates are also
  orthogonal to the client's last ``k`` true step gradients, kept across rounds in the
  defense's state (:meth:`state_dict`). Note that every shared orthogonal direction tells the
  attacker one linear constraint on the gradients it is orthogonal to.
* Candidates are probed in eval mode, as in the code (train-mode BatchNorm would also move the
  running statistics); BatchNorm buffers themselves are not touched by the defense.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Annotated

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from fl_shadow.config import Float, Int, settings
from fl_shadow.defenses.base import Defense, DefenseContext, register_defense

log = logging.getLogger(__name__)

HISTORY_PREFIX = "history."


def orthonormal_basis(vectors: list[torch.Tensor]) -> torch.Tensor:
    """Orthonormal rows ``(k, n)`` spanning the flat float64 ``vectors`` (dependent ones and
    zeros dropped), by Gram-Schmidt with re-orthogonalisation."""
    n = vectors[0].numel() if vectors else 0
    basis = torch.empty(0, n, dtype=torch.float64,
                        device=vectors[0].device if vectors else None)
    for v in vectors:
        w = project_out(v, basis)
        norm = w.norm()
        if norm > 1e-10 * v.norm() and norm > 0:
            basis = torch.cat([basis, (w / norm)[None]])
    return basis


def project_out(v: torch.Tensor, basis: torch.Tensor) -> torch.Tensor:
    """``v`` minus its projection onto the span of the orthonormal rows of ``basis`` (twice)."""
    for _ in range(2):
        if len(basis):
            v = v - basis.T @ (basis @ v)
    return v


def orthogonal_candidate(gradient: torch.Tensor, basis: torch.Tensor,
                         generator: torch.Generator) -> torch.Tensor:
    """A random direction orthogonal to ``basis``, scaled to ``||gradient||``, shaped like it.

    Zero when ``gradient`` is zero or the orthogonal complement is empty.
    """
    r = torch.randn(gradient.numel(), generator=generator, dtype=torch.float64)
    o = project_out(r.to(gradient.device), basis)
    o_norm, g_norm = o.norm(), gradient.detach().double().norm()
    if g_norm == 0 or o_norm <= 1e-10 * r.norm():
        return torch.zeros_like(gradient)
    return (o / o_norm * g_norm).to(gradient.dtype).view_as(gradient)


def max_abs_cosine(o: torch.Tensor, directions: list[torch.Tensor]) -> float:
    """``max_v |cos(o, v)|`` over non-zero ``directions`` (0 when ``o`` is zero)."""
    flat = o.detach().double().flatten()
    worst = 0.0
    if flat.norm() == 0:
        return worst
    for v in directions:
        v = v.detach().double().flatten()
        if v.norm() > 0:
            worst = max(worst, float((flat @ v).abs() / (flat.norm() * v.norm())))
    return worst


@settings
class CensorParams:
    """Parameters of ``censor`` (released-code defaults).

    Attributes:
        num_trials: candidates sampled per step (``our_num_tries``, 20), >= 1.
        probe_lr: step along a candidate at which its loss is measured (1e-4), > 0.
        epsilon: bound on ``|cos|`` between a shared tensor and the directions it must be
            orthogonal to (the released ``defense_setting.orthogonal``, 1e-4), in (0, 1).
        rounds: server rounds (1-based) the defense is applied in, or null for every round
            (released code: the first 10).
        history_size: past true step gradients the candidates are also orthogonal to
            (extension; 0 = released behaviour), >= 0.
    """

    num_trials: Annotated[Int, Field(ge=1, le=100_000)] = 20
    probe_lr: Annotated[Float, Field(gt=0)] = 1e-4
    epsilon: Annotated[Float, Field(gt=0, lt=1)] = 1e-4
    rounds: tuple[Annotated[Int, Field(ge=1)], ...] | None = tuple(range(1, 11))
    history_size: Annotated[Int, Field(ge=0, le=100_000)] = 0


@register_defense("censor", CensorParams, keeps_client_state=True)
class Censor(Defense):
    """Replace each step's gradient by the lowest-loss of ``num_trials`` orthogonal samples."""

    def __init__(self, params: CensorParams) -> None:
        self.params = params
        self.history: dict[int, torch.Tensor] = {}  # tensor index -> (k, numel) true grads
        self._steps = 0
        self._improved = 0

    def applies(self, server_round: int) -> bool:
        return self.params.rounds is None or server_round in self.params.rounds

    def protect_gradient(self, grads: list[torch.Tensor], model: nn.Module, x: torch.Tensor,
                         y: torch.Tensor, ctx: DefenseContext) -> list[torch.Tensor]:
        applied = self.applies(ctx.server_round)
        if not applied and "applied" not in ctx.metrics:
            log.info("censor: round %d is outside defense.params.rounds; the true gradients "
                     "are applied and leave the client", ctx.server_round)
        ctx.metrics["applied"] = float(applied)
        out = self._orthogonal_step(grads, model, x, y, ctx) if applied else grads
        self._remember(grads)
        return out

    def _orthogonal_step(self, grads: list[torch.Tensor], model: nn.Module, x: torch.Tensor,
                         y: torch.Tensor, ctx: DefenseContext) -> list[torch.Tensor]:
        p = self.params
        directions = [self._directions(i, g) for i, g in enumerate(grads)]
        bases = [orthonormal_basis([d.double().flatten() for d in dirs]) for dirs in directions]
        params = [q for q in model.parameters() if q.requires_grad]
        originals = [q.detach().clone() for q in params]
        was_training = model.training
        model.eval()
        best: list[torch.Tensor] = []
        best_loss = float("inf")
        try:
            with torch.no_grad():
                base_loss = float(F.cross_entropy(model(x), y))
                for _ in range(p.num_trials):
                    candidate = [orthogonal_candidate(g, b, ctx.generator)
                                 for g, b in zip(grads, bases, strict=True)]
                    for q, w, o in zip(params, originals, candidate, strict=True):
                        q.copy_(w - p.probe_lr * o)
                    loss = float(F.cross_entropy(model(x), y))
                    if not best or loss < best_loss:  # the first candidate even if NaN
                        best, best_loss = candidate, loss
        finally:
            with torch.no_grad():
                for q, w in zip(params, originals, strict=True):
                    q.copy_(w)
            model.train(was_training)
        for i, (o, dirs) in enumerate(zip(best, directions, strict=True)):
            worst = max_abs_cosine(o, dirs)
            if worst > p.epsilon:
                raise RuntimeError(f"censor: tensor {i} has |cos| {worst:.3g} with a protected "
                                   f"direction, above epsilon {p.epsilon:g}")
        self._steps += 1
        self._improved += int(best_loss < base_loss)
        ctx.metrics["improved_fraction"] = self._improved / self._steps
        return best

    def _directions(self, index: int, grad: torch.Tensor) -> list[torch.Tensor]:
        """The current gradient of tensor ``index`` and its stored history, flat."""
        past = self.history.get(index)
        rows = [] if past is None else list(past.to(grad.device))
        return [grad.detach().flatten(), *rows]

    def _remember(self, grads: list[torch.Tensor]) -> None:
        k = self.params.history_size
        if k == 0:
            return
        for i, g in enumerate(grads):
            row = g.detach().flatten()[None].clone()
            past = self.history.get(i)
            stacked = row if past is None else torch.cat([past.to(row.device), row])
            self.history[i] = stacked[-k:]

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {f"{HISTORY_PREFIX}{i}": h for i, h in self.history.items()}

    def load_state_dict(self, state: Mapping[str, torch.Tensor]) -> None:
        self.history = {int(k[len(HISTORY_PREFIX):]): v.clone() for k, v in state.items()
                        if k.startswith(HISTORY_PREFIX)}

    def summary(self) -> str:
        p = self.params
        rounds = "all" if p.rounds is None else list(p.rounds)
        return (f"censor(num_trials={p.num_trials}, probe_lr={p.probe_lr:g}, "
                f"epsilon={p.epsilon:g}, rounds={rounds}, history_size={p.history_size})")
