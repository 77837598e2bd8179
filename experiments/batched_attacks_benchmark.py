"""Batched seeds and restarts of GradInversion and GIAS (issue 17, item 3): one vmapped
replay per iteration for all of them, against one after the other.

The client updates of ``experiments/attack_speed_benchmark.py`` (the project's default model:
ConvNet width 32 with BatchNorm, 32 px grayscale, 6 classes, one local SGD step, labels given)
are attacked, interleaved ``--repeats`` times, by

* ``gradinversion`` with ``group_size: --seeds`` (the BN prior, group consistency and
  Langevin noise on), ``batch_seeds`` false vs true;
* ``gias`` with ``restarts: --restarts`` and no generator search (stage 1, the part that is
  batched), ``batch_restarts`` false vs true, on a generator of the shipped architecture
  (latent 64, 16-128 channels) with random weights: the timing does not depend on what the
  generator learned, so nothing is trained for this benchmark.

Reported: seed- or restart-iterations per second of the whole ``reconstruct`` call, the
batched/sequential ratio within each repeat (interleaved, so load drifts hit both alike), and
the attack's own final objective of both (equal up to float order: the same trajectories).
Writes ``experiments/results/batched_attacks_cpu.json``.

    python experiments/batched_attacks_benchmark.py [--images 1 4] [--seeds 4] [--restarts 3]
        [--iterations 200] [--repeats 2]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

# First, before anything loads torch: OMP_WAIT_POLICY=PASSIVE (fl_shadow.threads).
from fl_shadow.threads import set_torch_threads  # isort: skip

import torch

from attacks import build_attack
from attack_speed_benchmark import CHANNELS, SIZE, observe, psnr, true_images
from fl_shadow.generative import ImageGenerator

RESULTS = Path(__file__).resolve().parent / "results"


def settings(args: argparse.Namespace) -> dict[str, tuple[str, dict[str, Any], str, int]]:
    """attack name, params, the batching switch, sets per iteration."""
    return {
        "gradinversion": ("gradinversion", {"iterations": args.iterations,
                                            "group_size": args.seeds, "progress": False},
                          "batch_seeds", args.seeds),
        "gias": ("gias", {"latent_iterations": args.iterations, "generator_iterations": 0,
                          "restarts": args.restarts, "progress": False},
                 "batch_restarts", args.restarts),
    }


def run(name: str, params: dict[str, Any], switch: str, batched: bool, sets: int,
        iterations: int, observation, prior, truth) -> dict[str, float]:
    attack = build_attack(name, {**params, switch: batched}, device="cpu", seed=0)
    start = time.perf_counter()
    rec = attack.reconstruct(observation, prior)
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "its": sets * iterations / seconds, "objective": rec.loss,
            "psnr": psnr(rec.images, truth)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--seeds", type=int, default=4)
    parser.add_argument("--restarts", type=int, default=3)
    parser.add_argument("--iterations", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=RESULTS / "batched_attacks_cpu.json")
    args = parser.parse_args(argv)
    set_torch_threads(args.threads)
    torch.manual_seed(0)
    generator = ImageGenerator(64, SIZE, CHANNELS, max_channels=128, min_channels=16).eval()
    results: dict[str, Any] = {}
    for count in args.images:
        truth = true_images(count)
        observation, prior = observe(truth, seed=0)
        prior = replace(prior, generator=generator)
        for label, (name, params, switch, sets) in settings(args).items():
            rows: dict[str, list[dict[str, float]]] = {"sequential": [], "batched": []}
            for repeat in range(args.repeats):
                order = [False, True] if repeat % 2 == 0 else [True, False]
                for batched in order:
                    row = run(name, params, switch, batched, sets, args.iterations,
                              observation, prior, truth)
                    rows["batched" if batched else "sequential"].append(row)
                    print(f"{label} {count} image(s), {'batched' if batched else 'sequential'}"
                          f": {row['its']:.1f} it/s, objective {row['objective']:.5g}",
                          flush=True)
            ratios = [b["its"] / s["its"] for b, s in zip(rows["batched"], rows["sequential"],
                                                          strict=True)]
            results[f"{label}-{count}"] = {
                "attack": name, "params": params, "images": count, "sets": sets,
                "runs": rows, "ratio_batched_over_sequential": ratios,
                "median_ratio": statistics.median(ratios),
                "objective_sequential": rows["sequential"][0]["objective"],
                "objective_batched": rows["batched"][0]["objective"]}
            print(f"{label} {count} image(s): batched / sequential "
                  f"{statistics.median(ratios):.2f}x", flush=True)
    out = {"iterations": args.iterations, "repeats": args.repeats, "torch_threads": args.threads,
           "cpu_count": os.cpu_count(), "machine": platform.machine(),
           "torch": torch.__version__, "results": results}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
