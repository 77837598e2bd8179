"""Flower ServerApp: read the experiment once, build the curious server, hand it to Flower.

Run config (``[tool.flwr.app.config]``, overridable with ``flwr run --run-config``):

* ``config``: the YAML experiment: a shipped config's name (``default``, ``shadow.yaml``) or a
  path, absolute or relative to the project folder, the app or the shipped configs;
* ``overrides``: dotted ``key=value`` items separated by ``;`` (``"train.rounds=5"``);
* ``run-dir``: results folder to write (default: a new ``<output_dir>/<name>-<timestamp>``);
* ``resume``: continue ``run-dir`` from its last checkpoint (``fl-shadow resume``): the
  experiment is the folder's ``config.yaml`` (``config`` and ``overrides`` are ignored), Flower
  starts from the checkpoint's weights and runs only the remaining rounds
  (:mod:`fl_shadow.checkpoint`);
* ``project-dir``: the operator's project folder, absolute (``fl-shadow run`` and ``resume``
  pass the folder they were invoked from).

Relative paths (``run-dir``, and the config's ``output_dir``, ``data.path``,
``data.cache_dir``) resolve against the project folder, so results land where the operator
is, whichever folder the SuperLink was started in. A plain ``flwr run`` without
``project-dir`` cannot say where it was invoked from (Flower ships the app to the SuperLink as
a FAB, without its path): paths then resolve against the ServerApp's working directory (the
folder the SuperLink was started in), with a warning. The log prints the absolute results
folder.

The warnings of the experiment's checks at load (a small test split, few public images, ...)
are recorded (:func:`fl_shadow.diagnostics.capture_warnings`) and written, with the end-of-run
diagnostics, to the results folder's ``warnings.jsonl`` and ``summary.md``.

The run's outcome is always in ``status.json`` (:mod:`fl_shadow.report`): ``completed``;
``failed`` with its cause in one line (a round without enough replies, a federation of the
wrong size, any error of the server loop); ``stopped`` when Flower stops the ServerApp's
process (``flwr stop``, SIGINT, SIGTERM: Flower's exit handlers run, one of them records it).

Threads: the server first sets its process's torch intra-op threads from
``FL_SHADOW_THREADS`` (default 1; attacks, evaluation and scoring run on them, and
``status.json`` records the count), ``OMP_WAIT_POLICY=PASSIVE`` having been set before torch
loaded (:mod:`fl_shadow.threads`); a malformed value stops the run with one line.

Everything is built by :func:`fl_shadow.apps.federation.build_federation`.
"""

from __future__ import annotations

import logging
from pathlib import Path

from flwr.app import Context
from flwr.server import ServerConfig
from flwr.server.compat import start_grid
from flwr.serverapp import Grid, ServerApp
from flwr.supercore.exit import add_exit_handler

from fl_shadow import flower_keys as keys
from fl_shadow.apps.experiment import Components, check_experiment
from fl_shadow.apps.federation import Federation
from fl_shadow.checkpoint import Checkpoint, keeps_client_state, prepare_resume
from fl_shadow.config import (
    ExperimentConfig,
    load_config,
    parse_overrides,
    resolve_config_path,
    resolve_paths,
)
from fl_shadow.diagnostics import capture_warnings
from fl_shadow.errors import ConfigError, ResumeError
from fl_shadow.logs import route_to_flower
from fl_shadow.report import RunRecorder, check_writable_folder, new_run_dir
from fl_shadow.threads import set_torch_threads
from strategies import CuriousServer

log = logging.getLogger(__name__)

APP_DIR = Path(__file__).resolve().parents[2]


def project_dir_of(run_config: dict) -> Path:
    """The run config's ``project-dir``; the working directory (with a warning) when unset.

    Raises:
        ConfigError: ``project-dir`` is not an absolute path of a folder.
    """
    value = str(run_config.get(keys.RUN_PROJECT_DIR, "")).strip()
    if not value:
        cwd = Path.cwd()
        log.warning("the run config sets no %s: relative paths resolve against the "
                    "ServerApp's working directory %s (where the SuperLink was started); pass "
                    "--run-config \"%s='/your/folder'\", or use fl-shadow run",
                    keys.RUN_PROJECT_DIR, cwd, keys.RUN_PROJECT_DIR)
        return cwd
    path = Path(value).expanduser()
    if not path.is_absolute() or not path.is_dir():
        raise ConfigError(f"{keys.RUN_PROJECT_DIR}: expected the absolute path of a folder, "
                          f"got {value!r}")
    return path


def config_path_of(value: str, project_dir: Path) -> Path:
    """The run config's ``config``: absolute as given; relative against the project folder,
    then the app's folder, then the shipped configs."""
    candidate = Path(value).expanduser()
    if not candidate.is_absolute() and (project_dir / candidate).is_file():
        return project_dir / candidate
    return resolve_config_path(value, relative_to=APP_DIR)


def config_from_run_config(run_config: dict, project_dir: Path
                           ) -> tuple[ExperimentConfig, Components]:
    """The run's experiment, its paths resolved against ``project_dir``, checked whole."""
    path = config_path_of(str(run_config.get(keys.RUN_CONFIG_PATH, "")) or "default.yaml",
                          project_dir)
    overrides = parse_overrides(str(run_config.get(keys.RUN_OVERRIDES, "")))
    config = resolve_paths(load_config(path, overrides), project_dir)
    return config, check_experiment(config)


def run_dir_of(run_config: dict, config: ExperimentConfig, project_dir: Path) -> Path:
    """``run-dir`` against the project folder; a new folder under ``output_dir`` if unset."""
    value = str(run_config.get(keys.RUN_DIR, "")).strip()
    run_dir = (project_dir / Path(value).expanduser() if value
               else new_run_dir(config.output_dir, config.name))
    check_writable_folder(run_dir, keys.RUN_DIR)
    return run_dir


def is_resume(run_config: dict) -> bool:
    """The ``resume`` run-config value (a TOML boolean, or its text from ``--run-config``)."""
    value = run_config.get(keys.RUN_RESUME, False)
    return value if isinstance(value, bool) else str(value).strip().lower() in ("true", "1")


def resume_from_run_config(run_config: dict, project_dir: Path
                           ) -> tuple[ExperimentConfig, Checkpoint, Path]:
    """Config, checkpoint and folder of the run that ``resume`` continues."""
    run_dir_value = str(run_config.get(keys.RUN_DIR, "")).strip()
    if not run_dir_value:
        raise ResumeError("resume: set run-dir to the results folder to continue")
    run_dir = project_dir / Path(run_dir_value).expanduser()
    config, checkpoint = prepare_resume(run_dir)
    if keeps_client_state(config.defense.name):
        log.warning("defense %s keeps per-client state in Flower's node state, which this new "
                    "federation starts empty: the resumed rounds will differ from an "
                    "uninterrupted run", config.defense.name)
    return config, checkpoint, run_dir


def build_server(context: Context) -> tuple[CuriousServer, ServerConfig]:
    """The curious server of the run ``context.run_config`` describes, and Flower's config.

    Raises:
        ConfigError, ResumeError: the run cannot start (logged as one line).
    """
    route_to_flower()
    run_config = dict(context.run_config)
    checkpoint = None
    try:
        set_torch_threads()
        project_dir = project_dir_of(run_config)
        with capture_warnings() as caught:  # the checks' warnings go to the results folder
            if is_resume(run_config):
                config, checkpoint, run_dir = resume_from_run_config(run_config, project_dir)
                components = check_experiment(config)
            else:
                config, components = config_from_run_config(run_config, project_dir)
                run_dir = run_dir_of(run_config, config, project_dir)
        federation = Federation(config, components, load_warnings=caught)
        if checkpoint is not None:
            federation.check_checkpoint(checkpoint)
    except (ConfigError, ResumeError) as exc:
        log.error("cannot start: %s", exc)
        raise
    strategy = federation.strategy(run_dir.resolve(), resume=checkpoint)
    if checkpoint is not None:
        log.info("resuming %r after round %d", config.name, checkpoint.server_round)
    return strategy, ServerConfig(num_rounds=strategy.remaining_rounds)


def record_stop_on_exit(recorder: RunRecorder) -> None:
    """Mark the run ``stopped`` when Flower ends the ServerApp's process on a signal.

    ``flwr stop`` reaches the process as SIGINT (its heartbeat learns the run was stopped);
    Flower's signal handler then runs its exit handlers and exits. A run that already ended
    keeps its state (Flower runs the handlers at every exit).
    """
    add_exit_handler(lambda: recorder.stop("stopped from outside (flwr stop, SIGINT or SIGTERM)"
                                           " before the run ended"),
                     run_before_force_exit=True)


app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    """Flower's legacy server loop (what ``ServerApp(server_fn=...)`` runs) around the curious
    server, with the run's outcome recorded whatever ends it."""
    strategy, server_config = build_server(context)
    record_stop_on_exit(strategy.recorder)
    try:
        start_grid(grid=grid, strategy=strategy, config=server_config)
    except BaseException as exc:  # the first final state wins: a stop or a round's cause
        strategy.recorder.fail(exc)
        raise
    if strategy.recorder.final_state is None:
        strategy.recorder.fail(RuntimeError(
            f"Flower's server loop ended after round {strategy.recorder.rounds_done()} of "
            f"{strategy.clock.num_rounds} without completing the run"))
