"""Generative priors trained by the project on public data (no downloads).

- :mod:`~fl_shadow.generative.networks`: the generator (and its discriminator);
- :mod:`~fl_shadow.generative.pretrain`: GAN pretraining on the public split, checkpoints;
- :mod:`~fl_shadow.generative.public`: ``pretrained_generator(config)``, the experiment's
  generator from the cache (trained into it when missing; not imported here: it loads data);
- :mod:`~fl_shadow.generative.inversion`: fitting per-image latent codes to images.

Used by the shadow defense (its shadow generator) and by the generative-prior attacks.
"""

from fl_shadow.generative.inversion import LatentFit, fit_latents
from fl_shadow.generative.networks import Discriminator, ImageGenerator, base_resolution, to_unit
from fl_shadow.generative.pretrain import (GeneratorCheckpoint, checkpoint_path, load_checkpoint,
                                           train_and_save, train_generator)

__all__ = ["Discriminator", "GeneratorCheckpoint", "ImageGenerator", "LatentFit",
           "base_resolution", "checkpoint_path", "fit_latents", "load_checkpoint",
           "to_unit", "train_and_save", "train_generator"]
