"""BatchNorm-statistics prior (Yin et al., "See through Gradients", CVPR 2021), with the
reference statistics read from the client's upload.

The prior asks the candidate images to produce, at the input of every BatchNorm layer, the
batch mean and variance the client's own batch produced:
``R_BN = sum_l a_l (||mu_l(x) - mu_l^ref||_2 + ||var_l(x) - var_l^ref||_2)`` with plain (not
squared) norms and ``a_0 = first_multiplier`` (10 in breaching, GIAS and CENSOR), ``a_l = 1``
otherwise.

**Where the server finds the reference (derivation).** In train mode a BatchNorm layer
normalises with the batch's statistics and updates its buffers as
``r_t = (1 - f_t) r_{t-1} + f_t s_t``, where ``s_t`` is the batch mean (``running_mean``) or
the *unbiased* batch variance (``running_var``) of the layer's input over ``(N, H, W)``, and
``f_t`` is the layer's ``momentum`` (PyTorch default 0.1), or ``1 / num_batches_tracked`` when
momentum is None (cumulative average). Over ``T`` local steps

    r_T = c r_0 + sum_t w_t s_t,   w_t = f_t prod_{u > t} (1 - f_u),   c = prod_t (1 - f_t),

and ``sum_t w_t = 1 - c``. The server sent ``r_0`` (global state) and receives ``r_T`` (the
client's ``state_dict``), so it reads the weighted average of the steps' batch statistics

    s_bar = (r_T - c r_0) / (1 - c) = sum_t (w_t / (1 - c)) s_t.

For one local step (the single-gradient threat model) with momentum ``m`` this is the batch's
own statistics, exactly: ``mu_b = (r_1 - (1 - m) r_0) / m``, and the biased variance used for
normalisation is ``var_b = (n - 1) / n * (v_1 - (1 - m) v_0) / m`` with ``n = B * H * W``
values per channel (PyTorch stores the unbiased one). NVFlare's GradInversion reads the
one-step form; for several steps the attacker computes the same weighted average of its
candidates' per-step statistics while replaying the local training
(:class:`BatchNormRecorder`), and averages are matched with averages (unbiased variances on
both sides, so the comparison is exact for any ``T``).

The alternative reference (breaching's) is the global model's running statistics: public,
but only an estimate of the data's statistics, and in round 1 just the initial 0/1.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm


def batchnorm_layers(model: nn.Module) -> list[tuple[str, _BatchNorm]]:
    """``(name, module)`` of every BatchNorm layer that keeps running statistics, in
    ``named_modules`` order (the order of :attr:`BatchNormReference.means`)."""
    return [(n, m) for n, m in model.named_modules()
            if isinstance(m, _BatchNorm) and m.track_running_stats]


def update_factors(module: _BatchNorm, num_steps: int, batches_tracked: int) -> torch.Tensor:
    """``(T,)`` factors ``f_t`` of the running-statistics update for steps ``1..T``.

    Args:
        module: the BatchNorm layer (its ``momentum``).
        num_steps: ``T`` local steps.
        batches_tracked: the global model's ``num_batches_tracked`` before the round (used only
            when momentum is None).
    """
    if num_steps < 1:
        raise ValueError(f"num_steps must be >= 1, got {num_steps}")
    if module.momentum is None:
        return 1.0 / torch.arange(batches_tracked + 1, batches_tracked + num_steps + 1,
                                  dtype=torch.float64)
    return torch.full((num_steps,), float(module.momentum), dtype=torch.float64)


def step_weights(factors: torch.Tensor) -> tuple[torch.Tensor, float]:
    """Weights ``w_t / (1 - c)`` of each step's statistics in ``s_bar``, and ``c``.

    Example:
        >>> w, c = step_weights(torch.tensor([0.1, 0.1], dtype=torch.float64))
        >>> [round(v, 4) for v in w.tolist()], round(c, 2)
        ([0.4737, 0.5263], 0.81)
    """
    keep = torch.ones_like(factors)  # prod_{u > t} (1 - f_u)
    for t in range(len(factors) - 2, -1, -1):
        keep[t] = keep[t + 1] * (1 - factors[t + 1])
    raw = factors * keep
    c = float(torch.prod(1 - factors))
    return raw / (1 - c), c


@dataclass(frozen=True)
class BatchNormReference:
    """Target statistics per BatchNorm layer.

    Attributes:
        means: per layer ``(C_l,)`` the (step-weighted) batch mean.
        variances: per layer ``(C_l,)`` the (step-weighted) *unbiased* batch variance.
        weights: per layer ``(T,)`` how the candidates' per-step statistics are averaged to
            compare with the reference (sums to 1).
        source: ``update`` (read from the client's upload) or ``global`` (the global model's
            running statistics).
    """

    means: list[torch.Tensor]
    variances: list[torch.Tensor]
    weights: list[torch.Tensor]
    source: str


def reference_from_update(model: nn.Module, global_state: Mapping[str, torch.Tensor],
                          client_state: Mapping[str, torch.Tensor], num_steps: int, *,
                          device: torch.device | str = "cpu") -> BatchNormReference | None:
    """The batch statistics behind the client's running-statistics update (module docstring).

    Args:
        model: the public architecture (BatchNorm layers and their momentum).
        global_state: the state the server sent (``r_0``).
        client_state: the state the client sent back (``r_T``); must hold every layer's
            ``running_mean`` and ``running_var`` (:func:`attacks.base.check_threat_model`).
        num_steps: ``T`` local steps of the round.
        device: where the returned tensors live.

    Returns:
        the reference, or None when the client's running statistics did not move in any
        layer (a defense that sends the global buffers back, e.g. ``dp`` with
        ``bn_buffers: withhold``): there is nothing to read.
    """
    means, variances, weights = [], [], []
    moved = False
    for name, module in batchnorm_layers(model):
        tracked = global_state.get(f"{name}.num_batches_tracked")
        factors = update_factors(module, num_steps, int(tracked) if tracked is not None else 0)
        w, c = step_weights(factors)
        pairs = []
        for buffer in ("running_mean", "running_var"):
            r0 = global_state[f"{name}.{buffer}"].to(device).double()
            r_t = client_state[f"{name}.{buffer}"].to(device).double()
            moved = moved or not torch.equal(r0, r_t)
            pairs.append(((r_t - c * r0) / (1 - c)).float())
        means.append(pairs[0])
        variances.append(pairs[1])
        weights.append(w.float().to(device))
    return BatchNormReference(means, variances, weights, "update") if moved else None


def reference_from_global(model: nn.Module, global_state: Mapping[str, torch.Tensor],
                          num_steps: int, *,
                          device: torch.device | str = "cpu") -> BatchNormReference:
    """The global model's running statistics as the reference (breaching's choice), compared
    with the candidates' statistics averaged uniformly over the ``num_steps`` steps."""
    layers = batchnorm_layers(model)
    uniform = torch.full((num_steps,), 1.0 / num_steps, device=device)
    return BatchNormReference(
        means=[global_state[f"{n}.running_mean"].float().to(device) for n, _ in layers],
        variances=[global_state[f"{n}.running_var"].float().to(device) for n, _ in layers],
        weights=[uniform for _ in layers], source="global")


def batch_statistics(h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and unbiased variance of a BatchNorm input ``(N, C, *)`` over every
    dimension but the channels (what BatchNorm's running statistics accumulate)."""
    dims = [0, *range(2, h.dim())]
    return h.mean(dim=dims), h.var(dim=dims, unbiased=True)


class BatchNormRecorder:
    """Records each BatchNorm layer's input statistics, differentiably, during forwards.

    Forward hooks also fire inside :func:`torch.func.functional_call`, so wrapping a
    :class:`~attacks.replay.UpdateReplay` call records every local step in order.

    Example:
        >>> model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2)).train()
        >>> recorder = BatchNormRecorder(model)
        >>> with recorder.recording():
        ...     _ = model(torch.randn(2, 1, 5, 5))
        >>> [len(calls) for calls in recorder.calls]
        [1]
    """

    def __init__(self, model: nn.Module) -> None:
        self.layers = [m for _, m in batchnorm_layers(model)]
        self.calls: list[list[tuple[torch.Tensor, torch.Tensor]]] = [[] for _ in self.layers]

    @contextmanager
    def recording(self) -> Iterator[BatchNormRecorder]:
        """Clear the record, hook every layer for the duration of the block."""
        self.calls = [[] for _ in self.layers]
        handles = [layer.register_forward_hook(self._hook(i))
                   for i, layer in enumerate(self.layers)]
        try:
            yield self
        finally:
            for handle in handles:
                handle.remove()

    def _hook(self, index: int):  # noqa: ANN202 (a torch hook)
        def hook(module: nn.Module, inputs: tuple[torch.Tensor, ...], output: object) -> None:
            self.calls[index].append(batch_statistics(inputs[0]))
        return hook

    def averaged(self, reference: BatchNormReference) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Per layer ``(mean, var)`` averaged over the recorded steps with the reference's
        weights: ``(C,)`` each, or ``(R, C)`` for a batched replay of ``R`` candidate sets.

        Raises:
            ValueError: a layer was called a different number of times than the reference
                has steps (e.g. a layer used twice per forward).
        """
        out = []
        for calls, weights in zip(self.calls, reference.weights, strict=True):
            if len(calls) != len(weights):
                raise ValueError(f"a BatchNorm layer ran {len(calls)} times, expected one call "
                                 f"per local step ({len(weights)})")
            means = torch.stack([m for m, _ in calls])
            variances = torch.stack([v for _, v in calls])
            if means.dim() == 2:  # (steps, C)
                out.append((weights @ means, weights @ variances))
            else:  # (steps, R, C): each set's own average
                out.append((torch.einsum("s,src->rc", weights, means),
                            torch.einsum("s,src->rc", weights, variances)))
        return out

    def extend(self, statistics: list[list[tuple[torch.Tensor, torch.Tensor]]]) -> None:
        """Append per layer the calls of ``statistics`` (what :meth:`take` returned, e.g.
        stacked over candidate sets by :func:`torch.func.vmap`)."""
        for calls, new in zip(self.calls, statistics, strict=True):
            calls.extend(new)

    def take(self, since: list[int]) -> list[list[tuple[torch.Tensor, torch.Tensor]]]:
        """Remove and return per layer the calls recorded after ``since`` (the lengths of
        :attr:`calls` before). Inside a vmapped function this hands the statistics out as
        its return value, so no batched tensor outlives the vmap."""
        out = []
        for calls, start in zip(self.calls, since, strict=True):
            out.append(calls[start:])
            del calls[start:]
        return out


def bn_prior(statistics: list[tuple[torch.Tensor, torch.Tensor]],
             reference: BatchNormReference, *, first_multiplier: float = 10.0) -> torch.Tensor:
    """``sum_l a_l (||mu_l - mu_l^ref||_2 + ||var_l - var_l^ref||_2)``, ``a_0`` =
    ``first_multiplier``, the others 1 (scalar tensor >= 0; 0 for a model without BN).

    Statistics are ``(C,)`` per layer, or ``(R, C)`` for ``R`` candidate sets (then ``(R,)``,
    each set's prior)."""
    if len(statistics) != len(reference.means):
        raise ValueError(f"{len(statistics)} recorded layers, reference has "
                         f"{len(reference.means)}")
    total = torch.zeros(())
    for i, ((mean, var), ref_mean, ref_var) in enumerate(
            zip(statistics, reference.means, reference.variances, strict=True)):
        scale = first_multiplier if i == 0 else 1.0
        total = total.to(mean) + scale * ((mean - ref_mean).norm(dim=-1)
                                          + (var - ref_var).norm(dim=-1))
    return total


__all__ = ["BatchNormRecorder", "BatchNormReference", "batch_statistics", "batchnorm_layers",
           "bn_prior", "reference_from_global", "reference_from_update", "step_weights",
           "update_factors"]
