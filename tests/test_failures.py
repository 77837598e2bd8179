"""A run reports what happened: the clients' own errors in one line, a true final state.

* A client's exception travels as an error reply whose reason is ``client <id>: <Type>:
  <message>`` (``clients.protocol.one_line_errors_mod``); the failure rows and the run's cause
  hold it without Flower's or Ray's wrappers (``fl_shadow.report.describe_failure``).
* A round with fewer successful replies than ``strategy.min_fit_clients`` fails the run.
* A simulation with another number of SuperNodes than clients is refused before round 1.
* ``status.json`` ends in one final state: a stop (``flwr stop``, a signal) is ``stopped``.

The in-process tests drive Flower's server loop with the real ClientApp; one end-to-end test
runs the same failures on Flower's simulation engine (Ray), where the reasons Flower builds are
different.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
from flwr.app import Context, Message, Metadata, RecordDict
from flwr.app.message_type import MessageType
from flwr.common import Code, FitRes, Status, ndarrays_to_parameters
from flwr.server.client_manager import SimpleClientManager
from flwr.server.compat.grid_client_proxy import GridClientProxy
from flwr.superlink.grid.inmemory_grid import InMemoryGrid

import fl_shadow.apps.server_app as server_app
import strategies.curious as curious
from clients.protocol import one_line_errors_mod
from fl_shadow import flower_keys as keys
from fl_shadow.apps import cli
from fl_shadow.apps.federation import Federation
from fl_shadow.apps.inprocess import run_in_process
from fl_shadow.checkpoint import CHECKPOINT_FILE, read_status
from fl_shadow.config import IntList, load_config, settings
from fl_shadow.defenses import DEFENSES
from fl_shadow.defenses.base import Defense, register_defense
from fl_shadow.errors import RunFailed
from fl_shadow.report import RunRecorder, describe_failure, failure_reason, read_jsonl
from flower_app import HOLD_AFTER_ROUND_1, write_app

TINY = ["name=tiny", "seed=5", "data.image_size=16", "partition.scheme=sizes",
        "partition.num_clients=2", "partition.sizes=[2, 6]", "partition.batch_sizes=[1, 3]",
        "model.width=4", "train.rounds=2", "train.device=cpu", "strategy.min_fit_clients=2",
        "strategy.min_available_clients=2", "attack.name=none"]

# What Ray makes of a ClientApp that raised (flwr 1.41's worker: str(type) + ":<'" + str + "'>"
# of the RayTaskError), captured from a real actor: colours, header, and the type is gone.
RAY_REASON = (
    "<class 'ray.exceptions.RayTaskError(ClientAppException)'>:<'\x1b[36mray::ClientAppActor."
    "run()\x1b[39m (pid=20318, ip=192.0.2.2, actor_id=d7825f3761aaf8f16d44a0d501000000, repr=<"
    "flwr.simulation.ray_transport.ray_actor.ClientAppActor object at 0x7fd5194e7dd0>)\n\nThe "
    "above exception was the direct cause of the following exception:\n\n\x1b[36mray::"
    "ClientAppActor.run()\x1b[39m (pid=20318, ip=192.0.2.2)\n           ^^^^^^^^^^^^^^^^^^^\n  "
    'File "ray_actor.py", line 65, in run\nflwr.clientapp.client_app.ClientAppException: \n'
    "Exception ClientAppException occurred. Message: the scanner archive is offline'>")


def grid_error(reason: str) -> ValueError:
    """What Flower's legacy proxy raises for an error reply (grid_client_proxy.py)."""
    return ValueError(f"Message contains an Error (reason: {reason}). It originated during "
                      "client-side execution of a message.")


# ---- reasons, as Flower hands them to the strategy --------------------------------------------
@pytest.mark.parametrize(("failure", "client", "reason"), [
    # This project's ClientApp (one_line_errors_mod), in simulation or deployment.
    (grid_error("client 3: OSError: the scanner archive is offline"), 3,
     "OSError: the scanner archive is offline"),
    # A ClientApp without it: Ray (simulation) keeps the message, not the type.
    (grid_error(RAY_REASON), None, "the scanner archive is offline"),
    # ... and a SuperNode's runtime (deployment) keeps both, in its own brackets.
    (grid_error("<class 'ZeroDivisionError'>:<'division by zero'>"), None,
     "ZeroDivisionError: division by zero"),
    # Flower's own reasons pass unchanged; other exceptions get their type.
    (grid_error("Error: Node Unavailable — The destination node failed to report a heartbeat"),
     None, "Error: Node Unavailable — The destination node failed to report a heartbeat"),
    (TimeoutError("no reply\nwithin 60 s"), None, "TimeoutError: no reply within 60 s"),
    (RuntimeError(), None, "RuntimeError"),
    ((None, FitRes(Status(Code.FIT_NOT_IMPLEMENTED, "no fit here"),
                   ndarrays_to_parameters([]), 0, {})), None, "FIT_NOT_IMPLEMENTED: no fit here"),
])
def test_a_failure_is_the_clients_own_error_in_one_line(failure: object, client: int | None,
                                                       reason: str) -> None:
    assert describe_failure(failure) == (client, reason)
    expected = reason if client is None else f"client {client}: {reason}"
    assert failure_reason(failure) == expected


def test_a_long_reason_is_cut_to_one_bounded_line() -> None:
    client, reason = describe_failure(ValueError("x" * 5000 + "\n" + "y"))
    assert client is None and len(reason) == 1000 and reason.endswith("...")


def test_the_errors_mod_answers_a_failed_message_with_one_line() -> None:
    def call_next(msg: Message, ctxt: Context) -> Message:
        raise ValueError("fitins.parameters\nmissing")

    msg = Message(RecordDict(), metadata=Metadata(
        run_id=1, message_id="m", src_node_id=0, dst_node_id=7, reply_to_message_id="",
        group_id="1", created_at=time.time(), ttl=60.0, message_type=MessageType.TRAIN))
    for node_config, who in (({keys.NODE_PARTITION_ID: 3}, "client 3"),
                             ({keys.NODE_CLIENT_ID: "1"}, "client 1"), ({}, "node 7")):
        ctxt = Context(run_id=1, node_id=7, node_config=node_config, state=RecordDict(),
                       run_config={})
        reply = one_line_errors_mod(msg, ctxt, call_next)
        assert reply.has_error() and reply.error.code == 2  # CLIENT_APP_RAISED_EXCEPTION
        assert reply.error.reason == f"{who}: ValueError: fitins.parameters missing"


# ---- every client fails: the run fails, with the clients' errors ------------------------------
@settings
class ScannerOfflineParams:
    """Which hospitals' scanners are offline (empty: all)."""

    hospitals: IntList = ()


if "_scanner_offline" not in DEFENSES:
    @register_defense("_scanner_offline", ScannerOfflineParams)
    class ScannerOffline(Defense):
        """A defense whose clients fail on a real error of their own, after training."""

        def __init__(self, params: ScannerOfflineParams) -> None:
            self.params = params

        def protect_update(self, update, model, ctx):  # type: ignore[no-untyped-def]
            if not self.params.hospitals or ctx.client_id in self.params.hospitals:
                raise OSError(f"hospital {ctx.client_id}: the scanner archive is offline")
            return update


def test_a_run_whose_clients_all_fail_ends_failed_with_their_errors(tmp_path: Path) -> None:
    config = load_config(None, [*TINY, "defense.name=_scanner_offline"])
    with pytest.raises(RunFailed) as info:
        run_in_process(Federation(config), tmp_path)
    cause = ("round 1: 0 of 2 clients replied, strategy.min_fit_clients is 2; first failure: "
             "client 0: OSError: hospital 0: the scanner archive is offline")
    assert str(info.value) == cause
    status = read_status(tmp_path)
    assert (status["state"], status["rounds_completed"], status["error"]) == ("failed", 0, cause)
    assert read_jsonl(tmp_path / "failures.jsonl") == [
        {"round": 1, "client": c, "error": f"OSError: hospital {c}: the scanner archive is "
                                           "offline"} for c in (0, 1)]
    assert not (tmp_path / "summary.md").exists() and not (tmp_path / CHECKPOINT_FILE).exists()


def test_one_failing_client_of_two_is_a_row_when_one_suffices(tmp_path: Path) -> None:
    config = load_config(None, [*TINY, "strategy.min_fit_clients=1", "train.rounds=1",
                                "defense.name=_scanner_offline",
                                "defense.params.hospitals=[1]"])
    assert run_in_process(Federation(config), tmp_path).state == "completed"
    assert read_jsonl(tmp_path / "failures.jsonl") == [
        {"round": 1, "client": 1, "error": "OSError: hospital 1: the scanner archive is offline"}]
    assert [r["client"] for r in read_jsonl(tmp_path / "fit.jsonl")] == [0]


# ---- the final state ---------------------------------------------------------------------------
def test_the_first_final_state_wins(tmp_path: Path) -> None:
    recorder = RunRecorder(tmp_path / "a", "", 3)
    recorder.stop("stopped from outside")
    recorder.fail(RunFailed("round 2: too few replies"))  # the dying process's last words
    recorder.log_utility(1, 0.5, {"accuracy": 0.5})
    assert read_status(tmp_path / "a")["state"] == "stopped"
    assert read_status(tmp_path / "a")["error"] == "stopped from outside"

    recorder = RunRecorder(tmp_path / "b", "", 3)
    recorder.fail(ValueError("bad\nthing"))
    recorder.stop("stopped from outside")
    assert (read_status(tmp_path / "b")["state"], read_status(tmp_path / "b")["error"]) == \
        ("failed", "ValueError: bad thing")

    recorder = RunRecorder(tmp_path / "c", "", 3)
    recorder.fail(KeyboardInterrupt())
    assert read_status(tmp_path / "c")["state"] == "stopped"


def test_flowers_exit_handlers_mark_the_run_stopped(tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    handlers = []
    monkeypatch.setattr(server_app, "add_exit_handler",
                        lambda fn, run_before_force_exit: handlers.append(fn))
    recorder = RunRecorder(tmp_path, "", 3)
    recorder.log_utility(1, 0.5, {"accuracy": 0.5})
    server_app.record_stop_on_exit(recorder)
    handlers[0]()  # what flwr_exit does on SIGINT (flwr stop), SIGTERM
    status = read_status(tmp_path)
    assert (status["state"], status["rounds_completed"]) == ("stopped", 1)
    assert status["error"] == "stopped from outside (flwr stop, SIGINT or SIGTERM) before the " \
                              "run ended"


# ---- a simulation of the wrong size ------------------------------------------------------------
def _simulated_manager(num_nodes: int) -> SimpleClientManager:
    grid = object.__new__(InMemoryGrid)  # the simulation's grid, without its link state
    grid.get_node_ids = lambda: list(range(num_nodes))  # type: ignore[method-assign]
    manager = SimpleClientManager()
    for node in range(num_nodes):
        manager.register(GridClientProxy(node, grid, run_id=1))
    return manager


def test_a_simulation_with_too_few_supernodes_is_refused_at_once(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(curious, "SIMULATION_SETTLE_S", 0.0)
    config = load_config(None, [*TINY, "partition.num_clients=4", "partition.sizes=[2, 2, 2, 2]",
                                "partition.batch_sizes=[1]", "strategy.min_available_clients=4"])
    strategy = Federation(config).strategy(tmp_path)
    start = time.monotonic()
    with pytest.raises(RunFailed) as info:
        strategy.initialize_parameters(_simulated_manager(2))
    assert time.monotonic() - start < 5
    assert str(info.value) == (
        "the simulation runs 2 SuperNodes but the experiment has 4 clients "
        "(partition.num_clients=4, strategy.min_available_clients=4; one SuperNode per "
        "client): start it with --federation-config 'num-supernodes=4' (fl-shadow run sizes "
        "it from the config) or set partition.num_clients=2")
    assert read_status(tmp_path)["state"] == "failed"
    # The right size passes; outside a simulation (no grid) only waiting can tell.
    assert Federation(config).strategy(tmp_path / "ok").initialize_parameters(
        _simulated_manager(4)) is not None
    assert curious.simulated_federation_size(SimpleClientManager()) is None


# ---- end to end: the same on Flower's simulation engine ----------------------------------------
FAILING_APP = '''\
"""The project's apps, with a defense whose clients fail on an error of their own."""
from flwr.clientapp import ClientApp

from fl_shadow.apps import client_app, server_app
from fl_shadow.config import settings
from fl_shadow.defenses import DEFENSES
from fl_shadow.defenses.base import Defense, register_defense


def register():
    if "_scanner_offline" in DEFENSES:
        return

    @settings
    class ScannerOfflineParams:
        pass

    @register_defense("_scanner_offline", ScannerOfflineParams)
    class ScannerOffline(Defense):
        def __init__(self, params):
            self.params = params

        def protect_update(self, update, model, ctx):
            raise OSError(f"hospital {ctx.client_id}: the scanner archive is offline")


def client_fn(context):
    register()  # a Ray actor gets this app pickled, without importing this module
    return client_app.client_fn(context)


register()
serverapp = server_app.app
clientapp = ClientApp(client_fn=client_fn, mods=client_app.MODS)
'''


def test_a_simulation_reports_its_failures_truly(tmp_path: Path, flower_env: dict[str, str],
                                                 monkeypatch: pytest.MonkeyPatch,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    """Every client fails on Ray: ``fl-shadow``'s launch exits 1 with the cause, the rows hold
    the clients' errors. Then plain ``flwr run`` of the project with Flower's default 2
    SuperNodes and a 4-client config: refused within seconds, naming both numbers."""
    for name, value in flower_env.items():
        monkeypatch.setenv(name, value)
    app = write_app(tmp_path / "app", FAILING_APP)
    experiment = tmp_path / "tiny.yaml"
    experiment.write_text(load_config(None, [*TINY, "defense.name=_scanner_offline"]).to_yaml())
    run_dir = tmp_path / "run"
    config = load_config(experiment)
    assert cli._launch(config, experiment, [], run_dir, resume=False, app_dir=app) == 1
    cause = ("round 1: 0 of 2 clients replied, strategy.min_fit_clients is 2; first failure: "
             "client 0: OSError: hospital 0: the scanner archive is offline")
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == f"fl-shadow: run did not complete (state: failed, flwr exit 0): {cause}"
    status = read_status(run_dir)
    assert (status["state"], status["error"]) == ("failed", cause)
    rows = read_jsonl(run_dir / "failures.jsonl")
    assert sorted((r["client"], r["error"]) for r in rows) == [
        (c, f"OSError: hospital {c}: the scanner archive is offline") for c in (0, 1)]

    four = tmp_path / "four.yaml"
    four.write_text(load_config(None, [*TINY, "partition.num_clients=4",
                                       "partition.sizes=[2, 2, 2, 2]",
                                       "partition.batch_sizes=[1]"]).to_yaml())
    run_config = tmp_path / "run_config.toml"
    command = cli.flwr_command(four, [], tmp_path / "four", num_clients=4, cpus_per_client=1,
                               gpus_per_client=0, run_config_file=run_config)
    command = command[:command.index("--federation-config")]  # Flower's default: 2 SuperNodes
    proc = _run(command, flower_env)
    status = read_status(tmp_path / "four")
    assert status["state"] == "failed", proc.stdout[-3000:]
    # Refused within seconds of the server's start (the wait for clients would be 120 s).
    assert status["seconds"] < 30 and status["rounds_completed"] == 0, status
    assert status["error"].startswith("the simulation runs 2 SuperNodes but the experiment has "
                                      "4 clients")
    assert status["error"] in proc.stdout  # the server log says it, in one line


def _run(command: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    path = f"{Path(sys.executable).parent}:{env.get('PATH', '')}"
    return subprocess.run(command, env={**env, **cli.QUIET_ENV, "PATH": path},
                          capture_output=True, text=True, timeout=300, check=False)



def test_flwr_stop_leaves_the_run_stopped(tmp_path: Path, flower_env: dict[str, str]) -> None:
    """``flwr stop`` on a running simulation (held after round 1): ``status.json`` says
    ``stopped``, with the rounds it completed."""
    app = write_app(tmp_path / "app", HOLD_AFTER_ROUND_1)
    experiment = tmp_path / "tiny.yaml"
    experiment.write_text(load_config(None, TINY).to_yaml())
    run_dir = tmp_path / "run"
    command = cli.flwr_command(experiment, [], run_dir, num_clients=2, cpus_per_client=1,
                               gpus_per_client=0, run_config_file=tmp_path / "run_config.toml",
                               app_dir=app)
    command = [arg for arg in command if arg != "--stream"] + ["--format", "json"]
    started = _run(command, flower_env)
    assert started.returncode == 0, started.stdout + started.stderr
    run_id = str(json.loads(started.stdout)["run-id"])
    deadline = time.monotonic() + 300
    while not (run_dir / CHECKPOINT_FILE).exists():
        assert time.monotonic() < deadline, "round 1 never ended"
        time.sleep(0.1)
    assert read_status(run_dir)["state"] == "running"
    stop = _run(["flwr", "stop", run_id], flower_env)
    assert stop.returncode == 0, stop.stdout + stop.stderr
    while read_status(run_dir)["state"] == "running":
        assert time.monotonic() < deadline, "the stopped run still says running"
        time.sleep(0.1)
    status = read_status(run_dir)
    assert (status["state"], status["rounds_completed"]) == ("stopped", 1)
    assert status["error"] == ("stopped from outside (flwr stop, SIGINT or SIGTERM) before the "
                               "run ended")
