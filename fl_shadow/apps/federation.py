"""One builder for every federation: the ServerApp, the ClientApp and every experiment script.

:func:`build_federation` turns a config into a :class:`Federation`, which builds, lazily and
once each, everything a run is made of:

* the clients (:meth:`Federation.client`): a :class:`~clients.defended.DefendedClient` for a
  Flower node, simulated (its partition of the shared dataset, an audit record for scoring) or
  deployed (the hospital's own data folder, no audit);
* the curious server (:meth:`Federation.strategy`): the configured Flower strategy, inside
  Flower's DP wrapper when ``strategy.flower_dp`` asks for one, inside
  :class:`~strategies.curious.CuriousServer` with its recorder, checkpoints, attack hook and
  scorer;
* the pieces both sides share: the model architecture, the local-training plan of each client
  (the clients train with it, the attacker replays it), the public-data generator.

The attacker's inputs are built here too, and only from public things: :meth:`Federation.prior`
holds a :class:`~fl_shadow.models.ModelArchitecture` (settings, no data), the public split and
the public-data generator; the hook's label lookup is handed over only when the threat model
gives labels (``attack.labels: given``). Nothing handed to an attack closes over client data.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from functools import cached_property
from pathlib import Path

import numpy as np
import torch
from flwr.app import Context
from flwr.common import NDArrays, Scalar, ndarrays_to_parameters

from clients.defended import DefendedClient, LocalData
from fl_shadow import flower_keys as keys
from fl_shadow import metrics
from fl_shadow.apps.experiment import Components, check_experiment, resolve_components
from fl_shadow.checkpoint import Checkpoint, config_digest
from fl_shadow.config import ExperimentConfig, load_config_dict, parse_yaml
from fl_shadow.data import DatasetSplits, client_dataset, load_dataset, partition_indices
from fl_shadow.defenses import Defense, describe_defense
from fl_shadow.diagnostics import capture_warnings
from fl_shadow.errors import ConfigError, ProtocolError, ResumeError
from fl_shadow.generative import ImageGenerator
from fl_shadow.generative.public import pretrained_generator
from fl_shadow.models import ModelArchitecture
from fl_shadow.reference_classifier import train_reference_classifier
from fl_shadow.report import RunRecorder
from fl_shadow.scoring import Scorer
from fl_shadow.threat_model import Attack, DefenseKnowledge, Prior
from fl_shadow.training import (
    LocalTraining,
    evaluate_loss,
    local_training_plan,
    predict,
    resolve_device,
)
from strategies import (
    AttackHook,
    Checkpointer,
    CuriousServer,
    RoundClock,
    StrategyInputs,
    UpdateObserver,
    wrap_with_flower_dp,
)
from strategies.curious import UpdateTap, write_server_state

log = logging.getLogger(__name__)

EvaluateFn = Callable[[int, NDArrays, dict[str, Scalar]], tuple[float, dict[str, Scalar]]]


class Federation:
    """Everything one experiment's federation is made of, built from its config.

    Args:
        config: the experiment.
        components: its resolved components (default: resolved here, without the machine
            and data checks :func:`~fl_shadow.apps.experiment.check_experiment` adds).
        load_warnings: the messages those checks warned (see :func:`build_federation`); the
            run's recorder writes them to its results folder.
    """

    def __init__(self, config: ExperimentConfig, components: Components | None = None, *,
                 load_warnings: Sequence[str] = ()) -> None:
        self.config = config
        self.components = components if components is not None else resolve_components(config)
        self.load_warnings = tuple(load_warnings)
        self.device = resolve_device(config.train.device)

    # -- shared by both sides -----------------------------------------------------------------
    @cached_property
    def splits(self) -> DatasetSplits:
        """The shared dataset (simulation clients, and the server's evaluation and scoring)."""
        return load_dataset(self.config.data, seed=self.config.seed)

    @cached_property
    def architecture(self) -> ModelArchitecture:
        """The task model, for the shared dataset's image shape and classes."""
        return self.architecture_for(self.splits.image_shape, self.splits.num_classes)

    def architecture_for(self, image_shape: tuple[int, ...], num_classes: int
                         ) -> ModelArchitecture:
        m = self.config.model
        return ModelArchitecture(name=m.name, in_channels=int(image_shape[0]),
                                 num_classes=int(num_classes), image_size=int(image_shape[1]),
                                 width=m.width, norm=m.norm)

    def plan_for(self, client_id: int) -> LocalTraining:
        """The local-training plan the server sends client ``client_id``: its batch size from
        ``partition.batch_sizes``, FedProx's proximal weight from the strategy."""
        c = self.components
        return local_training_plan(
            self.config.train, batch_size=self.config.partition.batch_size_of(client_id),
            proximal_mu=c.strategy.proximal_mu(c.strategy_params))

    def new_defense(self) -> Defense:
        """A fresh defense of the configured kind (clients build one per round)."""
        return self.components.defense.build(self.components.defense_params)

    def public_generator(self) -> ImageGenerator:
        """The generator pretrained on the public split (the cached checkpoint; trained into
        the cache first when missing)."""
        return pretrained_generator(self.config, device="cpu").generator

    def initial_arrays(self) -> list[np.ndarray]:
        """Round 1's global model, seeded from ``config.seed``."""
        torch.manual_seed(self.config.seed)
        return [v.detach().cpu().numpy() for v in self.architecture().state_dict().values()]

    @cached_property
    def state_keys(self) -> list[str]:
        """The model's ``state_dict`` keys, in the order parameters travel."""
        return list(self.architecture().state_dict())

    def check_checkpoint(self, checkpoint: Checkpoint) -> None:
        """Refuse a checkpoint this experiment cannot continue, before anything is touched.

        It must close a round this run has left after it (``1 <= server_round < train.rounds``,
        of a run of ``train.rounds``); its arrays must be the model's (count, and each array's
        shape), and the strategy state
        it carries must be the configured strategy's (the names of ``StrategySpec.
        server_state``, each null or one array per model array, of its shape). The file's own
        consistency is :func:`fl_shadow.checkpoint.load_checkpoint`'s.

        Raises:
            ResumeError: naming the array or state at fault.
        """
        rounds = self.config.train.rounds
        what = f"the checkpoint of round {checkpoint.server_round}"
        if checkpoint.num_rounds != rounds or not 1 <= checkpoint.server_round < rounds:
            raise ResumeError(f"{what} of {checkpoint.num_rounds} does not continue a run of "
                              f"train.rounds={rounds} (rounds 1..{rounds - 1} can be resumed)")
        expected = {k: tuple(v.shape) for k, v in self.architecture().state_dict().items()}
        shapes = list(expected.values())
        if len(checkpoint.arrays) != len(shapes):
            raise ResumeError(f"{what} holds {len(checkpoint.arrays)} arrays, the model "
                              f"({self.config.model.name}) has {len(shapes)}: not this "
                              "experiment's model")
        for name, shape, array in zip(expected, shapes, checkpoint.arrays, strict=True):
            if tuple(array.shape) != shape:
                raise ResumeError(f"{what}: {name} has shape {tuple(array.shape)}, the model's "
                                  f"has {shape}")
        names = set(self.components.strategy.server_state)
        if checkpoint.strategy_state and set(checkpoint.strategy_state) != names:
            raise ResumeError(f"{what} carries strategy state "
                              f"{sorted(checkpoint.strategy_state)}, strategy "
                              f"{self.config.strategy.name} keeps {sorted(names) or 'none'}")
        for state, value in checkpoint.strategy_state.items():
            if value is None:
                continue
            if len(value) != len(shapes) or any(tuple(a.shape) != s
                                                for a, s in zip(value, shapes)):
                raise ResumeError(f"{what}: strategy state {state} does not match the model's "
                                  "arrays (count or shapes)")

    def round_config(self, server_round: int) -> dict[str, Scalar]:
        """What every client's fit and evaluate config carries (:mod:`fl_shadow.flower_keys`)."""
        return {keys.SERVER_ROUND: server_round, keys.NUM_ROUNDS: self.config.train.rounds,
                keys.EXPERIMENT: self.experiment_yaml}

    @cached_property
    def partition(self) -> list[np.ndarray]:
        """Every client's train-split indices, computed once per process (each message builds
        its client through :meth:`client`)."""
        return partition_indices(self.splits.train.labels, self.config.partition,
                                 seed=self.config.seed)

    @cached_property
    def experiment_yaml(self) -> str:
        return self.config.to_yaml()

    # -- the client side ----------------------------------------------------------------------
    def client(self, node_config: Mapping[str, object], context: Context | None
               ) -> DefendedClient:
        """The client of a Flower node.

        * Simulation: ``node_config`` holds ``partition-id``/``num-partitions``; the node takes
          its partition of the shared dataset and sends the audit record used for scoring.
        * Deployment: ``node_config`` holds ``data-path`` (the hospital's own folder or
          ``.npz``) and ``client-id`` (its number, 0..``partition.num_clients``-1, default 0);
          the node uses the training split of its data and sends no audit record.

        Raises:
            ConfigError: the node config is neither, or does not fit the experiment.
        """
        if keys.NODE_PARTITION_ID in node_config:
            client_id = _node_int(node_config, keys.NODE_PARTITION_ID)
            n = self.config.partition.num_clients
            num_partitions = _node_int(node_config, keys.NODE_NUM_PARTITIONS, default=-1)
            if num_partitions != n:
                raise ConfigError(
                    f"partition.num_clients: the config asks for {n} clients but the "
                    f"simulation runs {num_partitions} SuperNodes; start it with "
                    f"--federation-config 'num-supernodes={n}' (fl-shadow run does this)")
            splits = self.splits
            indices, local = client_dataset(splits, self.config.partition, client_id,
                                            seed=self.config.seed, partition=self.partition)
            data = LocalData(local.images, local.labels, np.asarray(indices), splits.mean,
                             splits.std, splits.num_classes, *_held_out(splits))
            return self.client_for(client_id, data, context=context, send_audit=True,
                                   architecture=self.architecture)
        if keys.NODE_DATA_PATH not in node_config:
            raise ConfigError("node config: expected 'data-path' (deployment) or "
                              "'partition-id' (simulation)")
        client_id = _node_int(node_config, keys.NODE_CLIENT_ID, default=0)
        if not 0 <= client_id < self.config.partition.num_clients:
            raise ConfigError("node config: client-id must be in "
                              f"0..{self.config.partition.num_clients - 1} "
                              f"(partition.num_clients), got {client_id}")
        data_cfg = replace(self.config.data, path=str(node_config[keys.NODE_DATA_PATH]))
        self.components.dataset.check_path(data_cfg.path)
        splits = load_dataset(data_cfg, seed=self.config.seed)
        data = LocalData(splits.train.images, splits.train.labels, np.arange(len(splits.train)),
                         splits.mean, splits.std, splits.num_classes, *_held_out(splits))
        return self.client_for(client_id, data, context=context, send_audit=False,
                               architecture=self.architecture_for(splits.image_shape,
                                                                  splits.num_classes))

    def client_for(self, client_id: int, data: LocalData, *, context: Context | None,
                   send_audit: bool, architecture: ModelArchitecture | None = None
                   ) -> DefendedClient:
        """The client holding ``data`` (tests and deployment build clients through this)."""
        if architecture is None:
            architecture = self.architecture_for(tuple(data.images.shape[1:]),
                                                 data.num_classes)
        return DefendedClient(
            client_id=client_id, data=data, plan=self.plan_for(client_id),
            model_factory=architecture, defense_factory=self.new_defense,
            seed=self.config.seed, device=self.device, context=context, send_audit=send_audit,
            public_generator=(self.public_generator
                              if self.components.defense.needs_generator else None))

    # -- the server side ----------------------------------------------------------------------
    def attack(self) -> Attack | None:
        """The configured attack, built; None for an honest server (``attack.name: none``)."""
        c = self.components
        if not c.attack.reconstructs:
            return None
        return c.attack.build(c.attack_params, device=self.device, seed=self.config.seed)

    def prior(self) -> Prior:
        """What the attacker knows in public: architecture, shape, classes, normalization, the
        public split and (for a generative attack) the generator trained on it."""
        s = self.splits
        generator = (self.public_generator() if self.components.attack_needs.generator
                     else None)
        return Prior(model_factory=self.architecture, image_shape=s.image_shape,
                     num_classes=s.num_classes, mean=s.mean, std=s.std,
                     public_images=s.public.images if len(s.public) else None,
                     generator=generator)

    def defense_knowledge(self, server_round: int, num_examples: int = 0) -> DefenseKnowledge:
        """The clients' defense as an adaptive attacker knows it in ``server_round``, for a
        client that reported ``num_examples``."""
        d = self.config.defense
        return describe_defense(d.name, d.params, server_round=server_round,
                                num_rounds=self.config.train.rounds, mean=self.splits.mean,
                                std=self.splits.std, num_examples=num_examples)

    def attack_hook(self, attack: Attack | None = None) -> AttackHook | None:
        """The curious server's hook around ``attack`` (default: :meth:`attack`)."""
        attack = attack if attack is not None else self.attack()
        if attack is None:
            return None
        a = self.config.attack
        return AttackHook(attack, self.prior(), selection=a, num_rounds=self.config.train.rounds,
                          plan_for=self.plan_for, state_keys=self.state_keys,
                          label_lookup=self.splits.train.labels if a.labels == "given" else None,
                          defense_knowledge=self.defense_knowledge if a.adaptive else None,
                          device=self.device)

    def scorer(self) -> Scorer:
        """Scores reconstructions against the attacked images (simulation only), with the
        reference classifier trained on the public split when there is one."""
        s = self.splits
        reference = (train_reference_classifier(s.public, num_classes=s.num_classes,
                                                mean=s.mean, std=s.std, seed=self.config.seed)
                     if len(s.public) else None)
        return Scorer(s.train, model_factory=self.architecture, state_keys=self.state_keys,
                      mean=s.mean, std=s.std, reference=reference,
                      public=s.public.images if len(s.public) else None)

    def evaluate_fn(self) -> EvaluateFn:
        """Central evaluation of a global model on the test split: loss, accuracy, macro-F1."""
        s, device = self.splits, self.device
        images, labels = s.normalize(s.test.images), s.test.labels
        build, bs = self.architecture, self.config.train.eval_batch_size

        def evaluate(server_round: int, arrays: NDArrays, _config: dict[str, Scalar]
                     ) -> tuple[float, dict[str, Scalar]]:
            model = build().to(device)
            state = model.state_dict()
            model.load_state_dict({k: torch.as_tensor(a).to(state[k].dtype)
                                   for k, a in zip(state, arrays, strict=True)})
            preds = predict(model, images, batch_size=bs, device=device)
            loss = evaluate_loss(model, images, labels.to(device), batch_size=bs, device=device)
            return loss, {"accuracy": metrics.accuracy(preds, labels),
                          "macro_f1": metrics.macro_f1(preds, labels, s.num_classes)}

        return evaluate

    def sampled_clients(self) -> int:
        """Clients the strategy samples per round (Flower's ``num_fit_clients`` rule)."""
        s, n = self.config.strategy, self.config.partition.num_clients
        return max(int(n * s.fraction_fit), s.min_fit_clients)

    def strategy(self, run_dir: Path, *, resume: Checkpoint | None = None,
                 attack: Attack | None = None, tap: UpdateTap | None = None) -> CuriousServer:
        """The curious server of this federation, writing ``run_dir``.

        Args:
            run_dir: the results folder (created; with ``resume``, continued).
            resume: continue an interrupted run from this checkpoint: its weights are the
                initial parameters, its strategy state and random states are restored, and
                rounds are numbered from ``resume.server_round + 1``; it is checked first
            (:meth:`check_checkpoint`).
            attack: the attack to run (default: the configured one).
            tap: sees every accepted update before aggregation (see
                :class:`~strategies.curious.UpdateObserver`).
        """
        config, c = self.config, self.components
        if resume is not None:
            self.check_checkpoint(resume)  # before the recorder drops the unfinished rows
        torch.manual_seed(config.seed)
        clock = RoundClock(config.train.rounds,
                           resume.server_round if resume is not None else 0)
        initial = resume.arrays if resume is not None else self.initial_arrays()
        recorder = RunRecorder(run_dir, self.experiment_yaml, config.train.rounds,
                               resume_after=resume.server_round if resume is not None else None,
                               load_warnings=self.load_warnings,
                               attack_name=attack.name if attack is not None
                               else config.attack.name)
        hook = self.attack_hook(attack)
        scorer = self.scorer() if hook is not None else None
        s, n = config.strategy, config.partition.num_clients
        federated_evaluation = c.defense.private_model
        inputs = StrategyInputs(
            fraction_fit=s.fraction_fit, min_fit_clients=s.min_fit_clients,
            min_available_clients=s.min_available_clients,
            fraction_evaluate=1.0 if federated_evaluation else 0.0,
            min_evaluate_clients=s.min_fit_clients if federated_evaluation else 0,
            initial_parameters=ndarrays_to_parameters(initial),
            evaluate_fn=self.evaluate_fn())
        inner = c.strategy.factory(c.strategy_params, inputs)
        if resume is not None and resume.strategy_state:
            write_server_state(inner, resume.strategy_state)
        inner = wrap_with_flower_dp(inner, s.flower_dp, sampled_clients=self.sampled_clients(),
                                    seed=config.seed)
        log.info("experiment %r: %d clients, %d rounds; %s", config.name, n,
                 config.train.rounds, c.summary())
        return CuriousServer(
            inner, clock=clock, round_config=self.round_config,
            observer=UpdateObserver(recorder, self.state_keys, hook=hook, scorer=scorer,
                                    tap=tap),
            recorder=recorder,
            checkpointer=Checkpointer(config_sha256=config_digest(self.experiment_yaml),
                                      server_state=c.strategy.server_state),
            min_fit_clients=s.min_fit_clients, min_available_clients=s.min_available_clients,
            wait_for_clients_s=s.wait_for_clients_s, num_clients=n,
            federated_evaluation=federated_evaluation,
            resume_rng=resume.rng if resume is not None else None)


def build_federation(config: ExperimentConfig, *, check: bool = False) -> Federation:
    """The :class:`Federation` of ``config``; with ``check``, after the machine and data
    checks of :func:`~fl_shadow.apps.experiment.check_experiment`, whose warnings the
    federation keeps for its results folder (:attr:`Federation.load_warnings`)."""
    if not check:
        return Federation(config)
    with capture_warnings() as caught:
        components = check_experiment(config)
    return Federation(config, components, load_warnings=caught)


@functools.lru_cache(maxsize=4)
def federation_of(experiment_yaml: str) -> Federation:
    """The federation of a resolved config's YAML text, once per process (the ClientApp
    receives the experiment with every message; clients in one process share its dataset)."""
    try:
        raw = parse_yaml(experiment_yaml, "the server's experiment config")
        return Federation(load_config_dict(raw))
    except ConfigError as exc:
        raise ProtocolError(f"the server's experiment config is not valid here: {exc}") from None


def _node_int(node_config: Mapping[str, object], key: str, *, default: int | None = None
              ) -> int:
    value = node_config.get(key, default)
    try:
        return int(str(value))
    except ValueError:
        raise ConfigError(f"node config: {key} must be an integer, got {value!r}") from None


def _held_out(splits: DatasetSplits) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """The test split a client evaluates on, if the dataset has one."""
    if len(splits.test) == 0:
        return None, None
    return splits.test.images, splits.test.labels


__all__ = ["Federation", "build_federation", "federation_of"]
