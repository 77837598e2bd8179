"""Flower ClientApp: turns a node (simulated or a real hospital SuperNode) into a DefendedClient.

The experiment config travels from the server with every round (``fit`` config, YAML text), so
the server's file is the single source of truth and nodes need no copy of it.

* Simulation: ``node_config`` holds ``partition-id``/``num-partitions``; the node loads the shared
  dataset and takes its partition, and sends the audit record used for scoring.
* Deployment: ``node_config`` holds ``data-path`` (the hospital's own folder or ``.npz``) and
  ``client-id`` (its number, 0..``partition.num_clients``-1, default 0); the node uses the
  training split of its data (all of it but what the dataset's own rules hold out) and sends no
  audit record.

Flower's own client-side DP (``strategy.flower_dp``: ``fixedclipping_mod``, ``LocalDpMod``)
runs as a mod around the client: :mod:`clients.flower_dp_mods`.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Mapping
from dataclasses import replace

import numpy as np
import torch
import yaml
from flwr.app import Context
from flwr.client import Client, NumPyClient
from flwr.clientapp import ClientApp

from clients.defended import DefendedClient, LocalData
from clients.flower_dp_mods import flower_dp_mod
from fl_shadow import flower_keys as keys
from fl_shadow.config import ExperimentConfig, load_config_dict
from fl_shadow.data import DatasetSplits, client_dataset, load_dataset
from fl_shadow.errors import ConfigError
from fl_shadow.logs import route_to_flower

log = logging.getLogger(__name__)


@functools.lru_cache(maxsize=4)
def _parse_experiment(text: str) -> ExperimentConfig:
    return load_config_dict(yaml.safe_load(text))


def load_local_data(config: ExperimentConfig, node_config: Mapping[str, object]) -> tuple[int, LocalData, bool]:
    """Return ``(client_id, data, is_simulation)`` for this node."""
    if keys.NODE_PARTITION_ID in node_config:
        client_id = int(node_config[keys.NODE_PARTITION_ID])
        num_partitions = int(node_config.get(keys.NODE_NUM_PARTITIONS, -1))
        if num_partitions != config.partition.num_clients:
            raise ConfigError(
                f"partition.num_clients: the config asks for {config.partition.num_clients} "
                f"clients but the simulation runs {num_partitions} SuperNodes; start it with "
                f"--federation-config 'num-supernodes={config.partition.num_clients}' "
                "(fl-shadow run does this)")
        splits = load_dataset(config.data, seed=config.seed)
        indices, local = client_dataset(splits, config.partition, client_id, seed=config.seed)
        return client_id, LocalData(local.images, local.labels, np.asarray(indices),
                                    splits.mean, splits.std, splits.num_classes,
                                    *_held_out(splits)), True
    if keys.NODE_DATA_PATH not in node_config:
        raise ConfigError("node config: expected 'data-path' (deployment) or 'partition-id' "
                          "(simulation)")
    # The number picks the hospital's batch size and is how results and the attack name it.
    client_id = int(node_config.get(keys.NODE_CLIENT_ID, 0))
    if not 0 <= client_id < config.partition.num_clients:
        raise ConfigError("node config: client-id must be in "
                          f"0..{config.partition.num_clients - 1} (partition.num_clients), "
                          f"got {client_id}")
    data_cfg = replace(config.data, path=str(node_config[keys.NODE_DATA_PATH]))
    splits = load_dataset(data_cfg, seed=config.seed)
    return client_id, LocalData(splits.train.images, splits.train.labels,
                                np.arange(len(splits.train)), splits.mean, splits.std,
                                splits.num_classes, *_held_out(splits)), False


def _held_out(splits: DatasetSplits) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """The test split a client evaluates on, if the dataset has one."""
    if len(splits.test) == 0:
        return None, None
    return splits.test.images, splits.test.labels


class _ExperimentClient(NumPyClient):
    """Builds the DefendedClient on the first message, once the config has arrived."""

    def __init__(self, context: Context) -> None:
        self.context = context
        self._client: DefendedClient | None = None

    def _get(self, config: Mapping[str, object]) -> DefendedClient:
        if self._client is None:
            experiment = _parse_experiment(str(config[keys.EXPERIMENT]))
            client_id, data, simulation = load_local_data(experiment, self.context.node_config)
            self._client = DefendedClient(experiment, client_id, data, self.context,
                                          send_audit=simulation)
        return self._client

    def get_parameters(self, config):  # type: ignore[no-untyped-def]
        raise RuntimeError("the server provides initial parameters; get_parameters is unused")

    def fit(self, parameters, config):  # type: ignore[no-untyped-def]
        return self._get(config).fit(parameters, config)

    def evaluate(self, parameters, config):  # type: ignore[no-untyped-def]
        return self._get(config).evaluate(parameters, config)


def client_fn(context: Context) -> Client:
    route_to_flower()
    return _ExperimentClient(context).to_client()


# Flower's own DP mods (strategy.flower_dp), picked per message from the experiment config.
app = ClientApp(client_fn=client_fn, mods=[flower_dp_mod])
