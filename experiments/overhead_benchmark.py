"""Flower + Ray overhead (issue 17, item 2): one federation in-process vs under ``flwr run``.

The same config (the offline default with a Dirichlet partition over ``--clients`` hospitals,
no attack, ``--rounds`` rounds) runs, interleaved ``--repeats`` times:

* **in-process**: :func:`fl_shadow.apps.inprocess.run_in_process`, Flower's own server loop
  with every client called in one process, one after the other (the sweep runner's engine),
  in a fresh Python process started by this script (``--in-process-child``), timed from its
  launch to its exit like ``flwr run``: both then pay their interpreter's start, their imports
  and each process's first-call costs (loading the dataset, torch's first optimizer step).
  Earlier versions of this benchmark timed the in-process run inside this script's process,
  with its imports done and, from the second repeat on, its dataset and torch warm:
  ``--warm`` times that too ("in-process, warm"), for comparison with those figures;
* **flwr run**: ``fl-shadow run``, i.e. ``flwr run .`` on Flower's simulation engine (a local
  SuperLink, one SuperNode per hospital, Ray actors), as a user runs it.

Both write the same results folder; the benchmark checks that their final accuracy agrees
(same config and seed) and reports the wall times and their ratio, broken down:

* ``flwr run``, from its log: **start-up** until ``[ROUND 1]`` (SuperLink, SuperNodes, Ray,
  the ServerApp building the federation), the **rounds** from ``[ROUND 1]`` to ``[SUMMARY]``,
  and the **shutdown** after; the start-up's stages (``MILESTONES``: the CLI's checks, the
  run's submission to the local SuperLink, the simulation process, the ServerApp's build,
  round 1, the first client reply once Ray and its actors are up); and the rounds after the
  first (round 1 under Ray includes starting Ray and the actors) against the in-process mean
  round;
* in-process: the rounds (the first pays loading the dataset and torch's first-step
  imports), the build, and ``imports``: the rest of the child's wall time (interpreter
  start, imports, exit);
* both: the clients' own compute, the sum of ``fit_seconds`` over ``fit.jsonl`` (each
  client's ``fit``, timed inside the client), so ``rounds - client compute`` is what the
  engine spends around the clients (messages, serialisation, scheduling, evaluation).

    python experiments/overhead_benchmark.py [--clients 20] [--rounds 3] [--repeats 2] [--warm]
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from fl_shadow.apps.federation import build_federation
from fl_shadow.apps.inprocess import run_in_process
from fl_shadow.config import load_config
from fl_shadow.report import read_jsonl
from fl_shadow.threads import set_torch_threads

RESULTS = Path(__file__).resolve().parent / "results"
# (os.environ carries OMP_WAIT_POLICY: importing fl_shadow set it unless it was set.)
QUIET = {"FLWR_TELEMETRY_ENABLED": "0", "RAY_USAGE_STATS_ENABLED": "0",
         "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1"}
ROUND_LINE = re.compile(r"\[ROUND (\d+)\]")
SUMMARY_LINE = re.compile(r"\[SUMMARY\]")
# Where the start-up goes: the first log line of each stage, in order (seconds since launch).
MILESTONES = {
    "cli_checked": re.compile(r"fl-shadow: running"),  # imports + the config's load checks
    "run_submitted": re.compile(r"Successfully started run"),  # local SuperLink, FAB, submit
    "simulation_started": re.compile(r"Starting Flower Simulation"),  # its process is up
    "server_app_built": re.compile(r"results folder:"),  # ServerApp imported, federation built
    "round_1": ROUND_LINE,  # after the global model's initial evaluation
    "first_client_reply": re.compile(r"ClientAppActor"),  # Ray and the actors are up
}


def overrides(clients: int, rounds: int) -> list[str]:
    return ["partition.scheme=dirichlet", f"partition.num_clients={clients}",
            "partition.sizes=null", "partition.batch_sizes=[8]", f"train.rounds={rounds}",
            "attack.name=none", f"strategy.min_fit_clients={clients}",
            f"strategy.min_available_clients={clients}", "train.device=cpu"]


def final_accuracy(run_dir: Path) -> float:
    rows = read_jsonl(run_dir / "utility.jsonl")
    return float(max(rows, key=lambda r: r["round"])["accuracy"])


def client_seconds(run_dir: Path) -> float:
    """The clients' own compute: ``fit_seconds`` summed over every update of the run."""
    return float(sum(r.get("fit_seconds", 0.0) for r in read_jsonl(run_dir / "fit.jsonl")))


def in_process(sets: list[str], run_dir: Path) -> dict[str, Any]:
    """The federation run in this process (imports done; warm after the first repeat)."""
    start = time.perf_counter()
    federation = build_federation(load_config(None, sets))
    built = time.perf_counter()
    run_in_process(federation, run_dir)
    end = time.perf_counter()
    return {"seconds": end - start, "build": built - start, "rounds": end - built,
            "client_compute": client_seconds(run_dir), "accuracy": final_accuracy(run_dir)}


def in_process_fresh(sets: list[str], run_dir: Path) -> dict[str, Any]:
    """:func:`in_process` in a new Python process, timed from its launch to its exit."""
    command = [sys.executable, __file__, "--in-process-child", str(run_dir),
               *[a for s in sets for a in ("--set", s)]]
    start = time.perf_counter()
    proc = subprocess.run(command, capture_output=True, text=True, env={**os.environ, **QUIET},
                          check=False)
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit("in-process child failed:\n" + proc.stderr[-3000:])
    inner = json.loads(proc.stdout.strip().splitlines()[-1])
    # imports: the child's wall time outside its build and rounds (start, imports, exit)
    return {**inner, "seconds": seconds,
            "imports": seconds - inner["build"] - inner["rounds"]}


def flwr_run(sets: list[str], run_dir: Path) -> dict[str, Any]:
    command = [str(Path(sys.executable).parent / "fl-shadow"), "run", "--run-dir",
               str(run_dir), *[a for s in sets for a in ("--set", s)]]
    start = time.perf_counter()
    round_starts: dict[int, float] = {}
    milestones: dict[str, float] = {}
    summary = None
    with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          env={**os.environ, **QUIET}) as proc:
        assert proc.stdout is not None
        log = []
        for line in proc.stdout:
            log.append(line)
            now = time.perf_counter() - start
            for name, pattern in MILESTONES.items():
                if name not in milestones and pattern.search(line):
                    milestones[name] = now
            found = ROUND_LINE.search(line)
            if found and int(found.group(1)) not in round_starts:
                round_starts[int(found.group(1))] = now
            if summary is None and SUMMARY_LINE.search(line):
                summary = now
        code = proc.wait()
    seconds = time.perf_counter() - start
    if code != 0:
        raise SystemExit("fl-shadow run failed:\n" + "".join(log[-30:]))
    first = round_starts.get(1)
    return {"seconds": seconds, "until_round_1": first,
            "rounds": (summary - first) if first is not None and summary is not None else None,
            "shutdown": (seconds - summary) if summary is not None else None,
            "round_starts": [round_starts[k] for k in sorted(round_starts)],
            "milestones": milestones, "client_compute": client_seconds(run_dir),
            "accuracy": final_accuracy(run_dir)}


def median_of(runs: list[dict[str, Any]], key: str) -> float | None:
    values = [r[key] for r in runs if r.get(key) is not None]
    return statistics.median(values) if values else None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--clients", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--out", type=Path, default=RESULTS / "overhead_benchmark_cpu.json")
    parser.add_argument("--warm", action="store_true",
                        help="also time the in-process run inside this process (the earlier "
                        "measurement: imports done, warm after the first repeat)")
    parser.add_argument("--in-process-child", type=Path, metavar="RUN_DIR",
                        help=argparse.SUPPRESS)  # the fresh process of in_process_fresh
    parser.add_argument("--set", action="append", default=[], help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    threads = set_torch_threads()  # FL_SHADOW_THREADS, default 1
    if args.in_process_child is not None:
        print(json.dumps(in_process(args.set, args.in_process_child)))
        return 0
    sets = overrides(args.clients, args.rounds)
    engines = [("in-process", in_process_fresh), ("flwr run", flwr_run)]
    if args.warm:
        engines.append(("in-process, warm", in_process))
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name, _ in engines}
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(args.repeats):  # interleaved: load drifts hit both alike
            for name, fn in engines:
                run = fn(sets, Path(tmp) / f"{name.replace(' ', '-').replace(',', '')}-{i}")
                runs[name].append(run)
                print(f"{name} #{i + 1}: {run['seconds']:.1f} s", flush=True)
    median = {k: statistics.median(r["seconds"] for r in v) for k, v in runs.items()}
    starts = [r["until_round_1"] for r in runs["flwr run"] if r["until_round_1"] is not None]
    parts = {name: {key: median_of(v, key) for key in
                    ("seconds", "until_round_1", "imports", "build", "rounds", "shutdown",
                     "client_compute")
                    if any(key in r for r in v)} for name, v in runs.items()}
    flwr_rounds, inproc_rounds = parts["flwr run"].get("rounds"), parts["in-process"]["rounds"]
    # Rounds after the first (whose time under Ray includes starting Ray and the actors),
    # against the in-process mean round.
    later = [statistics.mean(b - a for a, b in itertools.pairwise(starts_[1:]))
             for starts_ in ([*r["round_starts"], r["seconds"] - r["shutdown"]]
                             for r in runs["flwr run"]
                             if r["shutdown"] is not None and len(r["round_starts"]) > 2)]
    milestones = {name: statistics.median(r["milestones"][name] for r in runs["flwr run"])
                  for name in MILESTONES
                  if all(name in r["milestones"] for r in runs["flwr run"])}
    result = {
        "config": "default.yaml", "overrides": sets, "repeats": args.repeats,
        "torch_threads": threads, "cpu_count": os.cpu_count(), "machine": platform.machine(),
        "runs": runs, "median_seconds": median,
        "ratio_flwr_over_inprocess": median["flwr run"] / median["in-process"],
        **({"ratio_flwr_over_inprocess_warm": median["flwr run"] / median["in-process, warm"]}
           if args.warm else {}),
        "flwr_until_round_1_median": statistics.median(starts) if starts else None,
        "breakdown_median_seconds": parts,
        # the rounds alone (start-up and shutdown left out): the engine's cost per round
        "ratio_rounds_flwr_over_inprocess": (flwr_rounds / inproc_rounds
                                             if flwr_rounds and inproc_rounds else None),
        "flwr_start_up_milestones_median": milestones,
        "flwr_seconds_per_round_after_the_first_median": (statistics.median(later)
                                                          if later else None),
        "in_process_seconds_per_round_median": inproc_rounds / args.rounds,
        "same_accuracy": len({round(r["accuracy"], 6) for v in runs.values() for r in v}) == 1,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))
    print(json.dumps({k: v for k, v in result.items() if k != "runs"}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
