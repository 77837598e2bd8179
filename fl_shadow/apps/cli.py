"""``fl-shadow``: validate a config, then run it on Flower's simulation engine.

    fl-shadow run [CONFIG] [--set key=value ...]   # flwr run . with the right federation
    fl-shadow resume RUN_DIR                        # continue a killed run from its checkpoint
    fl-shadow validate [CONFIG] [--set key=value ...]
    fl-shadow show-config [CONFIG] [--set ...]      # the resolved config as YAML
    fl-shadow pretrain-generator [CONFIG] [--set ...]  # train/cache the public-data generator

CONFIG is a YAML file or the name of a shipped config (``default``, ``shadow``, ...; default:
``default``). ``validate`` and ``run`` check everything before anything starts
(:func:`fl_shadow.apps.experiment.load_experiment`: names, params, rules between sections and
components, the machine, the data); a problem is one line naming the key, exit 2.

``run``
pretrains the public-data generator when the defense or attack needs one and no cached
checkpoint exists (with a progress bar, once, before the clients start), sizes the local simulation to the config (``num-supernodes`` = clients, CPU/GPU per client),
launches ``flwr run`` on a copy of the app's files (:mod:`fl_shadow.apps.staging`: the same
bundle, without Flower walking a virtual environment inside the project) with telemetry, usage
stats and runtime dependency installation off, and
finally checks the run's own outcome (``status.json``), because ``flwr run --stream`` exits 0
even when the ServerApp fails: exit 0 when it says ``completed`` (the summary is printed, its
"Warnings" last), else exit 1 with the run's warnings (``warnings.jsonl``), state and one-line
cause (``failed``: the cause; ``stopped``: ``flwr stop`` or a signal).
The working directory is the run's project folder: the relative ``--run-dir`` and the config's
relative paths resolve against it, here and in the ServerApp (run config ``project-dir``).

``resume`` checks the folder first (one line, exit 2: no checkpoint, a damaged one, one that
does not fit the experiment's rounds, model or strategy, run already completed, config changed,
or a defense whose client state a new federation would lose, which
``--allow-client-state-loss`` accepts), before anything in the folder is touched, then
launches the same federation with the run config's ``resume = true``: the server continues
from the last completed round (:mod:`fl_shadow.checkpoint`).

Threads: every command runs on ``FL_SHADOW_THREADS`` torch threads (default 1) with
``OMP_WAIT_POLICY=PASSIVE`` unless the environment sets another policy (:mod:`fl_shadow.threads`;
the ``flwr run`` it launches inherits both); a malformed ``FL_SHADOW_THREADS`` stops it at
start with a :class:`~fl_shadow.errors.ConfigError` naming the variable.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from fl_shadow import flower_keys as keys
from fl_shadow.apps import sweep as sweeps
from fl_shadow.apps.experiment import check_experiment, load_experiment
from fl_shadow.apps.federation import Federation
from fl_shadow.apps.staging import stage_app
from fl_shadow.checkpoint import keeps_client_state, prepare_resume
from fl_shadow.config import DEFAULT_CONFIG, ExperimentConfig, resolve_config_path
from fl_shadow.data import load_dataset
from fl_shadow.errors import ConfigError, ResumeError
from fl_shadow.generative.public import cached_generator_quality, pretrained_generator
from fl_shadow.report import check_writable_folder, new_run_dir, read_warnings
from fl_shadow.threads import set_torch_threads
from fl_shadow.training import resolve_device
from fl_shadow.verdict_report import NotASweepFolder, write_report

APP_DIR = Path(__file__).resolve().parents[2]

QUIET_ENV = {
    "FLWR_TELEMETRY_ENABLED": "0",
    "RAY_USAGE_STATS_ENABLED": "0",
    "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
    "RAY_DEDUP_LOGS": "0",
}


def _toml_string(value: str) -> str:
    return json.dumps(value)  # a JSON string literal is a valid TOML basic string


def flwr_command(config_path: Path, overrides: list[str], run_dir: Path, *,
                 num_clients: int, cpus_per_client: float, gpus_per_client: float,
                 run_config_file: Path, resume: bool = False, project_dir: Path | None = None,
                 app_dir: Path = APP_DIR) -> list[str]:
    """The ``flwr run`` command line for this experiment (run config written to a TOML file).

    ``project_dir`` (default: the working directory) is the folder the ServerApp resolves the
    config's relative paths against (:mod:`fl_shadow.apps.server_app`).
    """
    project_dir = (project_dir or Path.cwd()).resolve()
    run_config_file.write_text(
        f"{keys.RUN_CONFIG_PATH} = {_toml_string(str(config_path.resolve()))}\n"
        f"{keys.RUN_OVERRIDES} = {_toml_string('; '.join(overrides))}\n"
        f"{keys.RUN_DIR} = {_toml_string(str(run_dir.resolve()))}\n"
        f"{keys.RUN_RESUME} = {'true' if resume else 'false'}\n"
        f"{keys.RUN_PROJECT_DIR} = {_toml_string(str(project_dir))}\n")
    cpus = int(cpus_per_client) if float(cpus_per_client).is_integer() else cpus_per_client
    federation = (f"num-supernodes={num_clients} client-resources-num-cpus={cpus} "
                  f"client-resources-num-gpus={float(gpus_per_client)}")
    return ["flwr", "run", str(app_dir), "--stream", "--run-config", str(run_config_file),
            "--federation-config", federation]


def pretrain_generator(config: ExperimentConfig) -> Path:
    """Train (or find in the cache) the experiment's generator; returns the checkpoint file."""
    checkpoint = pretrained_generator(config, device=resolve_device(config.train.device))
    return checkpoint.path


def config_path_of(value: str | None) -> Path:
    """The CLI's CONFIG: a file, or a shipped config's name; the shipped default if omitted."""
    return resolve_config_path(value) if value else DEFAULT_CONFIG


def run(args: argparse.Namespace) -> int:
    config_path = config_path_of(args.config).resolve()
    config, components = load_experiment(config_path, args.set)
    if components.needs_generator:
        print(f"fl-shadow: generator {pretrain_generator(config)}", flush=True)
    run_dir = (Path(args.run_dir) if args.run_dir
               else new_run_dir(config.output_dir, config.name)).resolve()
    check_writable_folder(run_dir, "--run-dir")
    print(f"fl-shadow: running {config.name!r} -> {run_dir}", flush=True)
    return _launch(config, config_path, args.set, run_dir, resume=False)


def resume(args: argparse.Namespace) -> int:
    run_dir = Path(args.run_dir)
    config, checkpoint = prepare_resume(run_dir)
    if keeps_client_state(config.defense.name):
        if not args.allow_client_state_loss:
            raise ResumeError(
                f"defense.name: {config.defense.name} keeps per-client state between rounds in "
                "Flower's node state, which a new federation starts empty, so the resumed run "
                "would differ from an uninterrupted one; pass --allow-client-state-loss to "
                "resume anyway")
        print(f"fl-shadow: warning: {config.defense.name}'s client state is lost; the resumed "
              "rounds will differ from an uninterrupted run", file=sys.stderr, flush=True)
    components = check_experiment(config)
    Federation(config, components).check_checkpoint(checkpoint)
    if components.needs_generator:
        print(f"fl-shadow: generator {pretrain_generator(config)}", flush=True)
    print(f"fl-shadow: resuming {config.name!r} after round {checkpoint.server_round}/"
          f"{config.train.rounds} -> {run_dir}", flush=True)
    return _launch(config, run_dir / "config.yaml", [], run_dir, resume=True)


def _launch(config: ExperimentConfig, config_path: Path, overrides: list[str], run_dir: Path,
            *, resume: bool, app_dir: Path = APP_DIR) -> int:
    """Run ``flwr run`` for the experiment; 0 when its ``status.json`` says completed.

    ``app_dir``: the Flower app to run (this project; tests pass an app around it).
    """
    # `flwr` and the `flower-superlink` it starts live next to this interpreter; make them
    # findable when the environment is not activated (e.g. `.venv/bin/fl-shadow run`).
    bin_dir = str(Path(sys.executable).parent)
    env = {**os.environ, **QUIET_ENV,
           "PATH": os.pathsep.join([bin_dir, os.environ.get("PATH", "")])}
    with tempfile.TemporaryDirectory() as tmp:
        # Flower bundles the app from a copy of its files: from the project itself it would
        # walk every file of a virtual environment inside it first (seconds; staging.py).
        try:
            stage_app(app_dir, Path(tmp) / "app")
        except FileNotFoundError as exc:
            raise ConfigError(str(exc)) from None
        except ValueError as exc:  # Flower's, e.g. a fab-include pattern that matches nothing
            raise ConfigError(f"{app_dir / 'pyproject.toml'}: {exc}") from None
        cmd = flwr_command(config_path, overrides, run_dir,
                           num_clients=config.partition.num_clients,
                           cpus_per_client=config.simulation.num_cpus_per_client,
                           gpus_per_client=config.simulation.num_gpus_per_client,
                           run_config_file=Path(tmp) / "run_config.toml", resume=resume,
                           app_dir=Path(tmp) / "app")
        proc = subprocess.run(cmd, env=env, check=False)
    status_file = run_dir / "status.json"
    status = json.loads(status_file.read_text()) if status_file.exists() else {"state": "missing"}
    run_warnings = read_warnings(run_dir)
    if status.get("state") != "completed":
        for warning in run_warnings:  # a diverged training may explain the failure
            print(f"fl-shadow: warning ({warning.where}): {warning.message}", file=sys.stderr)
        detail = status.get("error", "see the log above")
        print(f"fl-shadow: run did not complete (state: {status.get('state')}, flwr exit "
              f"{proc.returncode}): {detail}", file=sys.stderr)
        return 1
    print((run_dir / "summary.md").read_text())  # its last section lists the warnings
    print(f"fl-shadow: results in {run_dir}"
          + (f" ({len(run_warnings)} warning(s): see Warnings above)" if run_warnings else ""))
    if resume:
        print(f"fl-shadow: resumed after round(s) {status.get('resumed_after')}")
    return 0


def sweep(args: argparse.Namespace) -> int:
    """``fl-shadow sweep``: plan (checking every cell), run what is not done, report."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    for noisy in ("flwr", "fl_shadow.report", "fl_shadow.apps.inprocess"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    spec, spec_dir = sweeps.load_sweep(args.spec)
    out = Path(args.out or Path("results") / "sweeps" / spec.name).resolve()
    if not args.report_only:
        cells = sweeps.plan(spec, spec_dir)
        attacks = sum(len(c.attacks) for c in cells)
        print(f"fl-shadow: sweep {spec.name!r}: {len(cells)} federation cells, {attacks} "
              f"attack runs -> {out}", flush=True)
        if args.plan:
            for cell in cells:
                print(f"  {cell.name}: {', '.join(a.label for a in cell.attacks)}"
                      + "".join(f" (skips {label}: {why})" for label, why in cell.skipped))
            return 0
        for _ in sweeps.run_sweep(spec, cells, out, jobs=args.jobs or spec.jobs,
                                  engine=args.engine):
            pass
    try:
        files = write_report(out, reference=spec.reference)
    except NotASweepFolder as exc:
        raise ConfigError(f"--out: {exc}") from None
    print(f"fl-shadow: report {files.html}", flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="fl-shadow", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name, help_text in (("run", "run an experiment on Flower's simulation engine"),
                            ("validate", "check a config and exit"),
                            ("show-config", "print the resolved config"),
                            ("pretrain-generator", "train the public-data generator into the "
                             "cache (or report the cached one)")):
        p = sub.add_parser(name, help=help_text)
        p.add_argument("config", nargs="?", help="YAML experiment config, or a shipped "
                       "config's name (default: the offline default)")
        p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                       help="override a config key, e.g. --set train.rounds=5 (repeatable)")
        if name == "run":
            p.add_argument("--run-dir", help="results folder (default: a new timestamped one)")
    p = sub.add_parser("sweep", help="run a sweep (defenses x strengths x attacks x seeds) and "
                       "write its report; resumes where a killed sweep stopped")
    p.add_argument("spec", metavar="SPEC", help="sweep spec YAML (e.g. "
                   "experiments/configs/sweeps/cpu.yaml)")
    p.add_argument("--out", help="results folder (default: results/sweeps/<spec name>)")
    p.add_argument("--jobs", type=int, help="worker processes (default: the spec's)")
    p.add_argument("--engine", choices=("inprocess", "flwr"),
                   help="in-process replay (default) or a real fl-shadow run per cell")
    p.add_argument("--plan", action="store_true", help="check the spec and list its cells")
    p.add_argument("--report-only", action="store_true",
                   help="rebuild the report from the records already in --out")
    p = sub.add_parser("resume", help="continue a killed or failed run from its last completed "
                       "round (its folder's config.yaml and checkpoint.npz)")
    p.add_argument("run_dir", metavar="RUN_DIR", help="results folder of the interrupted run")
    p.add_argument("--allow-client-state-loss", action="store_true",
                   help="resume a defense that keeps client state between rounds (shadow, "
                   "fedkl, latent_minimax, censor) although a new federation starts it empty")
    args = parser.parse_args(argv)
    try:
        set_torch_threads()
        if args.command == "run":
            return run(args)
        if args.command == "resume":
            return resume(args)
        if args.command == "sweep":
            return sweep(args)
        path = config_path_of(args.config)
        if args.command == "show-config":
            config, _ = load_experiment(path, args.set, data=False)
            print(config.to_yaml(), end="")
        elif args.command == "pretrain-generator":
            logging.basicConfig(level=logging.INFO, format="%(message)s")
            config, _ = load_experiment(path, args.set)
            checkpoint = pretrain_generator(config)
            quality = cached_generator_quality(config, load_dataset(config.data,
                                                                    seed=config.seed))
            if quality is not None:
                print(f"fl-shadow: generator quality: latent fit {quality.public_fit_psnr:.1f} "
                      f"dB on public images, {quality.held_out_fit_psnr:.1f} dB on unseen "
                      f"ones; samples {quality.sample_to_public_psnr:.1f} dB from their "
                      f"nearest public image, unseen images "
                      f"{quality.held_out_to_public_psnr:.1f} dB")
                for message in quality.warnings():
                    print(f"fl-shadow: warning: {message}")
            print(f"fl-shadow: generator {checkpoint}")
        else:
            _, components = load_experiment(path, args.set)
            print(f"{args.config or 'default'}: ok ({components.summary()})")
        return 0
    except (ConfigError, ResumeError) as exc:
        print(f"fl-shadow: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
