"""The federation in one process: Flower's own server loop, the real ClientApp, no Ray.

:func:`run_in_process` runs an experiment exactly as ``flwr run`` does, minus the transport:

* the strategy is the one the ServerApp builds (:meth:`Federation.strategy`: the curious
  server around the configured Flower strategy, its recorder, checkpoints, attack hook);
* Flower's legacy :class:`flwr.server.Server` drives it (``fit``: initial parameters, central
  evaluation, every round's ``configure_fit``/``aggregate_fit``/``evaluate``, federated
  evaluation), with one :class:`InProcessClientProxy` per simulated node;
* each proxy turns Flower's instructions into the same :class:`~flwr.app.Message` the
  SuperLink would deliver and hands it to the project's ClientApp
  (:data:`fl_shadow.apps.client_app.app`, its mods included) with the node's own
  :class:`~flwr.app.Context`, whose state persists across rounds as Flower's node state does.

Clients train one after another, each on ``client_threads`` torch threads (default
``FL_SHADOW_THREADS``, else 1: what the ClientApp module sets in a simulated client's Ray
worker, :mod:`fl_shadow.threads`); the server side (evaluation, attacks, scoring) runs in the
calling thread at ``server_threads`` (default: the calling thread's count, which importing the
ClientApp module set from the same variable). With the thread counts of a real run the
records are the same (tested against ``flwr run``).

Use it for experiment scripts and tests that need a federation's updates without Ray's start-up
and scheduling; use ``fl-shadow run`` for runs that should look like deployment.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

from flwr.app import Context, Message, RecordDict
from flwr.app.constants import DEFAULT_TTL
from flwr.app.metadata import Metadata
from flwr.clientapp import ClientApp
from flwr.server import History, Server
from flwr.server.client_manager import SimpleClientManager
from flwr.server.compat.grid_client_proxy import GridClientProxy

from fl_shadow import flower_keys as keys
from fl_shadow.apps.client_app import app as client_app
from fl_shadow.apps.federation import Federation
from fl_shadow.checkpoint import Checkpoint, read_status
from fl_shadow.errors import RunFailed
from fl_shadow.threads import configured_threads, torch_threads
from fl_shadow.threat_model import Attack
from strategies.curious import UpdateTap

log = logging.getLogger(__name__)

#: Node ids of the simulated nodes: partition id + this (Flower draws random ones).
NODE_ID_BASE = 1000


class ClientFailure(ValueError):
    """A node's error reply, raised as Flower's legacy proxy raises it (the same text, so that
    :func:`fl_shadow.report.describe_failure` reads both alike)."""

    def __init__(self, reason: str) -> None:
        super().__init__(f"Message contains an Error (reason: {reason}). It originated during "
                         "client-side execution of a message.")
        self.reason = reason


class InProcessClientProxy(GridClientProxy):
    """A simulated node whose messages go straight to a ClientApp in this process.

    Args:
        node_id: the node's id.
        app: the ClientApp (the project's, by default).
        context: the node's context (``node_config`` with ``partition-id`` and
            ``num-partitions``; ``state`` kept across rounds).
        client_threads: torch threads while the client runs (None: ``FL_SHADOW_THREADS``,
            default 1, as the ClientApp module sets them).
    """

    def __init__(self, node_id: int, context: Context, *, app: ClientApp = client_app,
                 client_threads: int | None = None) -> None:
        super().__init__(node_id, grid=None, run_id=context.run_id)  # type: ignore[arg-type]
        self.app = app
        self.context = context
        self.client_threads = configured_threads() if client_threads is None else client_threads

    def _send_receive_recorddict(self, recorddict: RecordDict, message_type: str,
                                 timeout: float | None, group_id: int | None) -> RecordDict:
        metadata = Metadata(run_id=self.run_id, message_id=f"{self.node_id}-{time.time_ns()}",
                            src_node_id=0, dst_node_id=self.node_id, reply_to_message_id="",
                            group_id=str(group_id) if group_id else "", created_at=time.time(),
                            ttl=timeout or DEFAULT_TTL,
                            message_type=message_type)
        message = Message(content=recorddict, metadata=metadata)
        with torch_threads(self.client_threads):
            try:
                reply = self.app(message, self.context)
            except Exception as exc:  # a ClientApp without the errors mod: Flower's own reason
                raise ClientFailure(f"{type(exc)}:<'{exc}'>") from exc
        if reply.has_error():
            raise ClientFailure(str(reply.error.reason))
        return reply.content


@dataclass(frozen=True)
class InProcessRun:
    """What :func:`run_in_process` returns.

    Attributes:
        run_dir: the results folder it wrote.
        history: Flower's :class:`~flwr.server.History` of the run.
        seconds: wall time.
        state: ``status.json``'s final state (``completed`` or ``failed``).
    """

    run_dir: Path
    history: History
    seconds: float
    state: str


def simulated_nodes(federation: Federation, *, client_threads: int | None = None
                    ) -> list[InProcessClientProxy]:
    """One proxy per partition, with its own context (as ``flwr run`` gives each SuperNode)."""
    n = federation.config.partition.num_clients
    proxies = []
    for partition in range(n):
        node_id = NODE_ID_BASE + partition
        context = Context(run_id=1, node_id=node_id,
                          node_config={keys.NODE_PARTITION_ID: partition,
                                       keys.NODE_NUM_PARTITIONS: n},
                          state=RecordDict(), run_config={})
        proxies.append(InProcessClientProxy(node_id, context, client_threads=client_threads))
    return proxies


def run_in_process(federation: Federation, run_dir: Path, *, resume: Checkpoint | None = None,
                   attack: Attack | None = None, tap: UpdateTap | None = None,
                   client_threads: int | None = None,
                   server_threads: int | None = None) -> InProcessRun:
    """Run ``federation`` through Flower's server loop in this process; write ``run_dir``.

    Args:
        federation: the experiment (:func:`~fl_shadow.apps.federation.build_federation`).
        run_dir: the results folder (as ``fl-shadow run --run-dir``).
        resume: continue from this checkpoint (see :meth:`Federation.strategy`).
        attack: run this attack instead of the configured one.
        tap: sees every accepted update before aggregation (keep them to attack later).
        client_threads: torch threads of each client (None: ``FL_SHADOW_THREADS``, default 1).
        server_threads: torch threads of the server side (None: this thread's count).

    Raises:
        RunFailed: the run failed (its cause is also in ``status.json``).
    """
    start = time.perf_counter()
    with torch_threads(server_threads):
        strategy = federation.strategy(run_dir, resume=resume, attack=attack, tap=tap)
        manager = SimpleClientManager()
        for proxy in simulated_nodes(federation, client_threads=client_threads):
            manager.register(proxy)
        server = Server(client_manager=manager, strategy=strategy)
        server.set_max_workers(1)  # one client at a time, as on a CPU with one actor per core
        history, _ = server.fit(num_rounds=strategy.remaining_rounds, timeout=None)
    status = read_status(run_dir)
    state = str(status.get("state"))
    if state != "completed":
        raise RunFailed(f"run {run_dir}: {status.get('error', state)}")
    return InProcessRun(run_dir, history, time.perf_counter() - start, state)


__all__ = ["ClientFailure", "InProcessClientProxy", "InProcessRun", "run_in_process",
           "simulated_nodes", "torch_threads"]
