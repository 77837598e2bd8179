"""Inverting Gradients through the real client and the server's hook, scored by the protocol.

A defended client (no defense) trains on real MNI152 slices; the curious server's hook builds
the observation from what crossed the wire, the attack reconstructs, and the scorer compares.
The numbers asserted are far above what a random image gets (measured: random images score
about 5-8 dB PSNR and SSIM near 0 against these slices).
"""

from __future__ import annotations

import numpy as np
import torch

from clients.defended import LocalData
from fl_shadow import flower_keys as keys
from fl_shadow.apps.federation import Federation
from fl_shadow.config import load_config
from fl_shadow.data import client_dataset
from fl_shadow.scoring import Scorer, score_reconstruction
from fl_shadow.threat_model import AttackOutcome
from strategies.attack_hook import ReceivedUpdate


def attack_client(client: int, *overrides: str):  # type: ignore[no-untyped-def]
    # the default config: ConvNet width 32, 32 px, Inverting Gradients' default parameters
    config = load_config(None, ["train.device=cpu", "attack.params.progress=false", *overrides])
    federation = Federation(config)
    splits = federation.splits
    arrays = federation.initial_arrays()
    indices, local = client_dataset(splits, config.partition, client, seed=config.seed)
    data = LocalData(local.images, local.labels, np.asarray(indices), splits.mean, splits.std,
                     splits.num_classes)
    defended = federation.client_for(client, data, context=None, send_audit=True)
    sent, n, metrics = defended.fit(arrays, {keys.SERVER_ROUND: 1, keys.NUM_ROUNDS: 1})
    hook = federation.attack_hook()
    assert hook is not None
    outcome = hook.run(1, arrays, ReceivedUpdate(client, sent, n, metrics))
    assert isinstance(outcome, AttackOutcome)
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
