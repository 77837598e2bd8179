"""The image generator shared by the shadow defense and the generative-prior attacks.

The reference Shadow Defense uses StyleGAN3 at 256 px, which cannot be trained offline on a CPU.
What both the shadow and GGL/GIAS need from the generator is a smooth image prior that a
per-image latent can be fitted to and whose weights can then be fine-tuned; a progressive
upsampling generator in the DCGAN/ProGAN family gives that, trains in minutes at 32-64 px on a
CPU and scales to 224 px on a GPU by adding upsampling blocks:

* a linear layer maps ``z`` to a ``base x base`` map, where ``base = image_size / 2**k`` is the
  smallest size >= 4 reached by halving (4 for 32/64/128/256 px, 7 for 224 px);
* each block doubles the resolution (nearest upsampling, a 3x3 conv, LeakyReLU) and halves
  the channels down to ``min_channels``;
* pixel normalization instead of BatchNorm, so the output of one image never depends on the
  rest of the batch -- a per-image latent fitted alone or in a batch gives the same image, and
  fine-tuning on a batch of one is well defined;
* ``tanh`` output in [-1, 1]; :func:`to_unit` maps it to [0, 1] images.

The discriminator mirrors it with spectral normalization (hinge loss, see
:mod:`fl_shadow.generative.pretrain`).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm

__all__ = ["ImageGenerator", "Discriminator", "base_resolution", "num_parameters", "to_unit"]


def base_resolution(image_size: int) -> tuple[int, int]:
    """``(base, num_blocks)`` with ``base * 2**num_blocks == image_size`` and ``base >= 4``.

    Raises:
        ValueError: a size that is not ``base * 2**k`` with ``4 <= base < 8`` (e.g. 33, 100).
    """
    blocks, base = 0, image_size
    while base % 2 == 0 and base // 2 >= 4:
        base //= 2
        blocks += 1
    if base >= 8 or base < 4 or blocks == 0:
        raise ValueError(f"image size {image_size} is not 4..7 times a power of two (>= 8)")
    return base, blocks


class _PixelNorm(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.rsqrt(x.pow(2).mean(dim=1, keepdim=True) + 1e-8)


def _channels(level: int, max_channels: int, min_channels: int) -> int:
    return max(min_channels, max_channels >> level)


class ImageGenerator(nn.Module):
    """``z (N, latent_dim) -> images (N, channels, size, size)`` in [-1, 1].

    Args:
        latent_dim: size of ``z``.
        image_size: output side (see :func:`base_resolution`).
        channels: output channels (1 or 3).
        max_channels: channels of the first (smallest) map.
        min_channels: the fewest channels a block may have.
    """

    def __init__(self, latent_dim: int = 128, image_size: int = 32, channels: int = 1, *,
                 max_channels: int = 256, min_channels: int = 32) -> None:
        super().__init__()
        self.latent_dim, self.image_size, self.channels = latent_dim, image_size, channels
        self.base, blocks = base_resolution(image_size)
        c0 = _channels(0, max_channels, min_channels)
        self.stem = nn.Linear(latent_dim, c0 * self.base * self.base)
        self.stem_act = nn.Sequential(nn.LeakyReLU(0.2), _PixelNorm())
        layers: list[nn.Module] = []
        cin = c0
        for level in range(1, blocks + 1):
            cout = _channels(level, max_channels, min_channels)
            layers += [nn.Upsample(scale_factor=2, mode="nearest"),
                       nn.Conv2d(cin, cout, 3, padding=1), nn.LeakyReLU(0.2), _PixelNorm()]
            cin = cout
        self.blocks = nn.Sequential(*layers)
        self.to_image = nn.Conv2d(cin, channels, 1)
        self._c0 = c0

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        x = self.stem_act(self.stem(z).view(-1, self._c0, self.base, self.base))
        return torch.tanh(self.to_image(self.blocks(x)))

    def sample_latents(self, n: int, generator: torch.Generator | None = None,
                       device: torch.device | str = "cpu") -> torch.Tensor:
        """``n`` latents from the prior N(0, I)."""
        z = torch.randn(n, self.latent_dim, generator=generator)
        return z.to(device)


class Discriminator(nn.Module):
    """Mirror of :class:`ImageGenerator` with spectral normalization; one logit per image."""

    def __init__(self, image_size: int = 32, channels: int = 1, *, max_channels: int = 256,
                 min_channels: int = 32) -> None:
        super().__init__()
        base, blocks = base_resolution(image_size)
        cin = _channels(blocks, max_channels, min_channels)
        layers: list[nn.Module] = [spectral_norm(nn.Conv2d(channels, cin, 3, padding=1)),
                                   nn.LeakyReLU(0.2)]
        for level in range(blocks - 1, -1, -1):
            cout = _channels(level, max_channels, min_channels)
            layers += [spectral_norm(nn.Conv2d(cin, cout, 4, stride=2, padding=1)),
                       nn.LeakyReLU(0.2)]
            cin = cout
        self.features = nn.Sequential(*layers)
        self.head = spectral_norm(nn.Linear(cin * base * base, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.flatten(self.features(x), 1)).squeeze(1)


def to_unit(images: torch.Tensor) -> torch.Tensor:
    """Generator output in [-1, 1] -> images in [0, 1]."""
    return (images + 1) / 2


def num_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
