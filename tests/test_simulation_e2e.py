"""End to end: `fl-shadow run` -> `flwr run` on Flower's simulation engine (Ray), 2 clients.

The run uses its own Flower home and ports (the ``flower_env`` fixture of conftest.py), so it
starts (and the fixture stops) a private local SuperLink instead of reusing one that may run
another checkout's code.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from fl_shadow.apps.experiment import load_experiment
from fl_shadow.apps.federation import Federation
from fl_shadow.apps.inprocess import run_in_process
from fl_shadow.report import read_jsonl

ROOT = Path(__file__).resolve().parents[1]

TINY = """\
name: tiny
seed: 3
data: {dataset: mni152, image_size: 16, channels: 1}
partition: {scheme: sizes, num_clients: 2, sizes: [1, 6], batch_sizes: [1, 3]}
model: {name: convnet, width: 4}
train: {rounds: 2, lr: 0.01, device: cpu}
strategy: {min_fit_clients: 2, min_available_clients: 2}
attack:
  name: inverting_gradients
  rounds: [1, 2]
  clients: [0]
  params: {iterations: 30, progress: false}
"""


def test_flwr_simulation_writes_a_complete_results_folder(tmp_path: Path, flower_env) -> None:  # type: ignore[no-untyped-def]
    config = tmp_path / "tiny.yaml"
    config.write_text(TINY)
    run_dir = tmp_path / "run"
    proc = subprocess.run(
        [sys.executable, "-m", "fl_shadow.apps.cli", "run", str(config), "--run-dir", str(run_dir)],
        cwd=ROOT, env=flower_env, capture_output=True, text=True, timeout=600, check=False)
    log = proc.stdout[-4000:] + proc.stderr[-4000:]
    assert proc.returncode == 0, log

    status = json.loads((run_dir / "status.json").read_text())
    assert status["state"] == "completed" and status["rounds_completed"] == 2

    utility = read_jsonl(run_dir / "utility.jsonl")
    assert [row["round"] for row in utility] == [0, 1, 2]
    assert all(0 <= row["accuracy"] <= 1 and 0 <= row["macro_f1"] <= 1 for row in utility)

    fits = read_jsonl(run_dir / "fit.jsonl")
    assert sorted((r["round"], r["client"]) for r in fits) == [(1, 0), (1, 1), (2, 0), (2, 1)]
    assert all("audit" not in r for r in fits)
    assert {r["num_steps"] for r in fits if r["client"] == 1} == {2}

    privacy = read_jsonl(run_dir / "privacy.jsonl")
    assert [(r["round"], r["client"]) for r in privacy] == [(1, 0), (2, 0)]
    for row in privacy:
        assert row["num_images"] == 1 and row["iterations"] == 30
        assert 0 < row["psnr"] < 100 and -1 <= row["ssim"] <= 1 and row["lpips"] >= 0
    for rnd in (1, 2):
        grid = run_dir / "grids" / f"round{rnd:03d}_client00.png"
        assert grid.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    assert (run_dir / "plots" / "utility.png").exists()
    assert (run_dir / "plots" / "privacy.png").exists()
    saved = (run_dir / "config.yaml").read_text()
    assert "name: tiny" in saved and "iterations: 30" in saved
    summary = (run_dir / "summary.md").read_text()
    assert "| 1 | 0 | 1 |" in summary  # the attacked update's privacy row
    assert summary.strip() in proc.stdout  # printed at the end

    # The in-process driver over the same builder gives the same records, at the real run's
    # server thread count (clients: one thread each, as Ray gives a 1-CPU client).
    threads = status["server_torch_threads"]
    replay = tmp_path / "replay"
    run_in_process(Federation(*load_experiment(config)), replay, server_threads=threads)
    timings = {"fit_seconds", "attack_seconds"}
    for name in ("utility", "privacy", "fit"):
        real = [{k: v for k, v in r.items() if k not in timings}
                for r in read_jsonl(run_dir / f"{name}.jsonl")]
        again = [{k: v for k, v in r.items() if k not in timings}
                 for r in read_jsonl(replay / f"{name}.jsonl")]
        assert real == again, name


def test_cli_refuses_a_bad_config_before_starting_flower(tmp_path: Path, flower_env) -> None:  # type: ignore[no-untyped-def]
    config = tmp_path / "bad.yaml"
    config.write_text(TINY.replace("rounds: 2, lr", "rounds: 0, lr"))
    proc = subprocess.run([sys.executable, "-m", "fl_shadow.apps.cli", "run", str(config)], cwd=ROOT,
                          env=flower_env, capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 2
    assert proc.stderr.strip() == "fl-shadow: train.rounds: expected an integer >= 1, got 0"
    assert not (Path(flower_env["FLWR_HOME"]) / "local-superlink").exists()
