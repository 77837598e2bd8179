"""The offline default dataset: MNI152 template slices (shape, classes, splits, cache)."""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch

from fl_shadow.config import DataConfig
from fl_shadow.data import DATASETS, load_dataset, mni152
from fl_shadow.data.cache import CACHE_ENV, cache_root, save_arrays
from fl_shadow.data.cache import load_arrays as load_cached
from fl_shadow.errors import ConfigError

SPLITS = ("train", "test", "public")


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> str:
    return str(tmp_path_factory.mktemp("cache"))


@pytest.fixture(scope="module")
def cfg(cache: str) -> DataConfig:
    return DataConfig(dataset="mni152", image_size=32, channels=1, cache_dir=cache)


@pytest.fixture(scope="module")
def arrays(cfg: DataConfig) -> dict[str, np.ndarray]:
    return mni152.load_arrays(cfg)  # builds once and fills the module's cache folder


def test_splits_have_the_documented_shape_range_and_classes(cfg, arrays):
    splits = load_dataset(cfg, seed=0)
    assert splits.name == "mni152"
    assert splits.class_names == ("sagittal medial", "sagittal lateral", "coronal posterior",
                                  "coronal anterior", "axial inferior", "axial superior")
    assert len(splits.train) >= 1500
    assert len(splits.test) >= 100 and len(splits.public) >= 100
    for part in (splits.train, splits.test, splits.public):
        assert part.images.dtype == torch.float32 and part.labels.dtype == torch.int64
        assert part.images.shape[1:] == (1, 32, 32)
        assert 0.0 <= float(part.images.min()) and float(part.images.max()) <= 1.0
        assert set(part.labels.tolist()) == set(range(6))  # every class in every split
    # roughly balanced training classes (>= 300 each by construction)
    assert torch.bincount(splits.train.labels, minlength=6).min() >= 300
    # mean/std are those of the train split
    assert splits.mean[0] == pytest.approx(float(splits.train.images.mean()), abs=1e-5)
    assert splits.std[0] == pytest.approx(float(splits.train.images.std(correction=0)),
                                          abs=1e-5)
    # not blank: the brain fills a good part of the image
    assert 0.1 < splits.mean[0] < 0.6


def test_labels_follow_plane_and_level(arrays):
    for split in SPLITS:
        plane, index = mni152.source_plane_and_index(arrays[f"{split}_sources"])
        labels = arrays[f"{split}_labels"]
        assert np.array_equal(labels // 2, plane)
    # the level boundary: within each plane, every "high" slice lies above every "low" slice
    sources = np.concatenate([arrays[f"{s}_sources"] for s in SPLITS])
    labels = np.concatenate([arrays[f"{s}_labels"] for s in SPLITS])
    plane, index = mni152.source_plane_and_index(sources)
    for p in range(3):
        low, high = index[labels == 2 * p], index[labels == 2 * p + 1]
        assert low.max() < high.min()


def test_splits_are_disjoint_at_the_source_slice_level_with_a_gap(arrays):
    ids = {s: set(arrays[f"{s}_sources"].tolist()) for s in SPLITS}
    assert not ids["train"] & ids["test"]
    assert not ids["train"] & ids["public"]
    assert not ids["test"] & ids["public"]
    # neighbouring 1 mm slices are near-duplicates: slices of different splits are >= 3 mm apart
    for a, b in (("train", "test"), ("train", "public"), ("test", "public")):
        pa, ia = mni152.source_plane_and_index(np.array(sorted(ids[a])))
        pb, ib = mni152.source_plane_and_index(np.array(sorted(ids[b])))
        for p in range(3):
            gaps = np.abs(ia[pa == p][:, None] - ib[pb == p][None, :])
            assert gaps.min() >= 3, (a, b, mni152.PLANES[p])
    # the template is symmetric (x = +d equals x = -d): sagittal slices from one hemisphere only
    plane, index = mni152.source_plane_and_index(np.concatenate(
        [arrays[f"{s}_sources"] for s in SPLITS]))
    assert index[plane == 0].min() >= 98


def test_each_source_has_its_unaugmented_slice_and_distinct_variants(arrays):
    images, sources = arrays["train_images"], arrays["train_sources"]
    variants = arrays["train_variants"]
    first = sources[0]
    copies = images[sources == first]
    assert variants[sources == first][0] == 0 and len(copies) >= 2
    assert not np.array_equal(copies[0], copies[1])  # augmented, not duplicated
    diff = np.abs(copies[0].astype(int) - copies[1].astype(int)).mean()
    assert diff < 40  # a small augmentation, not a different image


def test_build_is_deterministic_and_seed_independent(cfg, arrays):
    rebuilt = mni152.build_arrays(image_size=32, test_fraction=cfg.test_fraction)
    assert set(rebuilt) == set(arrays)
    for key in arrays:
        assert np.array_equal(rebuilt[key], arrays[key]), key
    a = load_dataset(cfg, seed=0)
    b = load_dataset(cfg, seed=7)
    assert torch.equal(a.train.images, b.train.images)
    assert torch.equal(a.public.labels, b.public.labels)


def test_cache_hit_skips_the_build_and_is_fast(cfg, arrays, monkeypatch):
    def no_build(**kwargs):
        raise AssertionError("cache miss: build_arrays was called")

    monkeypatch.setattr(mni152, "build_arrays", no_build)
    start = time.perf_counter()
    splits = mni152.load(cfg, seed=0)
    assert time.perf_counter() - start < 1.0
    assert np.array_equal((splits.train.images[:, 0].numpy() * 255).round(),
                          arrays["train_images"])
    assert list((cache_root(cfg.cache_dir) / "datasets").glob("mni152-*.npz"))


def test_corrupt_or_partial_cache_file_reads_as_a_miss(tmp_path):
    path = tmp_path / "datasets" / "x.npz"
    assert save_arrays(path, {"a": np.arange(3)})
    assert np.array_equal(load_cached(path)["a"], np.arange(3))
    path.write_bytes(b"not a zip file")
    assert load_cached(path) is None
    assert load_cached(tmp_path / "absent.npz") is None


def test_rgb_channels_replicate_the_gray_image(cfg):
    rgb = load_dataset(DataConfig(dataset="mni152", image_size=32, channels=3,
                                  cache_dir=cfg.cache_dir), seed=0)
    gray = load_dataset(cfg, seed=0)
    assert rgb.image_shape == (3, 32, 32)
    assert torch.equal(rgb.train.images[:, 0], gray.train.images[:, 0])
    assert torch.equal(rgb.train.images[:, 2], gray.train.images[:, 0])
    assert len(rgb.mean) == 3 and len(rgb.std) == 3


def test_cache_folder_precedence(tmp_path, monkeypatch):
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "env"))
    assert cache_root(None) == tmp_path / "env"
    assert cache_root(str(tmp_path / "cfg")) == tmp_path / "cfg"
    monkeypatch.delenv(CACHE_ENV)
    assert cache_root(None).name == "fl_shadow"


def test_unknown_dataset_lists_the_known_ones():
    assert {"mni152", "medmnist", "imagefolder"} <= set(DATASETS.names())
    with pytest.raises(ConfigError, match=r"data\.dataset: unknown dataset 'mnist'.*mni152"):
        load_dataset(DataConfig(dataset="mnist"), seed=0)
