"""Flower's own DP against the curious server: which setups stop Inverting Gradients?

One federation per row, all from ``fl_shadow/configs/flower_dp.yaml`` (the offline default:
same data, partition, model and seed; 10 rounds; Inverting Gradients on the 1-image and the
4-image hospitals in round 1), with ``strategy.flower_dp`` set to: no DP; central DP with
server-side clipping; central DP with client-side clipping (both noise_multiplier 1, clipping
norm 2, below every client's round-1 update norm); ``LocalDpMod`` at epsilon 1 and 10 (what a
user would pick), 100 and 1000 (where its noise is about the size of one update value).

Per row: attack PSNR / SSIM / LPIPS for each attacked hospital, final test accuracy, macro-F1
and loss of the global model, and whether the DP setup stops the curious server. That verdict
is derived from the numbers, against a *blind guess*: the mean image of the public split
(what an attacker who ignores the update would output), scored with the same metric protocol
against the same attacked images. Per attacked client, the attack *leaks* if its
reconstruction beats the blind guess on all of PSNR, SSIM and LPIPS, is *stopped* if it beats
it on none, and is *partial* otherwise; a row stops the server ("yes") when every attacked
client is stopped, "no" when any leaks, "partly" otherwise.

A run whose folder already says ``completed`` is reused, so a crash loses nothing, and rows can
be run one at a time (``--only``), e.g. one per hold of the shared lock.

Usage::

    python experiments/flower_dp_table.py [--out-dir results/flower_dp_table]
        [--report experiments/results/flower_dp_table_cpu.md] [--only none,server-clip]
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import statistics
import sys
from pathlib import Path
from typing import Any

# First, before anything loads torch: OMP_WAIT_POLICY=PASSIVE (fl_shadow.threads).
from fl_shadow.threads import set_torch_threads  # isort: skip

import torch
from runs import ROOT, load_run, run_once

from fl_shadow import metrics
from fl_shadow.checkpoint import load_checkpoint
from fl_shadow.config import SHIPPED_CONFIGS, ExperimentConfig, load_config
from fl_shadow.data import client_dataset, load_dataset
from fl_shadow.models import ModelArchitecture

CONFIG = SHIPPED_CONFIGS / "flower_dp.yaml"
MODE = "strategy.flower_dp.mode"
EPSILON = "strategy.flower_dp.epsilon"
# (row label, results folder, overrides of flower_dp.yaml)
ROWS: list[tuple[str, str, list[str]]] = [
    ("no DP (FedAvg)", "none", [f"{MODE}=none"]),
    ("central DP, server-side clipping", "server-clip", [f"{MODE}=server_side_clipping"]),
    ("central DP, client-side clipping", "client-clip", [f"{MODE}=client_side_clipping"]),
    ("LocalDpMod, ε=1", "ldp-eps1", [f"{MODE}=local_dp", f"{EPSILON}=1"]),
    ("LocalDpMod, ε=10", "ldp-eps10", [f"{MODE}=local_dp", f"{EPSILON}=10"]),
    ("LocalDpMod, ε=100", "ldp-eps100", [f"{MODE}=local_dp", f"{EPSILON}=100"]),
    ("LocalDpMod, ε=1000", "ldp-eps1000", [f"{MODE}=local_dp", f"{EPSILON}=1000"]),
]
METRICS = ("psnr", "ssim", "lpips")


def received(config: ExperimentConfig) -> str:
    """What the server receives from each client, in words, with the noise std per value."""
    dp = config.strategy.flower_dp
    n = config.partition.num_clients
    if dp.mode == "none":
        return "raw update"
    if dp.mode == "server_side_clipping":
        return (f"raw update (clipped to {dp.clipping_norm:g} on the server, then noise "
                f"σ={dp.noise_multiplier * dp.clipping_norm / n:.3g} on the aggregate)")
    if dp.mode == "client_side_clipping":
        return (f"update clipped to {dp.clipping_norm:g} (noise "
                f"σ={dp.noise_multiplier * dp.clipping_norm / n:.3g} on the aggregate)")
    std = dp.sensitivity * math.sqrt(2 * math.log(1.25 / dp.delta)) / dp.epsilon
    return f"update clipped to {dp.clipping_norm:g} + noise σ={std:.3g} per value"


def blind_guess(config: ExperimentConfig) -> dict[int, dict[str, float]]:
    """Scores of the public split's mean image against each attacked client's images.

    With one local epoch, each attacked client here trains on its whole local set in one
    batch (1 image / batch 1, 4 images / batch 4), so the attacked images are the client's.
    """
    splits = load_dataset(config.data, seed=config.seed)
    guess = splits.public.images.mean(dim=0, keepdim=True).clamp(0, 1)
    out = {}
    for cid in config.attack.clients:
        _, local = client_dataset(splits, config.partition, cid, seed=config.seed)
        if config.partition.batch_size_of(cid) < len(local):
            raise ValueError(f"client {cid}: more than one batch; the attacked images are not "
                             "its whole local set")
        truth = local.images
        out[cid] = metrics.privacy_metrics(guess.expand(len(truth), -1, -1, -1), truth)
    return out


def negative_bn_variances(run_dir: Path, config: ExperimentConfig) -> int:
    """BatchNorm running variances below zero in the run's final global model (Flower's DP
    noise is added to every array of the state_dict; a negative variance makes BN output NaN)."""
    splits = load_dataset(config.data, seed=config.seed)
    m = config.model
    architecture = ModelArchitecture(m.name, splits.image_shape[0], splits.num_classes,
                                     splits.image_shape[1], m.width, m.norm)
    names = list(architecture().state_dict())
    arrays = load_checkpoint(run_dir).arrays
    return sum(int((a < 0).sum()) for k, a in zip(names, arrays, strict=True)
               if k.endswith("running_var"))


def verdict(attack: dict[str, float], guess: dict[str, float]) -> str:
    """``leaks`` / ``partial`` / ``stopped``: how many of PSNR, SSIM, LPIPS beat the guess."""
    beats = [attack["psnr"] > guess["psnr"], attack["ssim"] > guess["ssim"],
             attack["lpips"] < guess["lpips"]]
    return "leaks" if all(beats) else "stopped" if not any(beats) else "partial"


def summarize(run: dict[str, list[dict[str, Any]]],
              guess: dict[int, dict[str, float]]) -> dict[str, Any]:
    final = run["utility"][-1]
    clients: dict[str, dict[str, Any]] = {}
    for cid in sorted(guess):
        rows = [r for r in run["privacy"] if r["client"] == cid]
        if not rows:
            raise ValueError(f"no attack on client {cid} in this run")
        scores = {m: statistics.fmean(float(r[m]) for r in rows) for m in METRICS}
        scores["label_accuracy"] = statistics.fmean(float(r["label_accuracy"]) for r in rows)
        scores["verdict"] = verdict(scores, guess[cid])
        clients[str(cid)] = scores
    verdicts = {c["verdict"] for c in clients.values()}
    stops = "no" if "leaks" in verdicts else "yes" if verdicts == {"stopped"} else "partly"
    return {"clients": clients, "stops_curious_server": stops,
            "accuracy": float(final["accuracy"]), "macro_f1": float(final["macro_f1"]),
            "loss": float(final["loss"])}


def markdown(table: dict[str, dict[str, Any]], guess: dict[int, dict[str, float]],
             machine: str) -> str:
    cids = sorted(guess)
    head = " | ".join(f"c{c} PSNR | c{c} SSIM | c{c} LPIPS" for c in cids)
    lines = [
        "# Flower's own DP against a curious server (offline default)", "",
        f"Machine: {machine}. Config: `fl_shadow/configs/flower_dp.yaml` (the offline default, "
        "10 rounds, seed 0) with `strategy.flower_dp` per row; Inverting Gradients (500 "
        "iterations, labels recovered) on hospital 0 (1 image, batch 1) and hospital 1 "
        "(4 images, batch 4) in round 1. Central DP: noise_multiplier 1, clipping_norm 2 "
        "(round-1 update norms as Flower measures them: 4.0, 2.5, 9.5, 17.1); LocalDpMod: "
        "clipping_norm = sensitivity = 2, δ = 1e-5. Produced by "
        "`experiments/flower_dp_table.py`.", "",
        "Blind guess (the public split's mean image, no update used): " + "; ".join(
            f"c{c}: PSNR {guess[c]['psnr']:.2f}, SSIM {guess[c]['ssim']:.3f}, LPIPS "
            f"{guess[c]['lpips']:.4f}" for c in cids) + ". Stops a curious server? *yes* if "
        "the attack beats the blind guess on none of PSNR/SSIM/LPIPS for every attacked "
        "hospital, *no* if it beats it on all three for any of them, *partly* otherwise. "
        "Utility: the final global model on the test split; BN var < 0: how many of its "
        "BatchNorm running variances the DP noise has pushed below zero (each makes that "
        "channel's output NaN, hence a NaN loss).", "",
        f"| Flower DP | server receives | {head} | label acc. | accuracy | macro-F1 | loss | "
        "BN var < 0 | stops a curious server? |",
        "|---|---|" + "---:|" * (3 * len(cids) + 5) + "---|"]
    for name, r in table.items():
        cells = " | ".join(f"{r['clients'][str(c)]['psnr']:.2f} | "
                           f"{r['clients'][str(c)]['ssim']:.3f} | "
                           f"{r['clients'][str(c)]['lpips']:.4f}" for c in cids)
        label_acc = statistics.fmean(r["clients"][str(c)]["label_accuracy"] for c in cids)
        lines.append(f"| {name} | {r['received']} | {cells} | {label_acc:.2f} | "
                     f"{r['accuracy']:.4f} | {r['macro_f1']:.4f} | {r['loss']:.3f} | "
                     f"{r['negative_bn_variances']} | {r['stops_curious_server']} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out-dir", type=Path, default=ROOT / "results/flower_dp_table")
    parser.add_argument("--report", type=Path,
                        default=ROOT / "experiments/results/flower_dp_table_cpu.md")
    parser.add_argument("--only", default="", help="comma-separated rows to run (default all)")
    args = parser.parse_args(argv)
    set_torch_threads()  # FL_SHADOW_THREADS, default 1
    wanted = {w.strip() for w in args.only.split(",") if w.strip()}
    guess = blind_guess(load_config(CONFIG))
    table: dict[str, dict[str, Any]] = {}
    for name, folder, overrides in ROWS:
        run_dir = args.out_dir / folder
        if not wanted or folder in wanted:
            run_once(CONFIG, run_dir, overrides, name)
        status = run_dir / "status.json"
        if not (status.exists() and json.loads(status.read_text()).get("state") == "completed"):
            continue
        config = load_config(run_dir / "config.yaml")
        table[name] = summarize(load_run(run_dir), guess)
        table[name]["received"] = received(config)
        table[name]["negative_bn_variances"] = negative_bn_variances(run_dir, config)
    machine = (f"{platform.machine()}, {torch.get_num_threads()} torch threads, "
               f"{'CUDA' if torch.cuda.is_available() else 'CPU'}")
    args.report.parent.mkdir(parents=True, exist_ok=True)
    args.report.write_text(markdown(table, guess, machine))
    args.report.with_suffix(".json").write_text(json.dumps(
        {"machine": machine, "blind_guess": {str(c): g for c, g in guess.items()},
         "rows": table}, indent=2, default=float))
    print(args.report.read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
