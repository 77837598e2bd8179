"""What a Flower server that is not fl_shadow's gets from the project's ClientApp: one line.

Each case sends the ClientApp (:data:`fl_shadow.apps.client_app.app`, its mods included) the
message such a server sends, through the same proxy the in-process driver uses; the error the
server receives is the client's own, in one line, saying what it needs (the reason of the error
reply ``clients.protocol.one_line_errors_mod`` sends: ``client <id>: <Type>: <message>``).
"""

from __future__ import annotations

import time

import numpy as np
import pytest
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, Metadata, RecordDict
from flwr.app.message_type import MessageType
from flwr.common import FitIns, GetParametersIns, ndarrays_to_parameters

import fl_shadow.apps.client_app as client_app
from fl_shadow import flower_keys as keys
from fl_shadow.apps.federation import Federation
from fl_shadow.apps.inprocess import ClientFailure, InProcessClientProxy
from fl_shadow.config import load_config
from fl_shadow.report import failure_reason

CONFIG = load_config(None, ["data.image_size=8", "model.width=4", "train.device=cpu",
                            "partition.num_clients=2", "partition.sizes=[2, 4]",
                            "partition.batch_sizes=[2]", "strategy.min_fit_clients=2",
                            "strategy.min_available_clients=2", "attack.clients=[0]"])


def node(partition: int = 0) -> InProcessClientProxy:
    context = Context(run_id=1, node_id=7, state=RecordDict(), run_config={},
                      node_config={keys.NODE_PARTITION_ID: partition,
                                   keys.NODE_NUM_PARTITIONS: 2})
    return InProcessClientProxy(7, context)


def weights() -> list[np.ndarray]:
    return Federation(CONFIG).initial_arrays()


def round_config(**extra: object) -> dict[str, object]:
    return {keys.SERVER_ROUND: 1, keys.NUM_ROUNDS: 3, keys.EXPERIMENT: CONFIG.to_yaml(),
            **extra}


def one_line(exc: BaseException) -> str:
    """The reason the server records for the failure (the client's own line)."""
    text = failure_reason(exc)
    assert "\n" not in text and "Traceback" not in text
    return text


def test_a_well_formed_round_trains() -> None:
    res = node().fit(FitIns(ndarrays_to_parameters(weights()), round_config()), None, 1)
    assert res.num_examples == 2 and res.metrics[keys.PARTITION_ID] == 0


def test_a_server_that_sends_no_experiment_is_told_what_it_needs() -> None:
    config = {keys.SERVER_ROUND: 1, keys.NUM_ROUNDS: 3}
    with pytest.raises(ClientFailure) as info:
        node().fit(FitIns(ndarrays_to_parameters(weights()), config), None, 1)
    assert one_line(info.value).startswith("client 0: ProtocolError: the server sent no "
                                           "'experiment' in the fit config")


def test_a_server_that_sends_no_weights_is_told_to_send_them() -> None:
    with pytest.raises(ClientFailure) as info:
        node().fit(FitIns(ndarrays_to_parameters([]), round_config()), None, 1)
    assert "ProtocolError: the server sent no model weights" in one_line(info.value)
    with pytest.raises(ClientFailure) as info:
        node().get_parameters(GetParametersIns(config={}), None, 0)
    assert "ProtocolError: get_parameters: this client does not propose initial weights" in \
        one_line(info.value)


def test_weights_of_another_model_are_named() -> None:
    wrong = weights()
    wrong[0] = np.zeros((3, 3), np.float32)
    with pytest.raises(ClientFailure) as info:
        node().fit(FitIns(ndarrays_to_parameters(wrong), round_config()), None, 1)
    assert "ProtocolError: the server's array for features.0.weight has shape (3, 3)" in \
        one_line(info.value)


def test_a_server_without_round_numbers_is_told_what_it_needs() -> None:
    config = {keys.EXPERIMENT: CONFIG.to_yaml()}
    with pytest.raises(ClientFailure) as info:
        node().fit(FitIns(ndarrays_to_parameters(weights()), config), None, 1)
    assert "ProtocolError: the server's config has no integer 'server-round'" in \
        one_line(info.value)


def test_an_invalid_experiment_is_one_line() -> None:
    config = round_config(**{keys.EXPERIMENT: "train: {lr: -1}\n"})
    with pytest.raises(ClientFailure) as info:
        node().fit(FitIns(ndarrays_to_parameters(weights()), config), None, 1)
    assert one_line(info.value) == ("client 0: ProtocolError: the server's experiment config is "
                                    "not valid here: train.lr: expected a number > 0, got -1")


def test_a_message_api_strategy_is_told_this_app_speaks_the_legacy_protocol() -> None:
    """What ``flwr.serverapp.strategy.FedAvg`` sends: ``arrays`` and ``config`` records."""
    content = RecordDict({"arrays": ArrayRecord(weights()),
                          "config": ConfigRecord({"server-round": 1})})
    msg = Message(content, metadata=Metadata(
        run_id=1, message_id="m", src_node_id=0, dst_node_id=7, reply_to_message_id="",
        group_id="1", created_at=time.time(), ttl=60.0, message_type=MessageType.TRAIN))
    context = Context(run_id=1, node_id=7, node_config={keys.NODE_PARTITION_ID: 0,
                                                        keys.NODE_NUM_PARTITIONS: 2},
                      state=RecordDict(), run_config={})
    reply = client_app.app(msg, context)
    assert reply.has_error()
    reason = str(reply.error.reason)
    assert reason.startswith("client 0: ProtocolError: this ClientApp runs NumPyClient clients")
    assert "a Message-API strategy (flwr.serverapp.strategy) cannot drive it" in reason
    assert "records ['arrays', 'config']" in reason and "\n" not in reason
