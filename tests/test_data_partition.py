"""Partitioners: iid, dirichlet and explicit sizes; client_dataset."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fl_shadow.config import PartitionConfig
from fl_shadow.data import (DatasetSplits, ImageSet, client_dataset, dirichlet_partition,
                            partition_indices)
from fl_shadow.errors import ConfigError

PAPER_SIZES = (8, 32, 128, 512, 8, 32, 128, 512, 1)


def balanced_labels(n: int = 1902, classes: int = 6) -> torch.Tensor:
    return torch.arange(n) % classes


def assert_disjoint(parts: list[np.ndarray], n: int) -> None:
    union = np.concatenate(parts)
    assert len(np.unique(union)) == len(union), "a train image went to two clients"
    assert union.min() >= 0 and union.max() < n
    assert all(p.dtype == np.int64 and np.all(np.diff(p) > 0) for p in parts)


def skew(parts: list[np.ndarray], labels: np.ndarray) -> float:
    """Mean total-variation distance between client label histograms and the global one."""
    classes = labels.max() + 1
    overall = np.bincount(labels, minlength=classes) / len(labels)
    dists = [0.5 * np.abs(np.bincount(labels[p], minlength=classes) / len(p) - overall).sum()
             for p in parts]
    return float(np.mean(dists))


def test_sizes_are_exact_disjoint_and_class_balanced():
    labels = balanced_labels()
    cfg = PartitionConfig(scheme="sizes", num_clients=9, sizes=PAPER_SIZES)
    parts = partition_indices(labels, cfg, seed=0)
    assert [len(p) for p in parts] == list(PAPER_SIZES)
    assert_disjoint(parts, len(labels))
    for part, size in zip(parts, PAPER_SIZES):
        counts = np.bincount(labels.numpy()[part], minlength=6)
        assert counts.max() - counts.min() <= 1, (size, counts)  # as balanced as possible


def test_sizes_use_every_image_of_a_scarce_class_before_unbalancing():
    labels = np.array([0] * 5 + [1] * 100)
    parts = partition_indices(labels, PartitionConfig(scheme="sizes", num_clients=2,
                                                      sizes=(4, 30)), seed=3)
    assert [len(p) for p in parts] == [4, 30]
    assert np.bincount(labels[parts[0]], minlength=2).tolist() == [2, 2]  # small client first
    assert np.bincount(labels[parts[1]], minlength=2).tolist() == [3, 27]  # takes the rest


def test_one_image_client_gets_one_image():
    parts = partition_indices(balanced_labels(30), PartitionConfig(
        scheme="sizes", num_clients=3, sizes=(1, 5, 1)), seed=0)
    assert [len(p) for p in parts] == [1, 5, 1]


def test_sizes_larger_than_the_train_split_name_the_key():
    cfg = PartitionConfig(scheme="sizes", num_clients=2, sizes=(60, 41))
    with pytest.raises(ConfigError, match=r"partition\.sizes: total 101 exceeds the train split "
                                          r"\(100 images\)"):
        partition_indices(balanced_labels(100), cfg, seed=0)


def test_iid_covers_everything_with_near_equal_shards():
    labels = balanced_labels(103)
    parts = partition_indices(labels, PartitionConfig(scheme="iid", num_clients=4), seed=0)
    assert_disjoint(parts, 103)
    assert sorted(np.concatenate(parts).tolist()) == list(range(103))
    assert sorted(len(p) for p in parts) == [25, 26, 26, 26]
    assert not np.array_equal(parts[0], np.arange(len(parts[0])))  # shuffled, not a slice


def test_dirichlet_covers_everything_and_skew_grows_as_alpha_shrinks():
    labels = balanced_labels(1800).numpy()
    measured = {}
    for alpha in (100.0, 1.0, 0.05):
        parts = dirichlet_partition(labels, 10, alpha=alpha, seed=0)
        assert_disjoint(parts, len(labels))
        assert len(np.concatenate(parts)) == len(labels)
        assert all(len(p) >= 1 for p in parts)
        measured[alpha] = skew(parts, labels)
    assert measured[100.0] < 0.1  # close to iid
    assert measured[100.0] < measured[1.0] < measured[0.05]
    assert measured[0.05] > 0.5  # most clients hold mostly one or two classes


def test_dirichlet_tiny_alpha_still_gives_every_client_an_image():
    labels = balanced_labels(12, classes=2).numpy()
    parts = dirichlet_partition(labels, 10, alpha=1e-3, seed=1)
    assert all(len(p) >= 1 for p in parts)
    assert_disjoint(parts, 12)


@pytest.mark.parametrize("cfg", [
    PartitionConfig(scheme="iid", num_clients=5),
    PartitionConfig(scheme="dirichlet", num_clients=5, alpha=0.3),
    PartitionConfig(scheme="sizes", num_clients=3, sizes=(7, 1, 20)),
])
def test_partitions_are_deterministic_under_the_seed(cfg):
    labels = balanced_labels(200)
    first = partition_indices(labels, cfg, seed=11)
    again = partition_indices(labels, cfg, seed=11)
    other = partition_indices(labels, cfg, seed=12)
    assert all(np.array_equal(a, b) for a, b in zip(first, again))
    assert any(not np.array_equal(a, b) for a, b in zip(first, other))


def test_more_clients_than_images_is_an_error():
    with pytest.raises(ConfigError, match=r"partition\.num_clients: 5 clients but the train "
                                          r"split holds only 4 images"):
        partition_indices(balanced_labels(4), PartitionConfig(scheme="iid", num_clients=5),
                          seed=0)


def test_client_dataset_returns_the_clients_images():
    images = torch.rand(60, 1, 4, 4)
    labels = balanced_labels(60, classes=3)
    empty = ImageSet(images[:0], labels[:0])
    splits = DatasetSplits("toy", ImageSet(images, labels), empty, empty, ("a", "b", "c"),
                           (0.5,), (0.3,))
    cfg = PartitionConfig(scheme="sizes", num_clients=3, sizes=(1, 8, 20))
    seen = []
    for cid, size in enumerate(cfg.sizes):
        indices, local = client_dataset(splits, cfg, cid, seed=0)
        assert len(local) == size == len(indices)
        assert torch.equal(local.images, images[torch.from_numpy(indices)])
        assert torch.equal(local.labels, labels[torch.from_numpy(indices)])
        seen.append(indices)
    assert_disjoint(seen, 60)
    with pytest.raises(ConfigError, match=r"client id 3 is outside \[0, 3\)"):
        client_dataset(splits, cfg, 3, seed=0)


def test_sizes_ignored_by_iid_warns():
    cfg = PartitionConfig(scheme="iid", num_clients=2, sizes=(3, 3))
    with pytest.warns(UserWarning, match="partition.sizes is ignored"):
        parts = partition_indices(balanced_labels(10), cfg, seed=0)
    assert [len(p) for p in parts] == [5, 5]


def test_a_federation_partitions_once_however_many_clients_it_builds(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """Each Flower message builds its client; recomputing the partition for each made a round's
    cost grow with the square of the clients (55 ms a partition at 1,000 clients)."""
    from fl_shadow.apps import federation as federation_module
    from fl_shadow.apps.federation import Federation
    from fl_shadow.config import load_config
    from fl_shadow.data import client_dataset

    calls = []
    real = federation_module.partition_indices
    monkeypatch.setattr(federation_module, "partition_indices",
                        lambda *a, **k: calls.append(1) or real(*a, **k))
    n = 6
    config = load_config(None, ["partition.scheme=dirichlet", f"partition.num_clients={n}",
                                "partition.sizes=null", "partition.batch_sizes=[8]",
                                f"strategy.min_fit_clients={n}",
                                f"strategy.min_available_clients={n}"])
    fed = Federation(config)
    for cid in (0, 3, 5, 3):
        client = fed.client({"partition-id": cid, "num-partitions": n}, None)
        alone, _ = client_dataset(fed.splits, config.partition, cid, seed=config.seed)
        assert np.array_equal(client.data.global_indices, alone)
    assert len(calls) == 1
