"""Inverting Gradients through the real client and the server's hook, scored by the protocol.

A defended client (no defense) trains on real MNI152 slices; the curious server's hook builds
the observation from what crossed the wire, the attack reconstructs, and the scorer compares.
The numbers asserted are far above what a random image gets (measured: random images score
about 5-8 dB PSNR and SSIM near 0 against these slices).
"""

from __future__ import annotations

import numpy as np
import torch

from attacks import Prior
from clients.defended import DefendedClient, LocalData
from fl_shadow import flower_keys as keys
from fl_shadow.config import load_config
from fl_shadow.data import client_dataset, load_dataset
from fl_shadow.scoring import Scorer, score_reconstruction
from fl_shadow.server_app import model_builder
from strategies.attack_hook import AttackHook


def attack_client(client: int, *overrides: str):  # type: ignore[no-untyped-def]
    # the default config: ConvNet width 32, 32 px, Inverting Gradients' default parameters
    config = load_config(None, ["train.device=cpu", "attack.params.progress=false", *overrides])
    splits = load_dataset(config.data, seed=config.seed)
    build = model_builder(config, splits)
    torch.manual_seed(config.seed)
    arrays = [v.numpy() for v in build().state_dict().values()]
    indices, local = client_dataset(splits, config.partition, client, seed=config.seed)
    data = LocalData(local.images, local.labels, np.asarray(indices), splits.mean, splits.std,
                     splits.num_classes)
    sent, n, metrics = DefendedClient(config, client, data, None, send_audit=True).fit(
        arrays, {keys.SERVER_ROUND: 1, keys.NUM_ROUNDS: 1})
    prior = Prior(model_factory=build, image_shape=splits.image_shape,
                  num_classes=splits.num_classes, mean=splits.mean, std=splits.std)
    hook = AttackHook(config, prior, list(build().state_dict()),
                      label_lookup=splits.train.labels, device=torch.device("cpu"))
    outcome = hook.run(1, client, arrays, sent, n, metrics)
    assert outcome is not None
    scores = Scorer(splits.train).score(outcome.reconstruction, outcome.audit)
    truth_idx = [i for batch in outcome.audit for i in batch]
    g = torch.Generator().manual_seed(0)
    random = torch.rand(len(truth_idx), *splits.image_shape, generator=g)
    baseline = score_reconstruction(random, outcome.reconstruction.labels,
                                    splits.train.images[truth_idx],
                                    splits.train.labels[truth_idx])
    return scores, baseline


def test_one_image_update_is_reconstructed() -> None:
    scores, baseline = attack_client(0)
    assert scores.summary["label_accuracy"] == 1.0
    assert scores.summary["psnr"] > 17.0 > baseline.summary["psnr"] + 8
    assert scores.summary["ssim"] > 0.6 > baseline.summary["ssim"] + 0.5
    assert scores.summary["lpips"] < 0.1 < baseline.summary["lpips"]


def test_four_image_update_is_reconstructed_with_recovered_labels() -> None:
    scores, baseline = attack_client(1)
    assert scores.summary["num_matched"] == 4
    assert scores.summary["label_accuracy"] >= 0.75
    assert scores.summary["psnr"] > baseline.summary["psnr"] + 6
    assert scores.summary["ssim"] > baseline.summary["ssim"] + 0.3
