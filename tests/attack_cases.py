"""Small client updates for the optimization-attack tests (DLG, iDLG, GradInversion).

A tiny ConvNet trains for real (:func:`fl_shadow.training.train_locally`, no defense) on
downsampled scikit-image samples; the server's view is packaged as an
:class:`~attacks.base.Observation`. Scores come from the project's protocol
(:func:`fl_shadow.scoring.score_reconstruction`), outside the attack.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import SimpleNamespace

import torch

from attacks import Observation, Prior
from fl_shadow.defenses.base import Defense, DefenseContext
from fl_shadow.models import ConvNet
from fl_shadow.sample_images import sample_images
from fl_shadow.scoring import score_reconstruction
from fl_shadow.training import LocalTraining, train_locally

SIZE, CLASSES = 16, 4
MEAN, STD = (0.5,), (0.25,)


@dataclass(frozen=True)
class Case:
    """One attacked update and the truth the test scores against (never given to attacks).

    Attributes:
        observation, prior: what the attack receives.
        truth: ``(N, 1, S, S)`` the images in [0, 1], in the client's step order.
        labels: ``(N,)`` their labels, same order.
    """

    observation: Observation
    prior: Prior
    truth: torch.Tensor
    labels: torch.Tensor


def client_update(labels: list[int], plan: LocalTraining, *, norm: str = "batch",
                  width: int = 8, momentum: float | None = 0.1, give_labels: bool = False,
                  seed: int = 0, images: torch.Tensor | None = None,
                  defense: object | None = None) -> Case:
    """Train a fresh ConvNet on the first ``len(labels)`` samples, return the server's view.

    ``momentum`` is the BatchNorm layers' (part of the public architecture). ``images``
    (``(N, 1, SIZE, SIZE)`` in [0, 1]) replace the samples; ``defense`` (a built
    :class:`~fl_shadow.defenses.base.Defense`) runs around the local training and on the
    update, as in :class:`clients.defended.DefendedClient`.
    """
    images = sample_images(len(labels), SIZE) if images is None else images

    def factory() -> ConvNet:
        model = ConvNet(1, CLASSES, width=width, norm=norm, image_size=SIZE)
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.momentum = momentum
        return model

    torch.manual_seed(seed)
    model = factory()
    global_state = {k: v.clone() for k, v in model.state_dict().items()}
    y = torch.tensor(labels)
    ctx = (SimpleNamespace(step=0) if defense is None else DefenseContext(
        server_round=1, num_rounds=1, client_id=0, device=torch.device("cpu"),
        generator=torch.Generator().manual_seed(seed + 1), mean=MEAN, std=STD))
    result = train_locally(model, (images - MEAN[0]) / STD[0], y, plan,
                           defense=Defense() if defense is None else defense, ctx=ctx,
                           generator=torch.Generator().manual_seed(seed))
    num = len(labels)
    order = torch.tensor([i for batch in result.batches for i in batch])[:num]
    client_state = model.state_dict()
    if defense is not None:
        update = defense.protect_update(
            {k: client_state[k] - global_state[k] for k in global_state}, model, ctx)
        client_state = {k: global_state[k] + update[k] for k in global_state}
    observation = Observation(global_state=global_state, client_state=client_state,
                              num_examples=num, training=plan,
                              num_images=plan.num_distinct_images(num),
                              labels=y[order] if give_labels else None)
    prior = Prior(model_factory=factory, image_shape=(1, SIZE, SIZE), num_classes=CLASSES,
                  mean=MEAN, std=STD)
    return Case(observation, prior, images[order], y[order])


def scores(images: torch.Tensor, labels: torch.Tensor, case: Case) -> dict[str, float]:
    """The protocol's matched PSNR/SSIM/label accuracy of ``images`` against the case."""
    return score_reconstruction(images, labels, case.truth, case.labels).summary


def random_scores(case: Case, seed: int = 123) -> dict[str, float]:
    """What an attack's random start scores: ``N(0, 1)`` in normalized space, de-normalized."""
    g = torch.Generator().manual_seed(seed)
    noise = (torch.randn(case.truth.shape, generator=g) * STD[0] + MEAN[0]).clamp(0, 1)
    return scores(noise, case.labels, case)
