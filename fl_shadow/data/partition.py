"""Split the train split among clients: iid, Dirichlet label skew, or explicit sizes.

Every partitioner returns one array of train-split indices per client; the arrays are disjoint
and depend only on the labels, the partition config and the seed.
"""

from __future__ import annotations

import numpy as np
import torch

from fl_shadow.config import PartitionConfig
from fl_shadow.data.base import DatasetSplits, ImageSet
from fl_shadow.errors import ConfigError


def partition_indices(labels: torch.Tensor | np.ndarray, cfg: PartitionConfig, *,
                      seed: int) -> list[np.ndarray]:
    """Indices into the train split for each of ``cfg.num_clients`` clients.

    Raises:
        ConfigError: the split cannot be served (more clients than images, sizes too large).
    """
    labels = np.asarray(labels)
    n = len(labels)
    rng = np.random.default_rng(seed)
    if cfg.num_clients > n:
        raise ConfigError(f"partition.num_clients: expected at most {n} (train images), got "
                          f"{cfg.num_clients}")
    if cfg.scheme == "iid":
        return [np.sort(part) for part in np.array_split(rng.permutation(n), cfg.num_clients)]
    if cfg.scheme == "dirichlet":
        return _dirichlet(labels, cfg.num_clients, cfg.alpha, rng)
    return _by_sizes(labels, list(cfg.sizes or ()), rng)


def _dirichlet(labels: np.ndarray, num_clients: int, alpha: float,
               rng: np.random.Generator) -> list[np.ndarray]:
    """Per class, split its images among clients with Dirichlet(alpha) proportions."""
    parts: list[list[int]] = [[] for _ in range(num_clients)]
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        proportions = rng.dirichlet(np.full(num_clients, alpha))
        cuts = (np.cumsum(proportions)[:-1] * len(idx)).astype(int)
        for client, chunk in enumerate(np.split(idx, cuts)):
            parts[client].extend(chunk.tolist())
    # every client needs at least one image: take from the largest client
    for client in range(num_clients):
        if not parts[client]:
            donor = max(range(num_clients), key=lambda k: len(parts[k]))
            parts[client].append(parts[donor].pop())
    return [np.sort(np.asarray(p, dtype=np.int64)) for p in parts]


def _by_sizes(labels: np.ndarray, sizes: list[int], rng: np.random.Generator) -> list[np.ndarray]:
    """Client k gets ``sizes[k]`` images, drawn class-balanced (round-robin over classes)."""
    total = sum(sizes)
    if total > len(labels):
        raise ConfigError(f"partition.sizes: expected at most {len(labels)} images in total "
                          f"(the train split), got {total}")
    classes = np.unique(labels)
    pools = {c: list(rng.permutation(np.flatnonzero(labels == c))) for c in classes}
    order = list(rng.permutation(classes))
    parts = []
    turn = 0
    for size in sizes:
        chosen: list[int] = []
        while len(chosen) < size:
            c = order[turn % len(order)]
            turn += 1
            if pools[c]:
                chosen.append(int(pools[c].pop()))
        parts.append(np.sort(np.asarray(chosen, dtype=np.int64)))
    return parts


def client_dataset(splits: DatasetSplits, cfg: PartitionConfig, client_id: int, *,
                   seed: int) -> tuple[np.ndarray, ImageSet]:
    """Client ``client_id``'s train-split indices and images."""
    if not 0 <= client_id < cfg.num_clients:
        raise ConfigError(f"partition.num_clients: client id {client_id} is outside "
                          f"[0, {cfg.num_clients})")
    indices = partition_indices(splits.train.labels, cfg, seed=seed)[client_id]
    return indices, splits.train.subset(torch.from_numpy(indices))
