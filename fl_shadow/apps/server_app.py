"""Flower ServerApp: read the experiment once, build the curious server, hand it to Flower.

Run config (``[tool.flwr.app.config]``, overridable with ``flwr run --run-config``):

* ``config``: the YAML experiment: a shipped config's name (``default``, ``shadow.yaml``) or a
  path, absolute or relative to the working directory or the app;
* ``overrides``: dotted ``key=value`` items separated by ``;`` (``"train.rounds=5"``);
* ``run-dir``: results folder to write (default: a new ``<output_dir>/<name>-<timestamp>``);
* ``resume``: continue ``run-dir`` from its last checkpoint (``fl-shadow resume``): the
  experiment is the folder's ``config.yaml`` (``config`` and ``overrides`` are ignored), Flower
  starts from the checkpoint's weights and runs only the remaining rounds
  (:mod:`fl_shadow.checkpoint`).

Everything is built by :func:`fl_shadow.apps.federation.build_federation`.
"""

from __future__ import annotations

import logging
from pathlib import Path

from flwr.app import Context
from flwr.server import ServerAppComponents, ServerConfig
from flwr.serverapp import ServerApp

from fl_shadow import flower_keys as keys
from fl_shadow.apps.experiment import Components, check_experiment, load_experiment
from fl_shadow.apps.federation import Federation
from fl_shadow.checkpoint import Checkpoint, keeps_client_state, prepare_resume
from fl_shadow.config import ExperimentConfig, parse_overrides, resolve_config_path
from fl_shadow.errors import ConfigError, ResumeError
from fl_shadow.logs import route_to_flower
from fl_shadow.report import new_run_dir

log = logging.getLogger(__name__)
APP_DIR = Path(__file__).resolve().parents[2]


def config_path_of(value: str) -> Path:
    """The run config's ``config``: absolute as given; relative against the working directory,
    then the app's folder, then the shipped configs."""
    candidate = Path(value).expanduser()
    if not candidate.is_absolute() and candidate.is_file():
        return candidate
    return resolve_config_path(value, relative_to=APP_DIR)


def config_from_run_config(run_config: dict) -> tuple[ExperimentConfig, Components]:
    path = config_path_of(str(run_config.get(keys.RUN_CONFIG_PATH, "")) or "default.yaml")
    overrides = parse_overrides(str(run_config.get(keys.RUN_OVERRIDES, "")))
    return load_experiment(path, overrides)


def is_resume(run_config: dict) -> bool:
    """The ``resume`` run-config value (a TOML boolean, or its text from ``--run-config``)."""
    value = run_config.get(keys.RUN_RESUME, False)
    return value if isinstance(value, bool) else str(value).strip().lower() in ("true", "1")


def resume_from_run_config(run_config: dict) -> tuple[ExperimentConfig, Checkpoint, Path]:
    """Config, checkpoint and folder of the run that ``resume`` continues."""
    run_dir_value = str(run_config.get(keys.RUN_DIR, ""))
    if not run_dir_value:
        raise ResumeError("resume: set run-dir to the results folder to continue")
    run_dir = Path(run_dir_value)
    config, checkpoint = prepare_resume(run_dir)
    if keeps_client_state(config.defense.name):
        log.warning("defense %s keeps per-client state in Flower's node state, which this new "
                    "federation starts empty: the resumed rounds will differ from an "
                    "uninterrupted run", config.defense.name)
    return config, checkpoint, run_dir


def server_fn(context: Context) -> ServerAppComponents:
    route_to_flower()
    run_config = dict(context.run_config)
    checkpoint = None
    try:
        if is_resume(run_config):
            config, checkpoint, run_dir = resume_from_run_config(run_config)
            components = check_experiment(config)
        else:
            config, components = config_from_run_config(run_config)
            run_dir_value = str(run_config.get(keys.RUN_DIR, ""))
            run_dir = (Path(run_dir_value) if run_dir_value
                       else new_run_dir(config.output_dir, config.name))
    except (ConfigError, ResumeError) as exc:
        log.error("cannot start: %s", exc)
        raise
    strategy = Federation(config, components).strategy(run_dir.resolve(), resume=checkpoint)
    if checkpoint is not None:
        log.info("resuming %r after round %d", config.name, checkpoint.server_round)
    return ServerAppComponents(strategy=strategy,
                               config=ServerConfig(num_rounds=strategy.remaining_rounds))


app = ServerApp(server_fn=server_fn)
