"""The message protocol this ClientApp speaks: what it reads, and how its errors travel.

The clients are ``NumPyClient`` s: they speak Flower's legacy message protocol, in which a
``train`` message carries the records ``fitins.parameters`` and ``fitins.config`` and an
``evaluate`` message ``evaluateins.parameters`` and ``evaluateins.config`` (Flower's
``recorddict_compat``; what a ``ServerApp(server_fn=...)`` with a ``flwr.server.strategy``
strategy sends). A Message-API strategy (``flwr.serverapp.strategy``, flwr >= 1.20) sends
``arrays``/``config`` records instead, which the compat layer cannot read: without this check
the client dies with ``KeyError: 'fitins.parameters'``. Here it answers with one line saying
what it needs.

A client's own exception reaches the server as an error reply whose reason is one line,
``client <id>: <Type>: <message>`` (:func:`one_line_errors_mod`). Without it, Flower's runtime
builds the reason itself: in simulation from Ray's error (its traceback header, ANSI colours
included, and the exception's type lost inside ``ClientAppException``), in deployment as
``<class '...'>:<'...'>``; :func:`fl_shadow.report.failure_reason` reads those too.
"""

from __future__ import annotations

import logging

from flwr.app import Context, Error, Message
from flwr.app.message_type import MessageType
from flwr.clientapp.typing import ClientAppCallable
from flwr.common.constant import ErrorCode

from fl_shadow import flower_keys as keys
from fl_shadow.errors import ProtocolError
from fl_shadow.report import exception_line

log = logging.getLogger(__name__)

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


def one_line_errors_mod(msg: Message, ctxt: Context, call_next: ClientAppCallable) -> Message:
    """Answer a message the client failed on with an error reply whose reason is one line.

    The reason is ``client <id>: <Type>: <message>`` (the message's lines joined), with the
    id the node knows itself by (``partition-id`` in simulation, ``client-id`` in
    deployment, else ``node <node id>``). The traceback stays in the client's own log.
    """
    try:
        return call_next(msg, ctxt)
    except Exception as exc:  # the client's own error, whatever it is, goes back as a reply
        who = client_label(ctxt)
        log.error("%s: %s failed", who, msg.metadata.message_type, exc_info=exc)
        return Message(Error(code=ErrorCode.CLIENT_APP_RAISED_EXCEPTION,
                             reason=f"{who}: {exception_line(exc)}"), reply_to=msg)


def client_label(ctxt: Context) -> str:
    """``client <id>`` from the node config (simulation or deployment), else ``node <id>``."""
    for key in (keys.NODE_PARTITION_ID, keys.NODE_CLIENT_ID):
        value = ctxt.node_config.get(key)
        if isinstance(value, int) or (isinstance(value, str) and value.isdigit()):
            return f"client {int(value)}"
    return f"node {ctxt.node_id}"


__all__ = ["client_label", "legacy_protocol_mod", "one_line_errors_mod"]
