"""Gradient-matching costs and image priors shared by optimization-based attacks.

Pure functions on lists of tensors (one per trainable parameter, ``model.parameters()`` order)
and on image batches ``(N, C, H, W)``. The formulas follow Geiping et al., "Inverting Gradients
- How easy is it to break privacy in federated learning?", NeurIPS 2020
(https://arxiv.org/abs/2003.14053), and their reference code (``inversefed``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch

LayerWeighting = Literal["equal", "linear", "exp"]


def layer_weights(num_layers: int, scheme: LayerWeighting = "equal", *,
                  dtype: torch.dtype = torch.float32,
                  device: torch.device | str = "cpu") -> torch.Tensor:
    """Per-layer weights ``(L,)`` for the matching cost.

    Args:
        num_layers: number of parameter tensors ``L`` (must be >= 1).
        scheme: ``equal`` (all ones), ``linear`` (``(L, L-1, ..., 1) / L``: earlier layers count
            more) or ``exp`` (``softmax(L, ..., 1)`` normalised so the first weight is 1).

    Returns:
        ``(L,)`` non-negative weights.

    Example:
        >>> layer_weights(4, "linear").tolist()
        [1.0, 0.75, 0.5, 0.25]
    """
    if num_layers < 1:
        raise ValueError(f"num_layers must be >= 1, got {num_layers}")
    if scheme == "equal":
        return torch.ones(num_layers, dtype=dtype, device=device)
    ramp = torch.arange(num_layers, 0, -1, dtype=dtype, device=device)
    if scheme == "linear":
        return ramp / num_layers
    if scheme == "exp":
        soft = ramp.softmax(dim=0)
        return soft / soft[0]
    raise ValueError(f"unknown layer weighting {scheme!r}; expected one of: equal, linear, exp")


def _check_pairs(trial: Sequence[torch.Tensor], target: Sequence[torch.Tensor],
                 weights: torch.Tensor | None) -> None:
    if len(trial) != len(target):
        raise ValueError(f"trial has {len(trial)} tensors but target has {len(target)}")
    if not trial:
        raise ValueError("trial and target must hold at least one tensor")
    if weights is not None and len(weights) != len(trial):
        raise ValueError(f"weights has {len(weights)} entries, expected {len(trial)}")


def cosine_cost(trial: Sequence[torch.Tensor], target: Sequence[torch.Tensor],
                weights: torch.Tensor | None = None, *, eps: float = 1e-12) -> torch.Tensor:
    """One global (weighted) cosine distance over all layers (Geiping et al. 2020, eq. 4).

    ``1 - sum_l w_l <a_l, b_l> / (sqrt(sum_l w_l |a_l|^2) * sqrt(sum_l w_l |b_l|^2))``: the
    cosine of the concatenated vectors, not an average of per-layer cosines. Invariant to a
    positive rescaling of either side (so the client's learning rate does not matter for one
    SGD step).

    Args:
        trial: the attacker's simulated gradients/updates, one tensor per parameter.
        target: the observed ones, same shapes.
        weights: ``(L,)`` per-layer weights (default: all ones).

    Returns:
        scalar tensor in ``[0, 2]``.
    """
    _check_pairs(trial, target, weights)
    dot = trial[0].new_zeros(())
    norm_trial = trial[0].new_zeros(())
    norm_target = trial[0].new_zeros(())
    for i, (a, b) in enumerate(zip(trial, target, strict=True)):
        w = 1.0 if weights is None else weights[i]
        dot = dot + w * (a * b).sum()
        norm_trial = norm_trial + w * a.pow(2).sum()
        norm_target = norm_target + w * b.pow(2).sum()
    return 1.0 - dot / ((norm_trial.sqrt() * norm_target.sqrt()).clamp_min(eps))


def l2_cost(trial: Sequence[torch.Tensor], target: Sequence[torch.Tensor],
            weights: torch.Tensor | None = None) -> torch.Tensor:
    """Weighted squared Euclidean distance ``sum_l w_l |a_l - b_l|^2`` (Zhu et al. 2019, DLG).

    Not scale-invariant: the simulated update must use the client's learning rate.
    """
    _check_pairs(trial, target, weights)
    total = trial[0].new_zeros(())
    for i, (a, b) in enumerate(zip(trial, target, strict=True)):
        w = 1.0 if weights is None else weights[i]
        total = total + w * (a - b).pow(2).sum()
    return total


def total_variation(x: torch.Tensor) -> torch.Tensor:
    """Anisotropic total variation, mean absolute forward difference along W plus along H.

    ``mean|x[..., :, 1:] - x[..., :, :-1]| + mean|x[..., 1:, :] - x[..., :-1, :]|`` as in the
    ``inversefed`` code of Geiping et al. 2020 (Rudin, Osher & Fatemi 1992 for TV itself).

    Args:
        x: ``(N, C, H, W)`` images (any range; the attacks use normalized space).

    Returns:
        scalar tensor >= 0; 0 for a constant image.
    """
    if x.dim() != 4:
        raise ValueError(f"expected images of shape (N, C, H, W), got {tuple(x.shape)}")
    dx = (x[..., :, 1:] - x[..., :, :-1]).abs().mean()
    dy = (x[..., 1:, :] - x[..., :-1, :]).abs().mean()
    return dx + dy


__all__ = ["LayerWeighting", "cosine_cost", "l2_cost", "layer_weights", "total_variation"]
