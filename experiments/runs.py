"""Helpers shared by the experiment scripts: run a config once, read its results folder."""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

from fl_shadow.report import read_jsonl

ROOT = Path(__file__).resolve().parent.parent


def run_once(config: Path, run_dir: Path, overrides: list[str], label: str) -> None:
    """``fl-shadow run`` ``config`` into ``run_dir`` unless a completed run is already there."""
    status = run_dir / "status.json"
    if status.exists() and json.loads(status.read_text()).get("state") == "completed":
        print(f"{label}: reusing {run_dir}", flush=True)
        return
    cmd = [str(Path(sys.executable).parent / "fl-shadow"), "run", str(config),
           "--run-dir", str(run_dir)]
    for item in overrides:
        cmd += ["--set", item]
    subprocess.run(cmd, check=True)


def load_run(run_dir: Path) -> dict[str, list[dict[str, Any]]]:
    """The rows of a results folder: utility, privacy, fit (and client_utility if any)."""
    return {name: read_jsonl(run_dir / f"{name}.jsonl")
            for name in ("utility", "privacy", "fit", "client_utility")}


def mean_fit_seconds(fits: list[dict[str, Any]], rounds: set[int]) -> float:
    """Mean client ``fit`` seconds over the given rounds (nan if none)."""
    values = [float(r["fit_seconds"]) for r in fits if r["round"] in rounds]
    return statistics.fmean(values) if values else float("nan")
