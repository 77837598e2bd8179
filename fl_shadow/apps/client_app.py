"""Flower ClientApp: turns a node (simulated or a real hospital SuperNode) into a DefendedClient.

The experiment config travels from the server with every round (``fit`` config, YAML text), so
the server's file is the single source of truth and nodes need no copy of it; the node's
client is built from it by :meth:`fl_shadow.apps.federation.Federation.client` (see there for
the simulation and deployment node configs).

Mods, outermost first:

* :func:`clients.protocol.one_line_errors_mod`: whatever the client raises goes back to the
  server as an error reply whose reason is one line, ``client <id>: <Type>: <message>`` (the
  traceback stays in the client's log), in simulation and deployment alike;
* :func:`clients.protocol.legacy_protocol_mod`: a message this NumPyClient app cannot serve (a
  Message-API strategy's, or one without the experiment) is answered with one line saying what
  the server must send (README: "Message protocol");
* :func:`clients.flower_dp_mods.flower_dp_mod`: Flower's own client-side DP
  (``strategy.flower_dp``: ``fixedclipping_mod``, ``LocalDpMod``), picked per message.

Threads: every client the app builds (in each simulated client's Ray worker and in a
SuperNode's app process) first sets torch's intra-op threads from ``FL_SHADOW_THREADS``
(default 1), ``OMP_WAIT_POLICY=PASSIVE`` having been set before torch loaded
(:mod:`fl_shadow.threads`); a malformed value is the client's one-line error.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

from flwr.app import Context
from flwr.client import Client, NumPyClient
from flwr.clientapp import ClientApp

from clients.defended import DefendedClient
from clients.flower_dp_mods import flower_dp_mod
from clients.protocol import legacy_protocol_mod, one_line_errors_mod
from fl_shadow import flower_keys as keys
from fl_shadow.apps.federation import federation_of
from fl_shadow.errors import ProtocolError
from fl_shadow.logs import route_to_flower
from fl_shadow.threads import set_torch_threads

log = logging.getLogger(__name__)


class ExperimentClient(NumPyClient):
    """Builds the DefendedClient on the first message, once the experiment has arrived."""

    def __init__(self, context: Context) -> None:
        self.context = context
        self._client: DefendedClient | None = None

    def _get(self, config: Mapping[str, object]) -> DefendedClient:
        if self._client is None:
            if keys.EXPERIMENT not in config:
                raise ProtocolError(
                    f"the server sent no {keys.EXPERIMENT!r} in the fit/evaluate config: this "
                    "client needs the experiment config (YAML text) with every message, as the "
                    "fl_shadow ServerApp sends it (README: 'Message protocol')")
            federation = federation_of(str(config[keys.EXPERIMENT]))
            self._client = federation.client(self.context.node_config, self.context)
        return self._client

    def get_parameters(self, config):  # type: ignore[no-untyped-def]
        raise ProtocolError("get_parameters: this client does not propose initial weights; the "
                            "server must send initial parameters, built from the experiment "
                            "config (README: 'Message protocol')")

    def fit(self, parameters, config):  # type: ignore[no-untyped-def]
        return self._get(config).fit(parameters, config)

    def evaluate(self, parameters, config):  # type: ignore[no-untyped-def]
        return self._get(config).evaluate(parameters, config)


def client_fn(context: Context) -> Client:
    route_to_flower()
    set_torch_threads()  # here, not at import: a bad value is then this client's error line
    return ExperimentClient(context).to_client()


#: The mods every node runs, outermost first (see the module docstring).
MODS = [one_line_errors_mod, legacy_protocol_mod, flower_dp_mod]

app = ClientApp(client_fn=client_fn, mods=MODS)
