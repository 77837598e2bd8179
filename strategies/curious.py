"""The curious server: a wrapper around any Flower strategy that attacks updates as they arrive.

:class:`CuriousServer` wraps a legacy Flower strategy (``flwr.server.strategy.*``, or one of
Flower's DP wrappers around one) the way Flower's own DP wrappers do: it *is* a ``Strategy``,
holds the wrapped one, and delegates every decision of federated learning to it. Around the
calls it composes a few small pieces, each with one job:

* :class:`RoundClock`: the run's round numbers. Flower's server loop numbers rounds from 1; a
  resumed run continues at ``start_round + 1`` (clients seed each round from its number and
  defenses schedule on it), so every call into the wrapped strategy, the clients' fit config,
  the records and the checkpoints use the run's numbers;
* ``round_config``: what every client needs in its fit/evaluate config (round, total rounds,
  the experiment), added to whatever the wrapped strategy sends;
* :class:`UpdateObserver`: each received update, before aggregation and exactly as it arrived:
  non-finite uploads are turned into failures, the rest recorded, attacked (the
  :class:`~strategies.attack_hook.AttackHook`) and scored (outside the attack), in a fixed
  order so that aggregation is reproducible;
* :class:`Checkpointer`: after each completed round, the global model, the server's random
  states and the wrapped strategy's own state across rounds (FedAdam's moments, ...);
* the :class:`~fl_shadow.report.RunRecorder` for the results folder, and the run's outcome: a
  round with fewer successful replies than ``strategy.min_fit_clients`` fails the run, with
  the clients' first error as its cause; a federation of the wrong size fails it before the
  first round (in simulation at once: Flower's simulation engine registers every SuperNode
  before the ServerApp's first call, :func:`simulated_federation_size`; in deployment after
  ``strategy.wait_for_clients_s``).
"""

from __future__ import annotations

import logging
import math
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TypeVar

import numpy as np
from flwr.common import (
    EvaluateIns,
    EvaluateRes,
    FitIns,
    FitRes,
    Parameters,
    Scalar,
    parameters_to_ndarrays,
)
from flwr.server.client_manager import ClientManager
from flwr.server.client_proxy import ClientProxy
from flwr.server.strategy import Strategy

from fl_shadow import flower_keys as keys
from fl_shadow.checkpoint import (
    Checkpoint,
    RngState,
    capture_rng,
    restore_rng,
    save_checkpoint,
)
from fl_shadow.errors import RunFailed
from fl_shadow.report import RunRecorder, describe_failure, failure_reason
from fl_shadow.scoring import Scorer
from fl_shadow.threat_model import AttackOutcome
from strategies.attack_hook import AttackHook, ReceivedUpdate, Skipped

log = logging.getLogger(__name__)

FitFailure = tuple[ClientProxy, FitRes] | BaseException
UpdateTap = Callable[[int, list[np.ndarray], ReceivedUpdate], None]
F = TypeVar("F")

#: How long a simulated federation whose size looks wrong is given to finish registering.
SIMULATION_SETTLE_S = 2.0


def simulated_federation_size(client_manager: ClientManager) -> int | None:
    """The number of SuperNodes of Flower's simulation engine; None outside a simulation.

    The engine registers all of its nodes (``num-supernodes``) in its in-memory link state as
    it starts, before the ServerApp has built anything, and they never leave; so the count the
    ServerApp's grid reports is the federation's size. In deployment nodes come and go (None:
    only waiting tells), as in the in-process driver, whose proxies have no grid.
    """
    # Flower's module, looked up rather than imported: importing it costs ~0.5 s (its link
    # state loads SQLAlchemy and Alembic) in every process that loads the strategies, and while
    # it is not imported no grid of this process can be one of its InMemoryGrids.
    inmemory = sys.modules.get("flwr.superlink.grid.inmemory_grid")
    for proxy in client_manager.all().values():
        grid = getattr(proxy, "grid", None)
        if inmemory is None or not isinstance(grid, inmemory.InMemoryGrid):
            return None
        return len(list(grid.get_node_ids()))
    return None


@dataclass(frozen=True)
class RoundClock:
    """Flower's round numbers -> the run's.

    Attributes:
        num_rounds: the run's total rounds.
        start_round: rounds completed before this server started (0, or the checkpoint's).
    """

    num_rounds: int
    start_round: int = 0

    def __post_init__(self) -> None:
        if not 0 <= self.start_round < self.num_rounds:
            raise ValueError(f"resume: the checkpoint closes round {self.start_round}, the run "
                             f"has {self.num_rounds}; nothing left to run")

    def run_round(self, flower_round: int) -> int:
        return flower_round + self.start_round

    @property
    def remaining_rounds(self) -> int:
        """Rounds Flower still has to run (all of them unless resuming)."""
        return self.num_rounds - self.start_round


def innermost(strategy: Strategy) -> Strategy:
    """The Flower strategy at the core of a chain of wrappers (Flower's DP wrappers, ours)."""
    while isinstance(getattr(strategy, "strategy", None), Strategy):
        strategy = strategy.strategy  # type: ignore[attr-defined]
    return strategy


def read_server_state(strategy: Strategy, names: Sequence[str]
                      ) -> dict[str, list[np.ndarray] | None]:
    """The wrapped strategy's arrays kept across rounds (``StrategySpec.server_state``)."""
    core = innermost(strategy)
    out: dict[str, list[np.ndarray] | None] = {}
    for name in names:
        value = getattr(core, name)
        out[name] = None if value is None else [np.asarray(a) for a in value]
    return out


def write_server_state(strategy: Strategy, state: Mapping[str, list[np.ndarray] | None]) -> None:
    """Put back what :func:`read_server_state` returned (resuming)."""
    core = innermost(strategy)
    for name, value in state.items():
        if not hasattr(core, name):
            raise ValueError(f"the strategy {type(core).__name__} has no state {name!r}")
        setattr(core, name, None if value is None else [np.array(a) for a in value])


class Checkpointer:
    """Writes the checkpoint that closes a round (:mod:`fl_shadow.checkpoint`).

    Args:
        config_sha256: digest of the resolved config, so a resume can refuse an edited one.
        server_state: names of the wrapped strategy's arrays kept across rounds.
    """

    def __init__(self, *, config_sha256: str, server_state: Sequence[str] = ()) -> None:
        self.config_sha256 = config_sha256
        self.server_state = tuple(server_state)

    def save(self, recorder: RunRecorder, clock: RoundClock, server_round: int,
             parameters: Parameters, strategy: Strategy) -> None:
        save_checkpoint(recorder.run_dir, Checkpoint(
            server_round=server_round, num_rounds=clock.num_rounds,
            config_sha256=self.config_sha256, arrays=parameters_to_ndarrays(parameters),
            rng=capture_rng(), strategy_state=read_server_state(strategy, self.server_state)))


def client_of(proxy: ClientProxy | None, res: FitRes) -> tuple[int, bool]:
    """``(id, has_partition_id)``: the partition id the client reported, else its node id."""
    reported = res.metrics.get(keys.PARTITION_ID)
    if isinstance(reported, int) and not isinstance(reported, bool):
        return reported, True
    node = getattr(proxy, "node_id", None)
    return (int(node) if node is not None else -1), False


class UpdateObserver:
    """Everything the server does with a round's updates before aggregating them.

    Args:
        recorder: the results folder.
        state_keys: ``state_dict`` keys, in the order parameters travel (names the bad tensor
            of a non-finite upload).
        hook: the attack hook; None for an honest server.
        scorer: scores reconstructions against the audit record (simulation only).
        tap: called with ``(server_round, global_arrays, update)`` for every accepted update
            (experiment scripts keep a federation's updates to attack them many times).
    """

    def __init__(self, recorder: RunRecorder, state_keys: Sequence[str], *,
                 hook: AttackHook | None = None, scorer: Scorer | None = None,
                 tap: UpdateTap | None = None) -> None:
        self.recorder = recorder
        self.state_keys = list(state_keys)
        self.hook = hook
        self.scorer = scorer
        self.tap = tap
        self._warned_unnamed: set[int] = set()

    def observe(self, server_round: int, global_arrays: list[np.ndarray],
                results: list[tuple[ClientProxy, FitRes]], failures: list[FitFailure]
                ) -> tuple[list[tuple[ClientProxy, FitRes]], list[FitFailure]]:
        """Record, check and attack the round's replies; returns them in aggregation order
        (by client id: replies arrive in whatever order clients finish, and a fixed order
        keeps floating-point sums, and so whole runs, reproducible under a seed) and the
        failures, non-finite uploads added."""
        failures = record_failures(self.recorder, server_round, failures)
        updates: list[tuple[ReceivedUpdate, ClientProxy, FitRes]] = []
        for proxy, res in results:
            client_id, named = client_of(proxy, res)
            if not named and client_id not in self._warned_unnamed:
                self._warned_unnamed.add(client_id)
                log.warning("a client reported no %r: recorded as node %d", keys.PARTITION_ID,
                            client_id)
            arrays = parameters_to_ndarrays(res.parameters)
            bad = _first_non_finite(arrays, self.state_keys)
            if bad is not None:
                reason = (f"client {client_id} sent a non-finite update ({bad}); rejected "
                          "before aggregation and attack")
                log.warning("round %d: %s", server_round, reason)
                self.recorder.log_failure(server_round, reason, client_id=client_id)
                failures.append(RuntimeError(reason))
                continue
            updates.append((ReceivedUpdate(client_id, arrays, res.num_examples, res.metrics,
                                           has_partition_id=named), proxy, res))
        updates.sort(key=lambda u: (not u[0].has_partition_id, u[0].client_id))
        wanted = []
        for update, _, _ in updates:
            self.recorder.log_fit(server_round, update.client_id, update.num_examples,
                                  update.metrics)
            if self.tap is not None:
                self.tap(server_round, global_arrays, update)
            if self.hook is not None and self.hook.wants(server_round, update):
                wanted.append(update)
        if wanted and self.hook is not None:
            results_iter = (self.hook.run_all(server_round, global_arrays, wanted)
                            if self.hook.parallel > 1 else
                            (self.hook.run(server_round, global_arrays, u) for u in wanted))
            # Scored and recorded in client order, each while the later attacks still run.
            for outcome in results_iter:
                self._record(outcome, global_arrays)
        return [(proxy, res) for _, proxy, res in updates], failures

    def _record(self, outcome: AttackOutcome | Skipped, global_arrays: list[np.ndarray]) -> None:
        if isinstance(outcome, Skipped):
            self.recorder.log_skipped_attack(outcome.server_round, outcome.client_id,
                                             outcome.reason)
            return
        scores = (self.scorer.score(outcome.reconstruction, outcome.audit, global_arrays)
                  if self.scorer is not None else None)
        self.recorder.log_attack(outcome, scores)


def record_failures(recorder: RunRecorder, server_round: int, failures: Sequence[F]
                    ) -> list[F]:
    """Write a row per failure (client and reason, :func:`~fl_shadow.report.describe_failure`);
    returns the failures in client order (unnamed last): they arrive in whatever order clients
    fail, and the first one is the run's cause when the round fails, the same every time."""
    described = sorted(((describe_failure(f), i) for i, f in enumerate(failures)),
                       key=lambda d: (d[0][0] is None, d[0][0] or 0, d[1]))
    for (client, reason), _ in described:
        recorder.log_failure(server_round, reason, client_id=client)
    return [failures[i] for _, i in described]


def _first_non_finite(arrays: Sequence[np.ndarray], names: Sequence[str]) -> str | None:
    for i, array in enumerate(arrays):
        a = np.asarray(array)
        if a.dtype.kind in "fc" and not np.isfinite(a).all():
            name = names[i] if i < len(names) else f"array {i}"
            count = int(a.size - np.isfinite(a).sum())
            return f"{name}: {count} of {a.size} values not finite"
    return None


class CuriousServer(Strategy):
    """Any Flower strategy, with a server that attacks each update before aggregating it.

    Args:
        strategy: the wrapped strategy (built from ``strategy.name``, possibly inside one of
            Flower's DP wrappers).
        clock: the run's round numbers (:class:`RoundClock`).
        round_config: ``round_config(server_round)``: entries every client's fit and evaluate
            config carries (:mod:`fl_shadow.flower_keys`).
        observer: what happens to each update before aggregation.
        recorder: the results folder.
        checkpointer: writes a checkpoint after each completed round (None: none).
        min_fit_clients: a round with fewer successful replies fails the run.
        min_available_clients: each round first waits for this many connected clients, so
            that the wrapped strategy sizes its sample on all of them (Flower's strategies
            size it on the clients connected at that instant), ...
        wait_for_clients_s: ... for at most this long; then the run fails, naming both
            numbers.
        num_clients: the experiment's clients (``partition.num_clients``); a simulation
            must run exactly this many SuperNodes (one per partition), checked when Flower
            asks for the initial parameters (None: not checked).
        federated_evaluation: the clients evaluate each round's global model themselves (a
            defense with a private model); the round closes after their evaluation.
        resume_rng: the random states of the checkpoint a resumed run continues from,
            restored when Flower asks for the initial parameters.
    """

    def __init__(self, strategy: Strategy, *, clock: RoundClock,
                 round_config: Callable[[int], dict[str, Scalar]], observer: UpdateObserver,
                 recorder: RunRecorder, checkpointer: Checkpointer | None = None,
                 min_fit_clients: int = 1, min_available_clients: int = 1,
                 wait_for_clients_s: float = 120.0, num_clients: int | None = None,
                 federated_evaluation: bool = False,
                 resume_rng: RngState | None = None) -> None:
        super().__init__()
        self.strategy = strategy
        self.clock = clock
        self.round_config = round_config
        self.observer = observer
        self.recorder = recorder
        self.checkpointer = checkpointer
        self.min_fit_clients = min_fit_clients
        self.min_available_clients = min_available_clients
        self.wait_for_clients_s = wait_for_clients_s
        self.num_clients = num_clients
        self.federated_evaluation = federated_evaluation
        self._resume_rng = resume_rng
        self._sent: dict[int, Parameters] = {}
        self._evaluated: Parameters | None = None

    def __repr__(self) -> str:
        return f"CuriousServer({self.strategy!r})"

    @property
    def remaining_rounds(self) -> int:
        return self.clock.remaining_rounds

    # -- Strategy ---------------------------------------------------------------------------
    def initialize_parameters(self, client_manager: ClientManager) -> Parameters | None:
        self._check_simulated_federation(client_manager)
        if self._resume_rng is not None:
            restore_rng(self._resume_rng)
            self._resume_rng = None
        return self.strategy.initialize_parameters(client_manager)

    def configure_fit(self, server_round: int, parameters: Parameters,
                      client_manager: ClientManager) -> list[tuple[ClientProxy, FitIns]]:
        r = self.clock.run_round(server_round)
        self._sent = {r: parameters}
        if not client_manager.wait_for(self.min_available_clients,
                                       timeout=int(math.ceil(self.wait_for_clients_s))):
            exc = RunFailed(
                f"round {r}: {client_manager.num_available()} of "
                f"strategy.min_available_clients={self.min_available_clients} clients "
                f"connected after {self.wait_for_clients_s:g} s; start the federation with "
                f"{self.min_available_clients} clients (simulation: --federation-config "
                f"'num-supernodes={self.min_available_clients}', which fl-shadow run sets) or "
                "lower strategy.min_available_clients")
            self.recorder.fail(exc)
            raise exc
        instructions = self.strategy.configure_fit(r, parameters, client_manager)
        return [(proxy, FitIns(ins.parameters, {**ins.config, **self.round_config(r)}))
                for proxy, ins in instructions]

    def aggregate_fit(self, server_round: int, results: list[tuple[ClientProxy, FitRes]],
                      failures: list[FitFailure]) -> tuple[Parameters | None, dict[str, Scalar]]:
        r = self.clock.run_round(server_round)
        try:
            global_arrays = parameters_to_ndarrays(self._sent[r])
            results, failures = self.observer.observe(r, global_arrays, results, failures)
            if len(results) < self.min_fit_clients:
                cause = failure_reason(failures[0]) if failures else "no client replied"
                raise RunFailed(f"round {r}: {len(results)} of {len(results) + len(failures)} "
                                f"clients replied, strategy.min_fit_clients is "
                                f"{self.min_fit_clients}; first failure: {cause}")
            return self.strategy.aggregate_fit(r, results, failures)
        except BaseException as exc:
            self.recorder.fail(exc)
            raise

    def configure_evaluate(self, server_round: int, parameters: Parameters,
                           client_manager: ClientManager
                           ) -> list[tuple[ClientProxy, EvaluateIns]]:
        if not self.federated_evaluation:
            return []
        r = self.clock.run_round(server_round)
        instructions = self.strategy.configure_evaluate(r, parameters, client_manager)
        return [(proxy, EvaluateIns(ins.parameters, {**ins.config, **self.round_config(r)}))
                for proxy, ins in instructions]

    def aggregate_evaluate(self, server_round: int,
                           results: list[tuple[ClientProxy, EvaluateRes]],
                           failures: list[tuple[ClientProxy, EvaluateRes] | BaseException]
                           ) -> tuple[float | None, dict[str, Scalar]]:
        r = self.clock.run_round(server_round)
        try:
            rows = sorted(({"client": int(res.metrics.get(keys.PARTITION_ID, -1)),
                            "num_examples": res.num_examples, "loss": float(res.loss),
                            "accuracy": float(res.metrics["accuracy"]),
                            "macro_f1": float(res.metrics["macro_f1"])} for _, res in results),
                          key=lambda row: row["client"])
            self.recorder.log_client_utility(r, rows)
            failures = record_failures(self.recorder, r, failures)
            if len(results) < self.min_fit_clients:
                # A private-model defense's round closes on the clients' own evaluation.
                cause = failure_reason(failures[0]) if failures else "no client replied"
                raise RunFailed(f"round {r}: {len(results)} of {len(results) + len(failures)} "
                                "clients evaluated the global model, strategy.min_fit_clients "
                                f"is {self.min_fit_clients}; first failure: {cause}")
            if self._evaluated is not None:
                self._close_round(r, self._evaluated)
            return self.strategy.aggregate_evaluate(r, results, failures)
        except BaseException as exc:
            self.recorder.fail(exc)
            raise

    def evaluate(self, server_round: int,
                 parameters: Parameters) -> tuple[float, dict[str, Scalar]] | None:
        if server_round == 0 and self.clock.start_round:
            return None  # the checkpoint's model: its row is already in utility.jsonl
        r = self.clock.run_round(server_round)
        try:
            result = self.strategy.evaluate(r, parameters)
            if result is not None:
                loss, metrics = result
                self.recorder.log_utility(r, loss, metrics)
            if server_round == 0:
                return result
            if self.federated_evaluation:
                self._evaluated = parameters  # closed after the clients' own evaluation
                return result
            self._close_round(r, parameters)
            return result
        except BaseException as exc:
            self.recorder.fail(exc)
            raise

    # -- internals --------------------------------------------------------------------------
    def _check_simulated_federation(self, client_manager: ClientManager) -> None:
        """Refuse, at once, a simulation with another number of SuperNodes than clients."""
        if self.num_clients is None:
            return
        size = simulated_federation_size(client_manager)
        if size is None or size == self.num_clients:
            return
        time.sleep(SIMULATION_SETTLE_S)  # registration is one quick loop; let it end
        size = simulated_federation_size(client_manager)
        if size is None or size == self.num_clients:
            return
        n, m = self.num_clients, self.min_available_clients
        exc = RunFailed(
            f"the simulation runs {size} SuperNodes but the experiment has {n} clients "
            f"(partition.num_clients={n}, strategy.min_available_clients={m}; one SuperNode "
            f"per client): start it with --federation-config 'num-supernodes={n}' (fl-shadow "
            f"run sizes it from the config) or set partition.num_clients={size}")
        self.recorder.fail(exc)  # logs the cause
        raise exc

    def _close_round(self, server_round: int, parameters: Parameters) -> None:
        """Checkpoint the completed round, then, after the last one, finish the records."""
        if self.checkpointer is not None:
            self.checkpointer.save(self.recorder, self.clock, server_round, parameters,
                                   self.strategy)
        self._evaluated = None
        if server_round == self.clock.num_rounds:
            self.recorder.finish()


__all__ = ["Checkpointer", "CuriousServer", "RoundClock", "UpdateObserver", "client_of",
           "innermost", "read_server_state", "simulated_federation_size", "write_server_state"]
