"""The message protocol this ClientApp speaks, checked before Flower's compat layer reads it.

The clients are ``NumPyClient`` s: they speak Flower's legacy message protocol, in which a
``train`` message carries the records ``fitins.parameters`` and ``fitins.config`` and an
``evaluate`` message ``evaluateins.parameters`` and ``evaluateins.config`` (Flower's
``recorddict_compat``; what a ``ServerApp(server_fn=...)`` with a ``flwr.server.strategy``
strategy sends). A Message-API strategy (``flwr.serverapp.strategy``, flwr >= 1.20) sends
``arrays``/``config`` records instead, which the compat layer cannot read: without this check
the client dies with ``KeyError: 'fitins.parameters'``. Here it answers with one line saying
what it needs.
"""

from __future__ import annotations

from flwr.app import Context, Message
from flwr.app.message_type import MessageType
from flwr.clientapp.typing import ClientAppCallable

from fl_shadow.errors import ProtocolError

_LEGACY_RECORDS = {MessageType.TRAIN: ("fitins.parameters", "fitins.config"),
                   MessageType.EVALUATE: ("evaluateins.parameters", "evaluateins.config")}


def legacy_protocol_mod(msg: Message, ctxt: Context, call_next: ClientAppCallable) -> Message:
    """Refuse, in one line, a train/evaluate message this NumPyClient app cannot read.

    Raises:
        ProtocolError: the message lacks the legacy records (a Message-API server).
    """
    needed = _LEGACY_RECORDS.get(msg.metadata.message_type)
    if needed is not None and not msg.has_error():
        present = set(msg.content.keys())
        missing = [name for name in needed if name not in present]
        if missing:
            raise ProtocolError(
                f"this ClientApp runs NumPyClient clients, which read Flower's legacy "
                f"{msg.metadata.message_type} message (records {', '.join(needed)}); the "
                f"server sent records {sorted(present) or '(none)'}: a Message-API strategy "
                "(flwr.serverapp.strategy) cannot drive it; use a flwr.server.strategy "
                "strategy in ServerApp(server_fn=...) (README: 'Message protocol')")
    return call_next(msg, ctxt)


__all__ = ["legacy_protocol_mod"]
