"""FedAvg whose server is curious: it attacks individual updates before aggregating them.

Aggregation is Flower's own FedAvg; this class only adds four things around it: the fit config
every client needs (round, total rounds, the experiment config), the attack hook on each
received update, the run record (training metrics, attacks and their scores), and a checkpoint
after every completed round from which a killed run resumes (:mod:`fl_shadow.checkpoint`).

Resumed runs: Flower's server loop numbers rounds from 1, but clients derive their per-round
randomness from the round number, and defenses schedule on it. A strategy built with
``resume=checkpoint`` therefore maps Flower's round ``r`` to ``checkpoint.server_round + r`` in
every hook, so clients, attack, records and checkpoints see the same round numbers as in an
uninterrupted run; Flower is told to run only :attr:`CuriousFedAvg.remaining_rounds`.
"""

from __future__ import annotations

import logging

import numpy as np
from flwr.common import (
    EvaluateIns,
    EvaluateRes,
    FitIns,
    FitRes,
    Parameters,
    Scalar,
    ndarrays_to_parameters,
    parameters_to_ndarrays,
)
from flwr.server.client_manager import ClientManager
from flwr.server.client_proxy import ClientProxy
from flwr.server.strategy import FedAvg

from fl_shadow import flower_keys as keys
from fl_shadow.checkpoint import (
    Checkpoint,
    capture_rng,
    config_digest,
    restore_rng,
    save_checkpoint,
)
from fl_shadow.report import RunRecorder
from fl_shadow.scoring import Scorer
from strategies.attack_hook import AttackHook, AttackOutcome, ReceivedUpdate

log = logging.getLogger(__name__)


class CuriousFedAvg(FedAvg):
    """FedAvg plus a malicious-server hook.

    Args:
        experiment_yaml: the resolved experiment config, sent to clients each round.
        num_rounds: total rounds (sent to clients: defenses schedule on it).
        recorder: writes the results folder.
        attack_hook: runs the attack on chosen updates; None for an honest server.
        scorer: scores reconstructions against the audit record (simulation only).
        federated_evaluation: the clients also evaluate each round's global model with their
            private part (a defense whose ``private_model`` is true); the run is finished
            after the last of these instead of after the central evaluation.
        resume: continue an interrupted run from this checkpoint: its weights are the initial
            parameters (replacing ``initial_parameters``), its random states are restored when
            Flower asks for them, and rounds are numbered from ``resume.server_round + 1``.
        **fedavg_kwargs: passed to :class:`flwr.server.strategy.FedAvg`.
    """

    def __init__(self, *, experiment_yaml: str, num_rounds: int, recorder: RunRecorder,
                 attack_hook: AttackHook | None = None, scorer: Scorer | None = None,
                 federated_evaluation: bool = False, resume: Checkpoint | None = None,
                 **fedavg_kwargs: object) -> None:
        if federated_evaluation:
            fedavg_kwargs.update(fraction_evaluate=1.0,
                                 min_evaluate_clients=fedavg_kwargs.get("min_fit_clients", 1))
        if resume is not None:
            if not 1 <= resume.server_round < num_rounds:
                raise ValueError(f"resume: checkpoint closes round {resume.server_round}, the "
                                 f"run has {num_rounds}; nothing left to run")
            fedavg_kwargs["initial_parameters"] = ndarrays_to_parameters(resume.arrays)
        super().__init__(**fedavg_kwargs)  # type: ignore[arg-type]
        self.start_round = resume.server_round if resume is not None else 0
        self._resume_rng = resume.rng if resume is not None else None
        self.federated_evaluation = federated_evaluation
        self.experiment_yaml = experiment_yaml
        self.num_rounds = num_rounds
        self.recorder = recorder
        self.attack_hook = attack_hook
        self.scorer = scorer
        self._sent: dict[int, Parameters] = {}
        self._observed: set[int] = set()
        self._evaluated: Parameters | None = None
        self._config_sha256 = config_digest(experiment_yaml)

    @property
    def remaining_rounds(self) -> int:
        """Rounds Flower still has to run (all of them unless resuming)."""
        return self.num_rounds - self.start_round

    def initialize_parameters(self, client_manager: ClientManager) -> Parameters | None:
        if self._resume_rng is not None:
            restore_rng(self._resume_rng)
            self._resume_rng = None
        return super().initialize_parameters(client_manager)

    def configure_fit(self, server_round: int, parameters: Parameters,
                      client_manager: ClientManager) -> list[tuple[ClientProxy, FitIns]]:
        server_round += self.start_round
        self._sent = {server_round: parameters}
        instructions = super().configure_fit(server_round, parameters, client_manager)
        for _, ins in instructions:
            ins.config.update(self._round_config(server_round))
        return instructions

    def configure_evaluate(self, server_round: int, parameters: Parameters,
                           client_manager: ClientManager
                           ) -> list[tuple[ClientProxy, EvaluateIns]]:
        server_round += self.start_round
        if not self.federated_evaluation:
            return []
        instructions = super().configure_evaluate(server_round, parameters, client_manager)
        for _, ins in instructions:
            ins.config.update(self._round_config(server_round))
        return instructions

    def aggregate_evaluate(self, server_round: int,
                           results: list[tuple[ClientProxy, EvaluateRes]],
                           failures: list[tuple[ClientProxy, EvaluateRes] | BaseException]
                           ) -> tuple[float | None, dict[str, Scalar]]:
        server_round += self.start_round
        rows = sorted(({"client": int(res.metrics.get(keys.PARTITION_ID, -1)),
                        "num_examples": res.num_examples, "loss": float(res.loss),
                        "accuracy": float(res.metrics["accuracy"]),
                        "macro_f1": float(res.metrics["macro_f1"])} for _, res in results),
                      key=lambda r: r["client"])
        self.recorder.log_client_utility(server_round, rows)
        for failure in failures:
            self.recorder.log_failure(server_round, failure)
        if server_round == self.num_rounds:
            self.recorder.finish()
        if self._evaluated is not None:
            self._save_checkpoint(server_round, self._evaluated)
        return super().aggregate_evaluate(server_round, results, failures)

    def _round_config(self, server_round: int) -> dict[str, Scalar]:
        return {keys.SERVER_ROUND: server_round, keys.NUM_ROUNDS: self.num_rounds,
                keys.EXPERIMENT: self.experiment_yaml}

    def aggregate_fit(self, server_round: int, results: list[tuple[ClientProxy, FitRes]],
                      failures: list[tuple[ClientProxy, FitRes] | BaseException]
                      ) -> tuple[Parameters | None, dict[str, Scalar]]:
        try:
            results = self.observe_updates(server_round, results, failures)
            return super().aggregate_fit(server_round + self.start_round, results, failures)
        except BaseException as exc:
            self.recorder.fail(exc)
            raise

    def observe_updates(self, server_round: int, results: list[tuple[ClientProxy, FitRes]],
                        failures: list[tuple[ClientProxy, FitRes] | BaseException]
                        ) -> list[tuple[ClientProxy, FitRes]]:
        """Record and attack the updates of Flower's round ``server_round`` as received.

        Runs once per round: a wrapper that transforms updates before aggregating them (e.g.
        Flower's server-side DP clipping, :mod:`strategies.flower_dp`) calls it first, with the
        updates exactly as they arrived, and the call from :meth:`aggregate_fit` is then a
        no-op. Returns the results in the fixed order aggregation uses.
        """
        # Replies arrive in whatever order the clients finish; aggregating in a fixed order keeps
        # floating-point sums, and so whole runs, reproducible under a seed.
        results = sorted(results, key=lambda r: int(r[1].metrics.get(keys.PARTITION_ID, 0)))
        server_round += self.start_round
        if server_round in self._observed:
            return results
        self._observed.add(server_round)
        global_arrays = parameters_to_ndarrays(self._sent[server_round])
        wanted: list[ReceivedUpdate] = []  # attack.parallel > 1: attacked together below
        for _, res in results:
            client_id = int(res.metrics.get(keys.PARTITION_ID, -1))
            self.recorder.log_fit(server_round, client_id, res.num_examples, res.metrics)
            if self.attack_hook is not None and self.attack_hook.wants(server_round, client_id):
                if self.attack_hook.parallel > 1:
                    wanted.append(ReceivedUpdate(client_id, parameters_to_ndarrays(res.parameters),
                                                 res.num_examples, res.metrics))
                    continue
                outcome = self.attack_hook.run(server_round, client_id, global_arrays,
                                               parameters_to_ndarrays(res.parameters),
                                               res.num_examples, res.metrics)
                if outcome is not None:
                    self._record_attack(outcome, global_arrays)
        if wanted and self.attack_hook is not None:
            # Scored and recorded in client order, each while the later attacks still run.
            for outcome in self.attack_hook.run_all(server_round, global_arrays, wanted):
                self._record_attack(outcome, global_arrays)
        for failure in failures:
            self.recorder.log_failure(server_round, failure)
        return results

    def _record_attack(self, outcome: AttackOutcome, global_arrays: list[np.ndarray]) -> None:
        scores = (self.scorer.score(outcome.reconstruction, outcome.audit, global_arrays)
                  if self.scorer is not None else None)
        self.recorder.log_attack(outcome, scores)

    def evaluate(self, server_round: int,
                 parameters: Parameters) -> tuple[float, dict[str, Scalar]] | None:
        if server_round == 0 and self.start_round:
            return None  # the checkpoint's model: its row is already in utility.jsonl
        server_round += self.start_round
        try:
            result = super().evaluate(server_round, parameters)
        except BaseException as exc:
            self.recorder.fail(exc)
            raise
        if result is not None:
            loss, metrics = result
            self.recorder.log_utility(server_round, loss, metrics)
        if server_round == 0:
            return result
        if self.federated_evaluation:
            # The round closes after the clients' own evaluation (aggregate_evaluate).
            self._evaluated = parameters
            return result
        if server_round == self.num_rounds:
            self.recorder.finish()
        self._save_checkpoint(server_round, parameters)
        return result

    def _save_checkpoint(self, server_round: int, parameters: Parameters) -> None:
        """Write the checkpoint closing ``server_round``, after every row of that round."""
        try:
            save_checkpoint(self.recorder.run_dir, Checkpoint(
                server_round=server_round, num_rounds=self.num_rounds,
                config_sha256=self._config_sha256, arrays=parameters_to_ndarrays(parameters),
                rng=capture_rng()))
        except BaseException as exc:
            self.recorder.fail(exc)
            raise
        self._evaluated = None
