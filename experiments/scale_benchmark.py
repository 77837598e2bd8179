"""Scale (issue 17, item 1): the offline default with 10 to 1,000 simulated hospitals under
``flwr run``, on one machine: wall time, seconds per client, peak memory of the whole process
tree, and what grows with the number of clients.

Each size runs ``fl-shadow run`` (Flower's simulation engine: a local SuperLink, one SuperNode
per hospital, Ray actors) on the offline default with a Dirichlet partition (alpha 1) over
``N`` hospitals, batch 8, ``--rounds`` rounds, Inverting Gradients on hospitals 0 and 1 in
round 1 ("attacks on a few clients"). Each size gets its own ``FLWR_HOME`` and ports, so its
SuperLink is new and is stopped afterwards.

**Memory without double counting**: every 0.5 s the script sums the PSS (proportional set
size: a page shared by k processes counts 1/k in each, ``/proc/<pid>/smaps_rollup``) of the
processes the run started (new since it began, and whose command line names Flower, Ray or
this project), and keeps the peak; RSS summed the same way (an upper bound, shared pages
counted once per process) is recorded beside it.

**Time**: the wall time of the whole command, the time until round 1 starts (start-up:
SuperLink, Ray, actors), and per round from the ``[ROUND k]`` lines of Flower's log.

    python experiments/scale_benchmark.py [--clients 10 100 300 1000] [--rounds 10]
        [--out experiments/results/scale_benchmark_cpu.json]

One torch thread per process (``FL_SHADOW_THREADS``); run nothing else heavy meanwhile.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from fl_shadow.threads import child_env

RESULTS = Path(__file__).resolve().parent / "results"
# The runs' processes inherit the wait policy and thread count (fl_shadow.threads).
QUIET = {"FLWR_TELEMETRY_ENABLED": "0", "RAY_USAGE_STATS_ENABLED": "0",
         "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1", **child_env()}
ROUND_LINE = re.compile(r"\[ROUND (\d+)\]")
OURS = re.compile(r"flwr|flower|ray|fl-shadow|fl_shadow|superlink|supernode", re.IGNORECASE)


def overrides(clients: int, rounds: int) -> list[str]:
    return ["partition.scheme=dirichlet", f"partition.num_clients={clients}",
            "partition.sizes=null", "partition.batch_sizes=[8]", f"train.rounds={rounds}",
            "attack.name=inverting_gradients", "attack.rounds=[1]", "attack.clients=[0, 1]",
            "attack.params.progress=false", f"strategy.min_fit_clients={clients}",
            f"strategy.min_available_clients={clients}", "train.device=cpu"]


def _pids() -> set[int]:
    return {int(p) for p in os.listdir("/proc") if p.isdigit()}


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(
            errors="replace")
    except OSError:
        return ""


def _memory_kib(pid: int) -> tuple[int, int]:
    """(PSS, RSS) of a process in KiB; (0, 0) once it is gone."""
    try:
        text = Path(f"/proc/{pid}/smaps_rollup").read_text()
    except OSError:
        return 0, 0
    values = dict.fromkeys(("Pss", "Rss"), 0)
    for line in text.splitlines():
        name, _, rest = line.partition(":")
        if name in values:
            values[name] = int(rest.split()[0])
    return values["Pss"], values["Rss"]


class TreeMemory(threading.Thread):
    """Samples the summed PSS and RSS of the processes started after ``before``."""

    def __init__(self, before: set[int], interval: float = 0.5) -> None:
        super().__init__(daemon=True)
        self.before, self.interval = before, interval
        self.peak_pss = self.peak_rss = 0
        self.peak_processes = 0
        self.seen: set[int] = set()
        self._stop_event = threading.Event()

    def ours(self) -> list[int]:
        return [p for p in _pids() - self.before if OURS.search(_cmdline(p))]

    def run(self) -> None:
        while not self._stop_event.is_set():
            pids = self.ours()
            self.seen.update(pids)
            pss = rss = 0
            for pid in pids:
                a, b = _memory_kib(pid)
                pss, rss = pss + a, rss + b
            self.peak_pss, self.peak_rss = max(self.peak_pss, pss), max(self.peak_rss, rss)
            self.peak_processes = max(self.peak_processes, len(pids))
            self._stop_event.wait(self.interval)

    def stop(self) -> None:
        self._stop_event.set()
        self.join()


def run_size(clients: int, rounds: int, root: Path, port: int) -> dict[str, Any]:
    run_dir = root / f"run-{clients}"
    home = root / f"flwr-home-{clients}"
    env = {**os.environ, **QUIET, "FLWR_HOME": str(home),
           "FLWR_LOCAL_SUPERLINK_HTTP_API_PORT": str(port),
           "FLWR_LOCAL_CONTROL_API_PORT": str(port + 1)}
    command = [str(Path(sys.executable).parent / "fl-shadow"), "run", "--run-dir", str(run_dir),
               *[a for s in overrides(clients, rounds) for a in ("--set", s)]]
    before = _pids()
    memory = TreeMemory(before)
    memory.start()
    start = time.perf_counter()
    round_starts: dict[int, float] = {}
    log: list[str] = []
    with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          env=env) as proc:
        assert proc.stdout is not None
        for line in proc.stdout:
            log.append(line)
            found = ROUND_LINE.search(line)
            if found and int(found.group(1)) not in round_starts:
                round_starts[int(found.group(1))] = time.perf_counter() - start
                print(f"  {clients} clients: round {found.group(1)} at "
                      f"{round_starts[int(found.group(1))]:.0f} s", flush=True)
        code = proc.wait()
    seconds = time.perf_counter() - start
    memory.stop()
    for pid in memory.ours():  # the size's own SuperLink and what is left of Ray
        try:
            os.kill(pid, signal.SIGTERM)
        except OSError:
            pass
    if code != 0:
        raise SystemExit(f"{clients} clients: fl-shadow run failed:\n" + "".join(log[-30:]))
    utility = [json.loads(x) for x in (run_dir / "utility.jsonl").read_text().splitlines()]
    ordered = [round_starts[k] for k in sorted(round_starts)]
    per_round = [b - a for a, b in zip(ordered, ordered[1:], strict=False)]
    return {
        "clients": clients, "rounds": rounds, "seconds": seconds,
        "until_round_1": round_starts.get(1),
        "round_seconds": per_round,  # round k start -> round k+1 start (the last is left out)
        "seconds_per_client_round": (sum(per_round) / len(per_round) / clients
                                     if per_round else None),
        "peak_pss_gib": memory.peak_pss / 2**20, "peak_rss_sum_gib": memory.peak_rss / 2**20,
        "peak_pss_mib_per_client": memory.peak_pss / 1024 / clients,
        "peak_processes": memory.peak_processes,
        "final_accuracy": float(max(utility, key=lambda r: r["round"])["accuracy"]),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--clients", type=int, nargs="+", default=[10, 100, 300, 1000])
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--out", type=Path, default=RESULTS / "scale_benchmark_cpu.json")
    args = parser.parse_args(argv)
    sizes = json.loads(args.out.read_text())["sizes"] if args.out.is_file() else {}
    with tempfile.TemporaryDirectory(prefix="scale-") as tmp:
        for i, clients in enumerate(args.clients):
            print(f"{clients} clients, {args.rounds} rounds ...", flush=True)
            result = run_size(clients, args.rounds, Path(tmp), 39400 + 10 * i)
            print(json.dumps(result), flush=True)
            sizes[str(clients)] = result
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(json.dumps({
                "what": __doc__.split("\n")[0], "config": "default.yaml",
                "overrides": overrides(0, args.rounds), "torch_threads_per_process":
                os.environ.get("FL_SHADOW_THREADS", "1"), "cpu_count": os.cpu_count(),
                "machine": platform.machine(), "sizes": sizes}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
