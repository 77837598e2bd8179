"""The reference classifier: how recognisable are the attacker's reconstructions?

A second privacy measure beside PSNR/SSIM/LPIPS, the headline metric of the learned-perturbation
paper (arXiv 2503.16542): a classifier trained on *public* data (disjoint from every client's)
labels each matched reconstruction; ``ref_accuracy`` is the share it labels as the true image's
class. It asks whether the reconstruction still carries the diagnosis, even when it is not
pixel-accurate. Trained by the server in simulation, deterministically under the seed.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from fl_shadow.data.base import ImageSet
from fl_shadow.models import build_model
from fl_shadow.training import predict

log = logging.getLogger(__name__)


def train_reference_classifier(public: ImageSet, *, num_classes: int, mean: Sequence[float],
                               std: Sequence[float], epochs: int = 30, batch_size: int = 64,
                               lr: float = 1e-3, seed: int = 0) -> nn.Module:
    """A ConvNet (width 32, BatchNorm) trained by Adam on ``public`` (images in [0, 1]).

    Returns the model in eval mode; it takes images in [0, 1] (it normalizes them itself).
    """
    torch.manual_seed(seed)
    c, h = public.images.shape[1], public.images.shape[2]
    net = build_model("convnet", in_channels=c, num_classes=num_classes, image_size=h)
    model = _Normalized(net, mean, std)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    g = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(epochs):
        order = torch.randperm(len(public), generator=g)
        for start in range(0, len(order), batch_size):
            idx = order[start:start + batch_size]
            if len(idx) < 2:  # BatchNorm needs two samples
                continue
            loss = F.cross_entropy(model(public.images[idx].float()), public.labels[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    model.eval()
    accuracy = float((predict(model, public.images.float()) == public.labels).float().mean())
    log.info("reference classifier: %d public images, train accuracy %.3f", len(public),
             accuracy)
    return model


class _Normalized(nn.Module):
    def __init__(self, net: nn.Module, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        self.net = net
        self.register_buffer("mean", torch.tensor(tuple(mean)).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(tuple(std)).view(1, -1, 1, 1))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.net((images - self.mean) / self.std)
