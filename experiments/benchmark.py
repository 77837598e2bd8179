"""Benchmark the default config's moving parts (run by hand; figures go into the README).

Measures, outside Flower so that start-up does not blur the numbers:

* client round time: one ``DefendedClient.fit`` per client of the config (median of repeats);
* attack speed: iterations per second of the configured attack on a real update, and its time;
* peak memory of this process (max RSS) and, on CUDA, peak allocated GPU memory.

Usage::

    python experiments/benchmark.py [CONFIG] [--set key=value ...] [--repeats 3] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import statistics
import sys
import time
from pathlib import Path

# First, before anything loads torch: OMP_WAIT_POLICY=PASSIVE (fl_shadow.threads).
from fl_shadow.threads import set_torch_threads  # isort: skip

import numpy as np
import torch

from clients.defended import LocalData
from fl_shadow import flower_keys as keys
from fl_shadow.apps.experiment import load_experiment
from fl_shadow.apps.federation import Federation
from fl_shadow.data import client_dataset
from strategies import ReceivedUpdate, Skipped


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("config", nargs="?")
    parser.add_argument("--set", action="append", default=[])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=None, help="write the figures as JSON")
    args = parser.parse_args(argv)
    set_torch_threads()  # FL_SHADOW_THREADS, default 1

    t0 = time.perf_counter()
    config, components = load_experiment(args.config, args.set)
    federation = Federation(config, components)
    splits = federation.splits
    data_seconds = time.perf_counter() - t0
    device = federation.device
    arrays = federation.initial_arrays()

    fit_cfg = {keys.SERVER_ROUND: 1, keys.NUM_ROUNDS: config.train.rounds}
    client_times: dict[int, float] = {}
    updates = {}
    for cid in range(config.partition.num_clients):
        indices, local = client_dataset(splits, config.partition, cid, seed=config.seed)
        data = LocalData(local.images, local.labels, np.asarray(indices), splits.mean,
                         splits.std, splits.num_classes)
        times = []
        for _ in range(args.repeats):
            client = federation.client_for(cid, data, context=None, send_audit=True)
            start = time.perf_counter()
            updates[cid] = client.fit(arrays, fit_cfg)
            times.append(time.perf_counter() - start)
        client_times[cid] = statistics.median(times)

    attack_rows = []
    hook = federation.attack_hook()
    if hook is not None:
        scorer = federation.scorer()
        for cid in config.attack.clients or range(config.partition.num_clients):
            sent, n, metrics = updates[cid]
            outcome = hook.run(1, arrays, ReceivedUpdate(cid, sent, n, metrics))
            if isinstance(outcome, Skipped):
                continue
            rec = outcome.reconstruction
            scores = scorer.score(rec, outcome.audit, arrays)
            attack_rows.append({
                "client": cid, "images": int(rec.images.shape[0]),
                "iterations": rec.iterations, "seconds": round(rec.seconds, 2),
                "iterations_per_second": round(rec.iterations / max(rec.seconds, 1e-9), 2),
                **({k: round(v, 4) for k, v in scores.summary.items()} if scores else {}),
            })

    peak_rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    result = {
        "config": args.config or "default", "overrides": args.set,
        "machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} "
                   f"torch threads, device {device}",
        "dataset_load_seconds": round(data_seconds, 2),
        "client_round_seconds": {str(k): round(v, 3) for k, v in client_times.items()},
        "attacks_round1": attack_rows,
        "peak_rss_mb": round(peak_rss_mb, 1),
        "peak_cuda_mb": round(torch.cuda.max_memory_allocated() / 2**20, 1)
        if device.type == "cuda" else None,
    }
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
