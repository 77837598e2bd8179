"""Checkpoint and resume: a run that dies after round k and is resumed ends with the numbers of an
uninterrupted run under the same seed.

Most tests drive Flower's own legacy server loop (``flwr.server.Server``, the one the ServerApp
runs) in-process with the real strategy (``build_strategy``) and the real defended clients, so
they need no Ray; one end-to-end test kills a real Flower simulation after round 1 and resumes
it with ``fl-shadow resume``.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

import fl_shadow.apps.federation as federation_module
from clients.defended import DefendedClient
from fl_shadow import flower_keys as keys
from fl_shadow.checkpoint import (
    CHECKPOINT_FILE,
    Checkpoint,
    capture_rng,
    config_digest,
    keeps_client_state,
    load_checkpoint,
    prepare_resume,
    restore_rng,
    save_checkpoint,
)
from fl_shadow.apps.cli import QUIET_ENV, flwr_command
from fl_shadow.apps.cli import main as cli_main
from fl_shadow.apps.federation import Federation
from fl_shadow.apps.inprocess import run_in_process
from fl_shadow.config import ExperimentConfig, load_config
from fl_shadow.errors import ResumeError
from fl_shadow.report import RunRecorder, drop_rows_after, read_jsonl
from flower_app import HOLD_AFTER_ROUND_1, write_app
from processes import process_tree, processes_mentioning, signal_all, wait_gone

ROOT = Path(__file__).resolve().parents[1]

TINY = [
    "name=tiny", "seed=5", "data.image_size=16", "partition.scheme=sizes",
    "partition.num_clients=2", "partition.sizes=[2, 6]", "partition.batch_sizes=[1, 3]",
    "model.width=4", "train.rounds=3", "train.device=cpu", "strategy.min_fit_clients=2",
    "strategy.min_available_clients=2", "attack.rounds=[2, 3]", "attack.clients=[0]",
    "attack.params.iterations=4", "attack.params.progress=false",
]
# Wall-clock fields: the only ones allowed to differ between two runs of the same seed.
TIMINGS = ("fit_seconds", "attack_seconds")


def tiny_config(*extra: str) -> ExperimentConfig:
    return load_config(None, [*TINY, *extra])


_REFERENCES: dict[tuple, torch.nn.Module] = {}


@pytest.fixture(autouse=True)
def _train_reference_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """The reference classifier is a deterministic function of the public split and the seed
    (used in eval mode only); train it once for this module instead of once per server start."""
    train = federation_module.train_reference_classifier

    def once(public, *, seed: int, **kwargs):  # type: ignore[no-untyped-def]
        key = (tuple(public.images.shape), seed)
        if key not in _REFERENCES:
            _REFERENCES[key] = train(public, seed=seed, **kwargs)
        return _REFERENCES[key]

    monkeypatch.setattr(federation_module, "train_reference_classifier", once)


# ---- an in-process federation on Flower's legacy server loop ---------------------------------
class Killed(Exception):
    """Stands in for the process dying in the middle of a round."""


def run_federation(config: ExperimentConfig, run_dir: Path, *, resume: Checkpoint | None = None,
                   die_in_round: int | None = None) -> list[np.ndarray]:
    """Run (or continue) the federation in-process; returns the final global model.

    Fresh clients with empty node state every call, as in a new federation after a restart.
    ``die_in_round``: the central evaluation of that round raises, after the round's fit and
    attack rows were written.
    """
    federation = Federation(config)
    if die_in_round is not None:
        evaluate_fn = federation.evaluate_fn()

        def dying(server_round, arrays, cfg):  # type: ignore[no-untyped-def]
            if server_round == die_in_round:
                raise Killed(f"killed in round {server_round}")
            return evaluate_fn(server_round, arrays, cfg)

        federation.evaluate_fn = lambda: dying  # type: ignore[method-assign]
    run_in_process(federation, run_dir, resume=resume)
    return load_checkpoint(run_dir).arrays


def without_timings(rows: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k not in TIMINGS} for r in rows]


def assert_same_results(a: Path, b: Path) -> None:
    for name in ("utility.jsonl", "fit.jsonl", "privacy.jsonl", "client_utility.jsonl"):
        assert without_timings(read_jsonl(a / name)) == without_timings(read_jsonl(b / name)), name
    ckpt_a, ckpt_b = load_checkpoint(a), load_checkpoint(b)
    assert ckpt_a.server_round == ckpt_b.server_round
    assert all(np.array_equal(x, y) for x, y in zip(ckpt_a.arrays, ckpt_b.arrays, strict=True))
    utility_table = lambda p: (p / "summary.md").read_text().split("## Privacy")[0]  # noqa: E731
    assert utility_table(a) == utility_table(b)


# ---- resume in-process ---------------------------------------------------------------------
def test_run_dying_in_round_2_resumes_to_the_uninterrupted_numbers(tmp_path: Path) -> None:
    config = tiny_config()
    whole = tmp_path / "whole"
    final_whole = run_federation(config, whole)

    broken = tmp_path / "broken"
    with pytest.raises(Killed):
        run_federation(config, broken, die_in_round=2)
    status = json.loads((broken / "status.json").read_text())
    assert status["state"] == "failed" and status["rounds_completed"] == 1
    assert load_checkpoint(broken).server_round == 1
    # The dead round left partial rows behind (its fits and its attack), and a torn line.
    assert {r["round"] for r in read_jsonl(broken / "fit.jsonl")} == {1, 2}
    assert [r["round"] for r in read_jsonl(broken / "privacy.jsonl")] == [2]
    with (broken / "fit.jsonl").open("a") as f:
        f.write('{"round": 2, "client": 1, "num_ex')

    resumed_config, checkpoint = prepare_resume(broken)
    assert resumed_config == config and checkpoint.server_round == 1
    final_resumed = run_federation(resumed_config, broken, resume=checkpoint)

    assert all(np.array_equal(x, y) for x, y in zip(final_whole, final_resumed, strict=True))
    assert_same_results(whole, broken)
    assert [r["round"] for r in read_jsonl(broken / "utility.jsonl")] == [0, 1, 2, 3]
    assert sorted((r["round"], r["client"]) for r in read_jsonl(broken / "fit.jsonl")) == [
        (1, 0), (1, 1), (2, 0), (2, 1), (3, 0), (3, 1)]
    assert [(r["round"], r["client"]) for r in read_jsonl(broken / "privacy.jsonl")] == [
        (2, 0), (3, 0)]
    status = json.loads((broken / "status.json").read_text())
    assert status["state"] == "completed" and status["rounds_completed"] == 3
    assert status["resumed_after"] == [1]
    assert load_checkpoint(broken).server_round == 3


def test_resume_numbers_rounds_from_the_checkpoint(tmp_path: Path) -> None:
    """Clients must see rounds k+1.. (their randomness and the defenses' schedules depend on
    it), and round 0 is not evaluated or recorded again."""
    config = tiny_config("attack.name=none", "train.rounds=4")
    run_dir = tmp_path / "run"
    with pytest.raises(Killed):
        run_federation(config, run_dir, die_in_round=3)
    _, checkpoint = prepare_resume(run_dir)
    assert checkpoint.server_round == 2

    seen: list[tuple[int, int]] = []
    fit = DefendedClient.fit

    def spy(self, parameters, cfg):  # type: ignore[no-untyped-def]
        seen.append((int(cfg[keys.SERVER_ROUND]), int(cfg[keys.NUM_ROUNDS])))
        return fit(self, parameters, cfg)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(DefendedClient, "fit", spy)
        run_federation(config, run_dir, resume=checkpoint)
    assert sorted(set(seen)) == [(3, 4), (4, 4)]
    assert [r["round"] for r in read_jsonl(run_dir / "utility.jsonl")] == [0, 1, 2, 3, 4]


def test_federated_evaluation_closes_the_round_before_the_checkpoint(tmp_path: Path) -> None:
    """With a private-model defense the round ends after the clients' own evaluation: the
    checkpoint follows it, and the resumed summary keeps the clients' columns."""
    config = tiny_config("attack.name=none", "defense.name=fedkl",
                         "defense.params.key_length=8")
    whole, broken = tmp_path / "whole", tmp_path / "broken"
    run_federation(config, whole)
    log_client_utility = RunRecorder.log_client_utility

    def dying(self, server_round, rows):  # type: ignore[no-untyped-def]
        if server_round == 3:
            raise Killed("killed during the clients' evaluation of round 3")
        return log_client_utility(self, server_round, rows)

    with pytest.MonkeyPatch.context() as mp, pytest.raises(Killed):
        mp.setattr(RunRecorder, "log_client_utility", dying)
        run_federation(config, broken)
    # Round 3 was aggregated and centrally evaluated, but not closed: no checkpoint for it.
    assert [r["round"] for r in read_jsonl(broken / "utility.jsonl")] == [0, 1, 2, 3]
    assert load_checkpoint(broken).server_round == 2
    assert {r["round"] for r in read_jsonl(broken / "client_utility.jsonl")} == {1, 2}
    _, checkpoint = prepare_resume(broken)
    run_federation(config, broken, resume=checkpoint)
    summary = (broken / "summary.md").read_text()
    assert "clients' accuracy" in summary
    # Rounds 1-2 ran with the same client state as the whole run: identical rows up to there.
    for name in ("utility.jsonl", "client_utility.jsonl"):
        assert [r for r in read_jsonl(broken / name) if r["round"] <= 2] == \
            [r for r in read_jsonl(whole / name) if r["round"] <= 2]
    utility = summary.split("## Privacy")[0]
    table = [line for line in utility.splitlines() if line.startswith("| 3 |")]
    assert len(table) == 1 and table[0].count("|") == 7 and "nan" not in table[0]
    # What resume cannot restore: the clients' keys lived in their node state, and the new
    # federation's clients draw new ones in round 3, so round 3 differs from the whole run.
    last = [[r for r in read_jsonl(d / "client_utility.jsonl") if r["round"] == 3]
            for d in (whole, broken)]
    assert last[0] != last[1]


# ---- the checkpoint file -------------------------------------------------------------------
def test_checkpoint_round_trips_weights_and_random_states(tmp_path: Path) -> None:
    arrays = [np.arange(6, dtype=np.float32).reshape(2, 3), np.array(7, dtype=np.int64),
              np.zeros(0, dtype=np.float32)]
    torch.manual_seed(1), np.random.seed(2)
    import random
    random.seed(3)
    random.gauss(0, 1)  # leaves a cached Gaussian in Python's state
    state = capture_rng()
    expected = (torch.rand(3), np.random.rand(3), random.random(), random.gauss(0, 1))
    path = save_checkpoint(tmp_path, Checkpoint(server_round=4, num_rounds=9,
                                                config_sha256="ab", arrays=arrays, rng=state))
    assert path == tmp_path / CHECKPOINT_FILE
    assert sorted(p.name for p in tmp_path.iterdir()) == [CHECKPOINT_FILE]  # no temporary left

    loaded = load_checkpoint(tmp_path)
    assert (loaded.server_round, loaded.num_rounds, loaded.config_sha256) == (4, 9, "ab")
    assert [a.dtype for a in loaded.arrays] == [a.dtype for a in arrays]
    assert all(np.array_equal(x, y) for x, y in zip(loaded.arrays, arrays, strict=True))
    torch.manual_seed(99), np.random.seed(99), random.seed(99)
    restore_rng(loaded.rng)
    again = (torch.rand(3), np.random.rand(3), random.random(), random.gauss(0, 1))
    assert torch.equal(again[0], expected[0]) and np.array_equal(again[1], expected[1])
    assert again[2:] == expected[2:]


def test_drop_rows_after_keeps_finished_rounds_and_unrounded_rows(tmp_path: Path) -> None:
    (tmp_path / "fit.jsonl").write_text(
        '{"round": 1, "client": 0}\n{"round": 2, "client": 0}\n{"round": 2, "cl')
    (tmp_path / "notes.jsonl").write_text('{"note": "no round"}\n{"round": 0}\n')
    (tmp_path / "grids").mkdir()
    for name in ("round001_client00.png", "round002_client00.png"):
        (tmp_path / "grids" / name).write_bytes(b"png")
    assert drop_rows_after(tmp_path, 1) == 2
    assert read_jsonl(tmp_path / "fit.jsonl") == [{"round": 1, "client": 0}]
    assert read_jsonl(tmp_path / "notes.jsonl") == [{"note": "no round"}, {"round": 0}]
    assert [p.name for p in (tmp_path / "grids").iterdir()] == ["round001_client00.png"]
    assert drop_rows_after(tmp_path, 1) == 0


def test_recorder_reopened_after_a_round_carries_rows_and_time(tmp_path: Path) -> None:
    recorder = RunRecorder(tmp_path, "name: x\n", 3)
    recorder.log_utility(0, 1.0, {"accuracy": 0.1, "macro_f1": 0.1})
    recorder.log_utility(1, 0.5, {"accuracy": 0.5, "macro_f1": 0.4})
    recorder.log_fit(2, 0, 4, {"train-loss": 0.3})
    status = json.loads((tmp_path / "status.json").read_text())
    status["seconds"] = 100.0
    (tmp_path / "status.json").write_text(json.dumps(status))

    reopened = RunRecorder(tmp_path, "name: x\n", 3, resume_after=1)
    assert [r["round"] for r in reopened.utility] == [0, 1] and reopened.fits == []
    status = json.loads((tmp_path / "status.json").read_text())
    assert status["state"] == "running" and status["rounds_completed"] == 1
    assert status["seconds"] >= 100.0 and status["resumed_after"] == [1]


# ---- what cannot be resumed ----------------------------------------------------------------
def _folder_with_checkpoint(tmp_path: Path, config: ExperimentConfig, *, state: str,
                            server_round: int = 1) -> Path:
    run_dir = tmp_path / "run"
    run_dir.mkdir(parents=True)
    (run_dir / "config.yaml").write_text(config.to_yaml())
    (run_dir / "status.json").write_text(json.dumps({"state": state}))
    save_checkpoint(run_dir, Checkpoint(server_round=server_round,
                                        num_rounds=config.train.rounds,
                                        config_sha256=config_digest(config.to_yaml()),
                                        arrays=[np.zeros(2, np.float32)], rng=capture_rng()))
    return run_dir


def _cli_error(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    assert cli_main(list(argv)) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err
    return err


def test_resume_errors_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = tiny_config()
    assert _cli_error(capsys, "resume", str(tmp_path / "nope")) == \
        f"fl-shadow: {tmp_path / 'nope'}: no such results folder"

    run_dir = _folder_with_checkpoint(tmp_path, config, state="failed")
    (run_dir / CHECKPOINT_FILE).unlink()
    assert _cli_error(capsys, "resume", str(run_dir)) == (
        f"fl-shadow: {run_dir}: no {CHECKPOINT_FILE}: the run did not complete a round (or "
        "predates checkpoints); start it again with fl-shadow run")

    (run_dir / "status.json").write_text(json.dumps({"state": "completed"}))
    assert _cli_error(capsys, "resume", str(run_dir)) == \
        f"fl-shadow: {run_dir}: the run already completed all 3 rounds; nothing to resume"


def test_resume_refuses_a_changed_config_and_a_finished_checkpoint(tmp_path: Path) -> None:
    config = tiny_config()
    run_dir = _folder_with_checkpoint(tmp_path, config, state="running")
    assert prepare_resume(run_dir)[1].server_round == 1
    (run_dir / "config.yaml").write_text(config.to_yaml().replace("seed: 5", "seed: 6", 1))
    with pytest.raises(ResumeError, match="config.yaml differs from the config the checkpoint"):
        prepare_resume(run_dir)
    run_dir = _folder_with_checkpoint(tmp_path / "b", config, state="running", server_round=3)
    with pytest.raises(ResumeError, match=r"already closes the last round \(3/3\)"):
        prepare_resume(run_dir)


def test_resume_refuses_defenses_with_client_state(tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    assert [keeps_client_state(n) for n in ("none", "dp", "clipping", "shadow", "fedkl",
                                             "latent_minimax", "censor")] == \
        [False, False, False, True, True, True, True]
    run_dir = _folder_with_checkpoint(tmp_path, tiny_config("defense.name=fedkl"),
                                      state="failed")
    err = _cli_error(capsys, "resume", str(run_dir))
    assert err.startswith("fl-shadow: defense.name: fedkl keeps per-client state")
    assert err.endswith("pass --allow-client-state-loss to resume anyway")


def test_strategy_rejects_a_checkpoint_with_nothing_left(tmp_path: Path) -> None:
    federation = Federation(tiny_config("train.rounds=2", "attack.rounds=[2]"))
    checkpoint = Checkpoint(server_round=2, num_rounds=2, config_sha256="",
                            arrays=federation.initial_arrays(), rng=capture_rng())
    with pytest.raises(ResumeError, match=r"checkpoint of round 2 of 2 does not continue a run "
                                          r"of train\.rounds=2 \(rounds 1\.\.1 can be resumed\)"):
        federation.strategy(tmp_path, resume=checkpoint)
    assert list(tmp_path.iterdir()) == []  # refused before the results folder was touched


@pytest.mark.parametrize("strategy", ["fedadam", "fedavgm"])
def test_server_optimizer_state_resumes_exactly(tmp_path: Path, strategy: str) -> None:
    """FedAdam's moments and FedAvgM's momentum live in the strategy between rounds: the
    checkpoint carries them, so a resumed run ends with the uninterrupted run's numbers."""
    params = ("strategy.params.eta=0.01" if strategy == "fedadam"
              else "strategy.params.server_momentum=0.9")
    config = tiny_config("attack.name=none", f"strategy.name={strategy}", params)
    whole, broken = tmp_path / "whole", tmp_path / "broken"
    final_whole = run_federation(config, whole)
    with pytest.raises(Killed):
        run_federation(config, broken, die_in_round=3)
    _, checkpoint = prepare_resume(broken)
    state = checkpoint.strategy_state
    assert set(state) == ({"m_t", "v_t"} if strategy == "fedadam" else {"momentum_vector"})
    assert all(value is not None and len(value) == len(final_whole) for value in state.values())
    final_resumed = run_federation(config, broken, resume=checkpoint)
    assert all(np.array_equal(x, y) for x, y in zip(final_whole, final_resumed, strict=True))
    assert_same_results(whole, broken)


# ---- end to end: a real Flower run killed after round 1, then `fl-shadow resume` ------------
# No attack (the in-process test covers attacked rounds; the attack's reference classifier and
# inversion would triple this test's time on 2 busy cores). The killed run's server holds once
# round 1's checkpoint is written (tests/flower_app.py), so the kill always lands after round 1.
E2E = """\
name: tiny
seed: 3
data: {dataset: mni152, image_size: 16, channels: 1}
partition: {scheme: sizes, num_clients: 2, sizes: [2, 6], batch_sizes: [1, 3]}
model: {name: convnet, width: 4}
train: {rounds: 3, local_epochs: 2, lr: 0.01, device: cpu}
strategy: {min_fit_clients: 2, min_available_clients: 2}
attack: {name: none}
"""


def _kill_simulation(http_port: str) -> int:
    """SIGKILL the simulation process of this test's SuperLink (the ServerApp and the Ray
    cluster with the clients) and everything under it: the run dies as on a lost machine."""
    killed = [p for pid in processes_mentioning("flwr-simulation", f"127.0.0.1:{http_port}")
              for p in process_tree(pid)]
    signal_all(killed, signal.SIGKILL)
    assert not wait_gone(killed), "the simulation outlived SIGKILL"
    return len(killed)


def _fl_shadow(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "fl_shadow.apps.cli", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600, check=False)


# Slow (two whole `flwr run`s, ~2-4 min on 2 cores): the resume itself is covered in-process
# (test_run_dying_in_round_2_resumes_to_the_uninterrupted_numbers); `pytest -m slow` runs it.
@pytest.mark.slow
def test_killed_flower_run_resumes_to_the_uninterrupted_numbers(
        tmp_path: Path, flower_env: dict[str, str]) -> None:
    config = tmp_path / "tiny.yaml"
    config.write_text(E2E)
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    proc = _fl_shadow(flower_env, "run", str(config), "--run-dir", str(whole))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    # Same experiment, on the project's apps with a server that holds after round 1: killed
    # there, with round 1 checkpointed and nothing of round 2 begun.
    app = write_app(tmp_path / "app", HOLD_AFTER_ROUND_1)
    command = flwr_command(config, [], killed, num_clients=2, cpus_per_client=1,
                           gpus_per_client=0, run_config_file=tmp_path / "run_config.toml",
                           app_dir=app)
    env = {**flower_env, **QUIET_ENV,
           "PATH": f"{Path(sys.executable).parent}:{flower_env.get('PATH', '')}"}
    runner = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 300
        while not (killed / CHECKPOINT_FILE).exists():
            assert runner.poll() is None and time.monotonic() < deadline, "run ended early"
            time.sleep(0.05)
        assert _kill_simulation(flower_env["FLWR_LOCAL_SUPERLINK_HTTP_API_PORT"]) > 0
    finally:
        os.killpg(runner.pid, signal.SIGKILL)
        runner.wait()
    assert json.loads((killed / "status.json").read_text())["state"] == "running"
    assert load_checkpoint(killed).server_round == 1
    assert {r["round"] for r in read_jsonl(killed / "fit.jsonl")} == {1}

    proc = _fl_shadow(flower_env, "resume", str(killed))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "resuming 'tiny' after round 1/3" in proc.stdout
    assert_same_results(whole, killed)
    status = json.loads((killed / "status.json").read_text())
    assert status["state"] == "completed" and status["resumed_after"] == [1]
    assert sorted((r["round"], r["client"]) for r in read_jsonl(killed / "fit.jsonl")) == [
        (1, 0), (1, 1), (2, 0), (2, 1), (3, 0), (3, 1)]

    assert _fl_shadow(flower_env, "resume", str(killed)).stderr.strip() == \
        f"fl-shadow: {killed}: the run already completed all 3 rounds; nothing to resume"


# ---- every check before anything is touched -------------------------------------------------
def test_a_bad_checkpoint_is_refused_before_any_row_is_dropped(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """At fd9c1fe a checkpoint of round -4 first emptied fit.jsonl and utility.jsonl (2 rows
    each), then was rejected. Now every check runs first and the folder stays as it was."""
    config = tiny_config()
    run_dir = _folder_with_checkpoint(tmp_path, config, state="failed")
    rows = '{"round": 1, "client": 0, "num_examples": 2}\n{"round": 2, "client": 0}\n'
    (run_dir / "fit.jsonl").write_text(rows)
    (run_dir / "utility.jsonl").write_text('{"round": 0, "loss": 1}\n{"round": 1, "loss": 1}\n')
    before = {p.name: p.read_bytes() for p in run_dir.iterdir()}
    checkpoint = load_checkpoint(run_dir)
    for change, message in [
        ({"server_round": -4}, "server_round must be an integer in 1..3, got -4"),
        ({"server_round": 0}, "server_round must be an integer in 1..3, got 0"),
        ({"num_rounds": 7, "server_round": 1}, "written for a run of 7 rounds"),
    ]:
        meta = {"format": 2, "server_round": 1, "num_rounds": 3,
                "config_sha256": checkpoint.config_sha256, "num_arrays": 1,
                "numpy_pos": checkpoint.rng.numpy_pos, "numpy_has_gauss": 0,
                "numpy_cached_gaussian": 0.0, "python_gauss_next": None, **change}
        with np.load(run_dir / CHECKPOINT_FILE) as data:
            entries = {k: data[k] for k in data.files if k != "meta"}
        with (run_dir / CHECKPOINT_FILE).open("wb") as f:
            np.savez(f, meta=np.array(json.dumps(meta)), **entries)
        err = _cli_error(capsys, "resume", str(run_dir))
        assert message in err, err
        assert {p.name: p.read_bytes() for p in run_dir.iterdir() if p.name != CHECKPOINT_FILE} \
            == {k: v for k, v in before.items() if k != CHECKPOINT_FILE}
    # The round fits, but its one array is not the model's 20: refused by the model check.
    save_checkpoint(run_dir, checkpoint)
    err = _cli_error(capsys, "resume", str(run_dir))
    assert err == ("fl-shadow: the checkpoint of round 1 holds 1 arrays, the model (convnet) "
                   "has 20: not this experiment's model")
    assert (run_dir / "fit.jsonl").read_text() == rows
    with pytest.raises(ValueError, match=r"resume_after: expected a completed round in 1\.\.2"):
        RunRecorder(run_dir, "", 3, resume_after=-4)
    assert (run_dir / "fit.jsonl").read_text() == rows


def test_damaged_checkpoints_are_one_line(tmp_path: Path) -> None:
    path = tmp_path / CHECKPOINT_FILE
    for content, message in [
        (b"", r"unreadable checkpoint \(EOFError: No data left in file\)"),
        (b"PK\x03\x04" + b"\0" * 40, r"unreadable checkpoint"),
    ]:
        path.write_bytes(content)
        with pytest.raises(ResumeError, match=message) as info:
            load_checkpoint(tmp_path)
        assert "\n" not in str(info.value)
    with path.open("wb") as f:
        np.save(f, np.zeros(3))
    with pytest.raises(ResumeError, match=r"not a checkpoint \(a single array, not an \.npz"):
        load_checkpoint(tmp_path)


def test_results_rows_that_are_not_rows_are_skipped_with_one_line_each(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    (tmp_path / "fit.jsonl").write_bytes(
        b'{"round": 1, "client": 0}\n'      # kept
        b'{"round": "x", "client": 0}\n'    # a round that is not an integer
        b'\xff\xfe\n'                       # not UTF-8
        b'[1, 2]\n'                         # not an object
        b'{"round": 2, "client": 1}\n'      # kept
        b'{"round": 3, "cl')                # torn
    with caplog.at_level("WARNING"):
        assert read_jsonl(tmp_path / "fit.jsonl") == [{"round": 1, "client": 0},
                                                      {"round": 2, "client": 1}]
    assert [r.getMessage() for r in caplog.records] == [
        "fit.jsonl line 2: 'round' is 'x': skipped", "fit.jsonl line 3: not UTF-8 text: skipped",
        "fit.jsonl line 4: not a JSON object (list): skipped",
        "fit.jsonl line 6: not JSON (a torn line?): skipped"]
    assert drop_rows_after(tmp_path, 1) == 5
    assert read_jsonl(tmp_path / "fit.jsonl") == [{"round": 1, "client": 0}]
