"""Grad-CAM++ foreground maps of the task model (pytorch-grad-cam).

Used by the shadow defense (to spare the task-relevant foreground from noise) and by scoring
(privacy metrics inside the foreground). The map is taken at the model's last conv block
(``model.cam_layer()``), for each image's own label, on a copy of the model in eval mode, so
the caller's model -- its weights, BN running statistics and mode -- is left untouched.

The backward pass only runs through the classifier head: the features are computed under
``no_grad`` and re-enter the head through an identity layer that Grad-CAM++ hooks, so the cost
is one forward pass plus a head-sized backward.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

__all__ = ["cam_maps", "top_fraction_mask"]


class _HeadOnly(nn.Module):
    """``forward_features`` without autograd, then an identity hook point, then the head."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.cam_point = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            features = self.model.forward_features(x)
        features = self.cam_point(features.detach().requires_grad_(True))
        return self.model.forward_head(features)


def cam_maps(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, *,
             batch_size: int = 64) -> torch.Tensor:
    """Grad-CAM++ of each image for its label, upsampled to the image and min-max scaled.

    Args:
        model: a task model with ``forward_features``/``forward_head`` (see
            :mod:`fl_shadow.models`); not modified.
        images: ``(N, C, H, W)`` normalized inputs.
        labels: ``(N,)`` the class each map explains.

    Returns:
        ``(N, H, W)`` float maps in [0, 1] on ``images.device`` (all zeros where the map is flat).
    """
    if len(images) == 0:
        return images.new_zeros((0, *images.shape[2:]))
    # Imported here: pytorch-grad-cam loads torchvision, OpenCV, scikit-learn and matplotlib
    # (~2.8 s), which every Flower process importing the defenses would pay at start-up.
    from pytorch_grad_cam import GradCAMPlusPlus
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    wrapped = _HeadOnly(copy.deepcopy(model)).eval()
    maps = []
    with GradCAMPlusPlus(model=wrapped, target_layers=[wrapped.cam_point]) as cam:
        for start in range(0, len(images), batch_size):
            x = images[start:start + batch_size]
            targets = [ClassifierOutputTarget(int(c)) for c in labels[start:start + batch_size]]
            maps.append(torch.as_tensor(cam(input_tensor=x, targets=targets)))
    out = torch.cat(maps).float().nan_to_num(0.0).clamp(0, 1)
    return out.to(images.device)


def top_fraction_mask(maps: torch.Tensor, fraction: float) -> torch.Tensor:
    """Boolean ``(N, H, W)`` mask of each map's top ``fraction`` pixels (at least one pixel).

    Exactly ``max(1, round(fraction * H * W))`` pixels are set (ties broken by position).
    """
    n, h, w = maps.shape
    k = max(1, int(round(fraction * h * w)))
    flat = maps.reshape(n, -1)
    top = flat.topk(k, dim=1).indices
    mask = torch.zeros_like(flat, dtype=torch.bool)
    mask.scatter_(1, top, True)
    return mask.view(n, h, w)
