"""What the Shadow Defense costs a hospital (issue 15, item 5): client round time as a ratio to
a FedAvg client round, on the same data, model and weights, in one run.

For every client of the config the script times ``DefendedClient.fit``:

* **FedAvg**: the same client with ``defense.name=none`` (median of ``--repeats``);
* **round 1**: a fresh shadow client (the latent fit, Grad-CAM++, fine-tuning at every step);
* **training round**: round 2, its state carried over from round 1 through Flower's node
  context as in a real run (median of ``--repeats``, each from the round-1 state); none when
  ``shadow_final_round`` is 1 (the shadow trains in round 1 only);
* **frozen round**: round ``shadow_final_round + 1``, the noise memory frozen (median).

and splits the shadow's time into the latent fit, the Grad-CAM++ maps and the fine-tuning
(the client's own metrics). Ratios are the sum over clients of the shadow's time over the sum
of FedAvg's (a federation waits for all its clients), and per client. Targets (issue 15): round
1 <= 10x, training rounds <= 3x, frozen rounds <= 1.2x.

    python experiments/shadow_cost_benchmark.py [CONFIG] [--set key=value ...] [--repeats 3]
        [--label NAME] [--out FILE]

One torch thread (the project's measuring rule); run nothing else heavy meanwhile.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

# First, before anything loads torch: OMP_WAIT_POLICY=PASSIVE (fl_shadow.threads).
from fl_shadow.threads import set_torch_threads  # isort: skip

import numpy as np
import torch
from flwr.app import Context, RecordDict

from clients.defended import LocalData
from fl_shadow import flower_keys as keys
from fl_shadow.apps.experiment import load_experiment
from fl_shadow.apps.federation import Federation
from fl_shadow.data import client_dataset

RESULTS = Path(__file__).resolve().parent / "results"
PARTS = ("latent", "cam", "fine_tune")


def _context(cid: int, state: RecordDict | None = None) -> Context:
    return Context(run_id=1, node_id=cid, node_config={}, state=state or RecordDict(),
                   run_config={})


def _copy_state(context: Context) -> RecordDict:
    """A copy of a node's state, so every repeat of a round starts from the same one."""
    copy = RecordDict()
    for key, record in context.state.items():
        copy[key] = record.__class__(record.to_torch_state_dict()) if hasattr(
            record, "to_torch_state_dict") else record
    return copy


def _fit(federation: Federation, cid: int, data: LocalData, arrays: list[np.ndarray],
         server_round: int, context: Context) -> tuple[float, dict[str, float]]:
    client = federation.client_for(cid, data, context=context, send_audit=False)
    config = {keys.SERVER_ROUND: server_round, keys.NUM_ROUNDS: federation.config.train.rounds}
    start = time.perf_counter()
    _, _, metrics = client.fit(arrays, config)
    seconds = time.perf_counter() - start
    parts = {k: float(metrics.get(f"defense-shadow_{k}_seconds", 0.0)) for k in PARTS}
    return seconds, parts


def measure(config_name: str | None, sets: list[str], repeats: int) -> dict[str, Any]:
    config, components = load_experiment(config_name, sets)
    if config.defense.name != "shadow":
        raise SystemExit(f"{config_name}: defense.name is {config.defense.name!r}, not shadow")
    shadow = Federation(config, components)
    plain = Federation(*load_experiment(config_name, [*sets, "defense.name=none"]))
    final = int(config.defense.params.get("shadow_final_round", 20))
    kinds = ("round1", "training", "frozen") if final >= 2 else ("round1", "frozen")
    splits, arrays = shadow.splits, shadow.initial_arrays()
    rows = []
    for cid in range(config.partition.num_clients):
        indices, local = client_dataset(splits, config.partition, cid, seed=config.seed)
        data = LocalData(local.images, local.labels, np.asarray(indices), splits.mean,
                         splits.std, splits.num_classes)
        fedavg = statistics.median(_fit(plain, cid, data, arrays, 1, _context(cid))[0]
                                   for _ in range(repeats))
        first = _context(cid)
        round1, parts1 = _fit(shadow, cid, data, arrays, 1, first)
        # The shadow trains only in round 1 when shadow_final_round is 1: no training round.
        training = [_fit(shadow, cid, data, arrays, 2, _context(cid, _copy_state(first)))
                    for _ in range(repeats)] if final >= 2 else []
        frozen = [_fit(shadow, cid, data, arrays, final + 1, _context(cid, _copy_state(first)))
                  for _ in range(repeats)]
        row = {"client": cid, "images": len(indices), "fedavg_s": fedavg,
               "round1_s": round1, "round1_parts_s": parts1,
               "frozen_s": statistics.median(t for t, _ in frozen)}
        if training:
            row["training_s"] = statistics.median(t for t, _ in training)
            row["training_parts_s"] = {k: statistics.median(p[k] for _, p in training)
                                       for k in PARTS}
        for kind in kinds:
            row[f"{kind}_ratio"] = row[f"{kind}_s"] / fedavg
        rows.append(row)
        print(f"client {cid} ({len(indices)} images): FedAvg {fedavg:.3f} s, " + ", ".join(
            f"{kind} {row[f'{kind}_s']:.3f} s ({row[f'{kind}_ratio']:.2f}x)" for kind in kinds),
            flush=True)
    total = {kind: sum(r[f"{kind}_s"] for r in rows) for kind in ("fedavg", *kinds)}
    return {
        "clients": rows, "total_s": total,
        "ratio": {k: total[k] / total["fedavg"] for k in kinds},
        "round1_parts_s": {k: sum(r["round1_parts_s"][k] for r in rows) for k in PARTS},
        "training_parts_s": ({k: sum(r["training_parts_s"][k] for r in rows) for k in PARTS}
                             if final >= 2 else None),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("config", nargs="?", default="shadow")
    parser.add_argument("--set", action="append", default=[])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--label", default=None, help="the settings' name in the results file")
    parser.add_argument("--out", type=Path, default=RESULTS / "shadow_cost_cpu.json")
    args = parser.parse_args(argv)
    set_torch_threads()  # FL_SHADOW_THREADS, default 1
    result = measure(args.config, args.set, args.repeats)
    label = args.label or (" ".join(args.set) or "as configured")
    print(json.dumps({"label": label, "ratio": result["ratio"],
                      "round1_parts_s": result["round1_parts_s"],
                      "training_parts_s": result["training_parts_s"],
                      "total_s": result["total_s"]}, indent=1))
    runs = json.loads(args.out.read_text())["runs"] if args.out.is_file() else {}
    runs[label] = {"config": args.config, "overrides": args.set, "repeats": args.repeats,
                   "torch_threads": torch.get_num_threads(), "cpu_count": os.cpu_count(),
                   "machine": platform.machine(), **result}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"what": __doc__.split("\n")[0], "runs": runs}, indent=1)
                        + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
