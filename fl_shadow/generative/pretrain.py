"""Pretraining the public-data generator, with a cached checkpoint.

The generator is a GAN (hinge loss, spectral-normalised discriminator, Adam with beta1 = 0,
differentiable translation/cutout augmentation of real and fake images, EMA of the generator's
weights) trained on the dataset's ``public`` split only, which is disjoint from every client's
data. The checkpoint holds the EMA generator, like StyleGAN's ``G_ema``.

Checkpoints live in ``<cache>/generators/<dataset>-<size>px-<channels>ch-<hash>.pt``; the hash
covers the generator settings and the public images' bytes, so changing either trains a new one.
Several processes (Ray client actors) may ask for the same checkpoint at once: the first takes a
file lock and trains, the others wait and load; the file is written atomically.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import logging
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from fl_shadow.config import GeneratorConfig
from fl_shadow.generative.networks import Discriminator, ImageGenerator
from fl_shadow.progress import Progress

__all__ = ["GeneratorCheckpoint", "checkpoint_path", "load_checkpoint", "train_and_save",
           "train_generator"]

logger = logging.getLogger(__name__)

CHECKPOINT_FORMAT = 1


@dataclasses.dataclass(frozen=True)
class GeneratorCheckpoint:
    """A loaded checkpoint.

    Attributes:
        generator: the EMA generator, in eval mode, on CPU.
        path: the file it came from.
        meta: training settings, data fingerprint, iterations, seconds and final losses.
    """

    generator: ImageGenerator
    path: Path
    meta: dict[str, Any]


#: The fewest public images a generator trains on (its discriminator's batch statistics need
#: two); :func:`fl_shadow.apps.experiment.check_experiment` refuses fewer at load.
MIN_PUBLIC_IMAGES = 2


def build_generator(spec: GeneratorConfig, image_size: int, channels: int) -> ImageGenerator:
    return ImageGenerator(spec.latent_dim, image_size, channels, max_channels=spec.max_channels,
                          min_channels=spec.min_channels)


def _augment(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Random translation (up to 1/8 of the side, zero fill) and a cutout of half the side."""
    n, _, h, w = x.shape
    pad = max(1, h // 8)
    shifts = torch.randint(-pad, pad + 1, (n, 2), generator=generator)
    padded = F.pad(x, (pad, pad, pad, pad), value=-1.0)
    rows = (torch.arange(h).view(1, h) + pad + shifts[:, :1]).to(x.device)
    cols = (torch.arange(w).view(1, w) + pad + shifts[:, 1:]).to(x.device)
    idx = torch.arange(n, device=x.device).view(n, 1, 1)
    out = padded.permute(0, 2, 3, 1)[idx, rows.view(n, h, 1), cols.view(n, 1, w)]
    out = out.permute(0, 3, 1, 2)
    size = max(1, h // 2)
    corners = torch.randint(0, h - size + 1, (n, 2), generator=generator).to(x.device)
    ys = torch.arange(h, device=x.device).view(1, h, 1)
    xs = torch.arange(w, device=x.device).view(1, 1, w)
    keep = ~(((ys >= corners[:, :1, None]) & (ys < corners[:, :1, None] + size))
             & ((xs >= corners[:, 1:, None]) & (xs < corners[:, 1:, None] + size)))
    return out * keep.unsqueeze(1)


def train_generator(public_images: torch.Tensor, spec: GeneratorConfig, *,
                    device: torch.device | str = "cpu",
                    progress: bool = True) -> tuple[ImageGenerator, dict[str, Any]]:
    """Train a GAN on ``public_images`` (``(N, C, H, W)`` in [0, 1]) and return its EMA generator.

    Deterministic on CPU for a given ``spec.seed`` and images.

    Returns:
        The EMA generator (eval mode, CPU) and a dict of training facts (seconds, final losses).
    """
    if len(public_images) < 2:
        raise ValueError(f"the public split needs at least {MIN_PUBLIC_IMAGES} images to train "
                         "a generator")
    torch.manual_seed(spec.seed)
    rng = torch.Generator().manual_seed(spec.seed)
    device = torch.device(device)
    _, c, h, _ = public_images.shape
    gen = build_generator(spec, h, c).to(device)
    disc = Discriminator(h, c, max_channels=spec.max_channels,
                         min_channels=spec.min_channels).to(device)
    ema = copy.deepcopy(gen).eval().requires_grad_(False)
    opt_g = torch.optim.Adam(gen.parameters(), lr=spec.lr, betas=(0.0, 0.99))
    # Two-timescale rule: the discriminator learns twice as fast (Heusel et al., 2017).
    opt_d = torch.optim.Adam(disc.parameters(), lr=2 * spec.lr, betas=(0.0, 0.99))
    data = (public_images * 2 - 1).to(device)
    augment = (lambda x: _augment(x, rng)) if spec.augment else (lambda x: x)
    start = time.perf_counter()
    d_loss = g_loss = torch.zeros(())
    bar = Progress(spec.iterations, f"generator pretraining ({h}px)", logger, enabled=progress)
    for _ in bar:
        real = data[torch.randint(len(data), (spec.batch_size,), generator=rng).to(device)]
        z = torch.randn(spec.batch_size, spec.latent_dim, generator=rng).to(device)
        fake = gen(z)  # one generator pass serves both steps
        d_loss = (F.relu(1 - disc(augment(real))).mean()
                  + F.relu(1 + disc(augment(fake.detach()))).mean())
        opt_d.zero_grad(set_to_none=True)
        d_loss.backward()
        opt_d.step()

        g_loss = -disc(augment(fake)).mean()
        opt_g.zero_grad(set_to_none=True)
        g_loss.backward()
        opt_g.step()
        with torch.no_grad():
            for pe, pg in zip(ema.parameters(), gen.parameters(), strict=True):
                pe.lerp_(pg, 1 - spec.ema)
        bar.report(d_loss=d_loss.detach(), g_loss=g_loss.detach())
    facts = {"seconds": time.perf_counter() - start, "d_loss": float(d_loss.detach()),
             "g_loss": float(g_loss.detach()), "num_public_images": len(public_images)}
    return ema.cpu(), facts


def _fingerprint(images: torch.Tensor) -> str:
    return hashlib.sha256(images.contiguous().numpy().tobytes()).hexdigest()[:16]


def checkpoint_path(cache: Path, dataset: str, spec: GeneratorConfig,
                    public_images: torch.Tensor) -> Path:
    """Where the checkpoint for these settings and public images lives."""
    _, c, h, _ = public_images.shape
    key = json.dumps({"spec": dataclasses.asdict(spec), "data": _fingerprint(public_images),
                      "format": CHECKPOINT_FORMAT}, sort_keys=True)
    digest = hashlib.sha256(key.encode()).hexdigest()[:12]
    return cache / "generators" / f"{dataset}-{h}px-{c}ch-{digest}.pt"


def load_checkpoint(path: str | Path) -> GeneratorCheckpoint:
    """Load a generator checkpoint written by :func:`train_and_save`.

    Raises:
        FileNotFoundError / ValueError: naming the file.
    """
    path = Path(path)
    blob = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(blob, dict) or blob.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{path}: not a fl_shadow generator checkpoint (format "
                         f"{CHECKPOINT_FORMAT})")
    meta = json.loads(blob["meta"])
    spec = GeneratorConfig(**meta["spec"])
    gen = build_generator(spec, meta["image_size"], meta["channels"])
    gen.load_state_dict(blob["generator"])
    return GeneratorCheckpoint(gen.eval(), path, meta)


def train_and_save(path: Path, dataset: str, public_images: torch.Tensor,
                    spec: GeneratorConfig, *, device: torch.device | str,
                    progress: bool) -> None:
    logger.info("training the %s generator on %d public images (%d iterations) -> %s", dataset,
                len(public_images), spec.iterations, path)
    gen, facts = train_generator(public_images, spec, device=device, progress=progress)
    _, c, h, _ = public_images.shape
    meta = {"spec": dataclasses.asdict(spec), "dataset": dataset, "image_size": h,
            "channels": c, "data": _fingerprint(public_images), **facts}
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
    os.close(fd)
    try:
        torch.save({"format": CHECKPOINT_FORMAT, "generator": gen.state_dict(),
                    "meta": json.dumps(meta)}, tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    logger.info("generator pretrained in %.0f s (d_loss %.3f, g_loss %.3f): %s",
                facts["seconds"], facts["d_loss"], facts["g_loss"], path)
