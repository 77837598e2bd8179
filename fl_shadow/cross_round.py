"""The cross-round attacker: one hospital's reconstructions over the rounds, combined.

A hospital trains on the same images round after round, and a curious server knows which
hospital sent which update. Noise drawn fresh every round (an input-noise defense, DP) then
invites averaging: each round's reconstruction is ``x + noise_r + error_r``, and the mean of
``n`` of them keeps ``x`` while the independent parts shrink by ``sqrt(n)``. A noise memory
that is frozen over the rounds (the Shadow Defense after ``shadow_final_round``) does not
average away. :func:`combine_rounds` is the attacker's side of this, with nothing but its
own reconstructions:

1. **align**: the images of an earlier round come in another order; each earlier image is
   assigned to one of this round's by the highest normalized cross-correlation (one
   assignment, ``scipy.optimize.linear_sum_assignment``), computed between the attacker's own
   reconstructions, never ground truth;
2. **standardize** each image to zero mean and unit variance, so that the brightness and
   contrast a gradient does not pin down (``a x + b``) do not differ between rounds;
3. **average** the aligned images and map the mean back to this round's per-image mean and
   standard deviation, clamped to [0, 1].

Earlier rounds whose reconstruction holds a different number of images (another batch) are
left out.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

__all__ = ["combine_rounds", "standardize"]


def standardize(images: torch.Tensor) -> torch.Tensor:
    """Each image of ``(K, C, H, W)`` to zero mean and unit variance (a flat image to 0)."""
    flat = images.flatten(1)
    mean = flat.mean(1, keepdim=True)
    std = flat.std(1, unbiased=False, keepdim=True)
    return ((flat - mean) / std.clamp_min(1e-8)).view_as(images)


def _aligned(current: torch.Tensor, earlier: torch.Tensor) -> torch.Tensor:
    """``earlier`` (standardized) reordered to ``current``'s (standardized) order."""
    k = len(current)
    ncc = current.flatten(1) @ earlier.flatten(1).T / current[0].numel()   # (K, K)
    # Imported here: scipy.optimize costs ~0.5 s at import in every process that loads the
    # attacks (all Flower processes do), most of which never run this one.
    from scipy.optimize import linear_sum_assignment

    rows, cols = linear_sum_assignment(-ncc.detach().cpu().numpy())
    order = torch.empty(k, dtype=torch.long)
    order[torch.as_tensor(rows)] = torch.as_tensor(cols)
    return earlier[order.to(earlier.device)]


def combine_rounds(current: torch.Tensor, earlier: Sequence[torch.Tensor]) -> torch.Tensor:
    """This round's reconstruction ``current`` (``(K, C, H, W)`` in [0, 1]) combined with the
    same hospital's ``earlier`` ones (see the module docstring); returns ``(K, C, H, W)`` in
    [0, 1], in ``current``'s order. With no usable earlier round it returns ``current``."""
    usable = [e for e in earlier if e.shape == current.shape]
    if not usable:
        return current
    now = standardize(current)
    stack = [now] + [_aligned(now, standardize(e.to(current.device))) for e in usable]
    mean = torch.stack(stack).mean(0)
    flat = current.flatten(1)
    scale = flat.std(1, unbiased=False).view(-1, 1, 1, 1)
    offset = flat.mean(1).view(-1, 1, 1, 1)
    return (standardize(mean) * scale + offset).clamp(0, 1)
