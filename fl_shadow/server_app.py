"""Flower ServerApp: read the experiment config once and build the curious FedAvg from it.

Run config (``[tool.flwr.app.config]``, overridable with ``flwr run --run-config``):

* ``config``: YAML experiment file, absolute or relative to the working directory or the app;
* ``overrides``: dotted ``key=value`` items separated by ``;`` (``"train.rounds=5"``);
* ``run-dir``: results folder to write (default: a new ``<output_dir>/<name>-<timestamp>``);
* ``resume``: continue ``run-dir`` from its last checkpoint (``fl-shadow resume``): the
  experiment is the folder's ``config.yaml`` (``config`` and ``overrides`` are ignored), Flower
  starts from the checkpoint's weights and runs only the remaining rounds
  (:mod:`fl_shadow.checkpoint`).
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from flwr.app import Context
from flwr.common import ndarrays_to_parameters
from flwr.server import ServerAppComponents, ServerConfig
from flwr.serverapp import ServerApp

from attacks import Prior
from fl_shadow import flower_keys as keys
from fl_shadow import metrics
from fl_shadow.checkpoint import Checkpoint, keeps_client_state, prepare_resume
from fl_shadow.config import ExperimentConfig, load_config, parse_overrides
from fl_shadow.data import DatasetSplits, load_dataset
from fl_shadow.defenses import DEFENSES
from fl_shadow.errors import ConfigError, ResumeError
from fl_shadow.logs import route_to_flower
from fl_shadow.models import build_model
from fl_shadow.reference_classifier import train_reference_classifier
from fl_shadow.report import RunRecorder, new_run_dir
from fl_shadow.scoring import Scorer
from fl_shadow.training import evaluate_loss, predict, resolve_device
from strategies.attack_hook import AttackHook
from strategies.curious_fedavg import CuriousFedAvg
from strategies.flower_dp import FlowerDpStrategy, wrap_with_flower_dp

log = logging.getLogger(__name__)
APP_DIR = Path(__file__).resolve().parent.parent


def resolve_config_path(path: str) -> Path:
    """Absolute paths as given; relative ones against the working directory, then the app."""
    candidate = Path(path).expanduser()
    if candidate.is_absolute() or candidate.exists():
        return candidate
    in_app = APP_DIR / candidate
    return in_app if in_app.exists() else candidate


def config_from_run_config(run_config: dict) -> ExperimentConfig:
    path = resolve_config_path(str(run_config.get(keys.RUN_CONFIG_PATH, "")) or
                               "experiments/configs/default.yaml")
    overrides = parse_overrides(str(run_config.get(keys.RUN_OVERRIDES, "")))
    return load_config(path, overrides)


def model_builder(config: ExperimentConfig, splits: DatasetSplits):  # type: ignore[no-untyped-def]
    c, h, _ = splits.image_shape

    def build() -> torch.nn.Module:
        return build_model(config.model.name, in_channels=c, num_classes=splits.num_classes,
                           image_size=h, width=config.model.width, norm=config.model.norm)

    return build


def make_evaluate_fn(config: ExperimentConfig, splits: DatasetSplits, build, device):  # type: ignore[no-untyped-def]
    """Centralized evaluation of the global model on the test split: loss, accuracy, F1."""
    images = splits.normalize(splits.test.images)
    labels = splits.test.labels

    def evaluate(server_round: int, arrays: list, _config: dict):  # type: ignore[no-untyped-def]
        model = build().to(device)
        state = model.state_dict()
        model.load_state_dict({k: torch.as_tensor(a).to(state[k].dtype)
                               for k, a in zip(state, arrays, strict=True)})
        bs = config.train.eval_batch_size
        preds = predict(model, images, batch_size=bs, device=device)
        loss = evaluate_loss(model, images, labels.to(device), batch_size=bs, device=device)
        return loss, {"accuracy": metrics.accuracy(preds, labels),
                      "macro_f1": metrics.macro_f1(preds, labels, splits.num_classes)}

    return evaluate


def attack_generator(config: ExperimentConfig) -> torch.nn.Module | None:
    """The public-data generator when the configured attack uses one (GGL, GIAS), else None."""
    from attacks import ATTACKS
    from fl_shadow.generative import pretrained_generator

    if not getattr(ATTACKS.get(config.attack.name).factory, "uses_generator", False):
        return None
    return pretrained_generator(config, device="cpu").generator


def build_strategy(config: ExperimentConfig, run_dir: Path, *,
                   resume: Checkpoint | None = None) -> CuriousFedAvg | FlowerDpStrategy:
    """Everything the server needs, built from the config.

    With ``resume``, the results folder of the interrupted run is continued from that
    checkpoint (rows of the unfinished round dropped) instead of started afresh. With
    ``strategy.flower_dp`` central DP, the curious FedAvg comes wrapped in Flower's DP wrapper
    (:mod:`strategies.flower_dp`; it forwards ``remaining_rounds``).
    """
    torch.manual_seed(config.seed)
    device = resolve_device(config.train.device)
    splits = load_dataset(config.data, seed=config.seed)
    build = model_builder(config, splits)
    torch.manual_seed(config.seed)
    initial = build()
    state_keys = list(initial.state_dict())
    initial_arrays = [v.detach().cpu().numpy() for v in initial.state_dict().values()]

    hook, reference = None, None
    if config.attack.name != "none" and len(splits.public):
        reference = train_reference_classifier(splits.public, num_classes=splits.num_classes,
                                               mean=splits.mean, std=splits.std,
                                               seed=config.seed)
    if config.attack.name != "none":
        prior = Prior(model_factory=build, image_shape=splits.image_shape,
                      num_classes=splits.num_classes, mean=splits.mean, std=splits.std,
                      public_images=splits.public.images if len(splits.public) else None,
                      generator=attack_generator(config))
        hook = AttackHook(config, prior, state_keys, label_lookup=splits.train.labels,
                          device=device)
    n = config.partition.num_clients
    s = config.strategy
    recorder = RunRecorder(run_dir, config.to_yaml(), config.train.rounds,
                           resume_after=resume.server_round if resume is not None else None)
    curious = CuriousFedAvg(
        experiment_yaml=config.to_yaml(), num_rounds=config.train.rounds, recorder=recorder,
        attack_hook=hook,
        federated_evaluation=DEFENSES.get(config.defense.name).factory.private_model,
        scorer=Scorer(splits.train, model_factory=build, state_keys=state_keys, mean=splits.mean,
                      std=splits.std, reference=reference),
        fraction_fit=s.fraction_fit, fraction_evaluate=0.0,
        min_fit_clients=min(s.min_fit_clients, n), min_evaluate_clients=0,
        min_available_clients=min(s.min_available_clients, n),
        evaluate_fn=make_evaluate_fn(config, splits, build, device),
        initial_parameters=ndarrays_to_parameters(initial_arrays),
        accept_failures=True, resume=resume,
    )
    return wrap_with_flower_dp(curious, s.flower_dp, num_clients=n, seed=config.seed)


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
        else:
            config = config_from_run_config(run_config)
            run_dir_value = str(run_config.get(keys.RUN_DIR, ""))
            run_dir = (Path(run_dir_value) if run_dir_value
                       else new_run_dir(config.output_dir, config.name))
    except (ConfigError, ResumeError) as exc:
        log.error("cannot start: %s", exc)
        raise
    strategy = build_strategy(config, run_dir, resume=checkpoint)
    log.info("experiment %r: %d clients, %d rounds, defense %s, attack %s%s", config.name,
             config.partition.num_clients, config.train.rounds, config.defense.name,
             config.attack.name, "" if checkpoint is None else
             f", resumed after round {checkpoint.server_round}")
    return ServerAppComponents(strategy=strategy,
                               config=ServerConfig(num_rounds=strategy.remaining_rounds))


app = ServerApp(server_fn=server_fn)
