"""MedMNIST .npz loader: tiny files written by the tests, gray and RGB, and its errors."""

from __future__ import annotations

import urllib.error
from pathlib import Path

import numpy as np
import pytest
import torch

from fl_shadow.config import DataConfig
from fl_shadow.data import load_dataset, medmnist
from fl_shadow.errors import ConfigError, DataError


def write_npz(path: Path, *, side: int = 28, rgb: bool = False, classes: int = 2,
              counts: tuple[int, int, int] = (10, 4, 3), seed: int = 0,
              drop: str | None = None, label_width: int = 1) -> Path:
    rng = np.random.default_rng(seed)
    arrays = {}
    for split, n in zip(("train", "val", "test"), counts):
        shape = (n, side, side, 3) if rgb else (n, side, side)
        arrays[f"{split}_images"] = rng.integers(0, 256, size=shape, dtype=np.uint8)
        arrays[f"{split}_labels"] = (np.arange(n * label_width) % classes).reshape(n, label_width)
    if drop:
        del arrays[drop]
    np.savez(path, **arrays)
    return path


def test_gray_file_maps_train_test_val_to_train_test_public(tmp_path):
    path = write_npz(tmp_path / "pneumoniamnist.npz")
    with np.load(path) as raw:
        train_images, val_labels = raw["train_images"], raw["val_labels"]
    splits = load_dataset(DataConfig(dataset="medmnist", path=str(path), image_size=28), seed=0)
    assert (len(splits.train), len(splits.test), len(splits.public)) == (10, 3, 4)
    assert splits.class_names == ("normal", "pneumonia")  # from medmnist's INFO
    # no resize at the native size: exactly the stored bytes / 255
    assert torch.equal(splits.train.images[:, 0], torch.from_numpy(train_images) / 255.0)
    assert torch.equal(splits.public.labels, torch.from_numpy(val_labels[:, 0]))
    assert splits.mean[0] == pytest.approx(float(train_images.mean() / 255.0), abs=1e-5)


def test_rgb_file_resized_and_converted(tmp_path):
    path = write_npz(tmp_path / "my_data.npz", side=28, rgb=True, classes=3)
    rgb = load_dataset(DataConfig(dataset="medmnist", path=str(path), image_size=32,
                                  channels=3), seed=0)
    assert rgb.train.images.shape == (10, 3, 32, 32)
    assert rgb.class_names == ("class 0", "class 1", "class 2")  # unknown file name
    assert 0.0 <= float(rgb.train.images.min()) and float(rgb.train.images.max()) <= 1.0
    gray = load_dataset(DataConfig(dataset="medmnist", path=str(path), image_size=28,
                                   channels=1), seed=0)
    assert gray.test.images.shape == (3, 1, 28, 28)
    with np.load(path) as raw:
        expected = raw["test_images"].astype(np.float32) @ np.array([0.299, 0.587, 0.114],
                                                                    dtype=np.float32)
    assert np.allclose(gray.test.images[:, 0].numpy(), np.rint(expected) / 255.0, atol=1 / 255)


def test_missing_key_names_file_and_key(tmp_path):
    path = write_npz(tmp_path / "retinamnist.npz", drop="val_labels")
    with pytest.raises(DataError, match=r"retinamnist\.npz: missing key 'val_labels'"):
        load_dataset(DataConfig(dataset="medmnist", path=str(path)), seed=0)


def test_corrupt_file_names_the_file(tmp_path):
    path = tmp_path / "broken.npz"
    path.write_bytes(b"PK\x03\x04 this is not really a zip archive")
    with pytest.raises(DataError, match=r"broken\.npz: not a readable \.npz"):
        medmnist.read_npz(path)


def test_missing_file_names_the_file(tmp_path):
    with pytest.raises(DataError, match=r"nothere\.npz: MedMNIST file not found"):
        load_dataset(DataConfig(dataset="medmnist", path=str(tmp_path / "nothere.npz")), seed=0)


def test_multi_label_file_is_rejected(tmp_path):
    path = write_npz(tmp_path / "chestmnist.npz", label_width=14)
    with pytest.raises(DataError, match=r"chestmnist\.npz: train_labels has shape \(10, 14\): "
                                        r"multi-label"):
        medmnist.read_npz(path)


def test_wrong_image_dtype_is_rejected(tmp_path):
    path = tmp_path / "floaty.npz"
    arrays = {k: np.zeros((2, 1), np.int64) for k in medmnist.KEYS if k.endswith("labels")}
    arrays |= {k: np.zeros((2, 8, 8), np.float32) for k in medmnist.KEYS if k.endswith("images")}
    np.savez(path, **arrays)
    with pytest.raises(DataError, match=r"floaty\.npz: train_images must be uint8"):
        medmnist.read_npz(path)


def test_without_path_offline_download_is_one_clear_line(tmp_path, monkeypatch):
    def offline(flag, size, root):
        raise urllib.error.URLError("Temporary failure in name resolution")

    monkeypatch.setattr(medmnist, "_fetch", offline)
    cfg = DataConfig(dataset="medmnist", medmnist_flag="pneumoniamnist", cache_dir=str(tmp_path))
    with pytest.raises(DataError, match=r"could not download MedMNIST 'pneumoniamnist'") as info:
        load_dataset(cfg, seed=0)
    assert "\n" not in str(info.value) and "data.path" in str(info.value)


def test_without_path_uses_an_already_downloaded_file(tmp_path, monkeypatch):
    monkeypatch.setattr(medmnist, "_fetch", lambda *a: pytest.fail("should not download"))
    (tmp_path / "medmnist").mkdir()
    # image_size 32 -> the 64 px file (smallest published size >= 32)
    write_npz(tmp_path / "medmnist" / "dermamnist_64.npz", side=64, rgb=True, classes=7)
    splits = load_dataset(DataConfig(dataset="medmnist", medmnist_flag="dermamnist",
                                     image_size=32, channels=3, cache_dir=str(tmp_path)), seed=0)
    assert splits.image_shape == (3, 32, 32)
    assert splits.num_classes == 7
    assert splits.class_names[5] == "melanocytic nevi"


@pytest.mark.parametrize("flag, message", [
    ("nosuchmnist", r"data\.medmnist_flag: unknown MedMNIST subset 'nosuchmnist'"),
    ("chestmnist", r"data\.medmnist_flag: 'chestmnist' is multi-label"),
])
def test_bad_flags_are_config_errors(tmp_path, flag, message):
    with pytest.raises(ConfigError, match=message):
        load_dataset(DataConfig(dataset="medmnist", medmnist_flag=flag, cache_dir=str(tmp_path)),
                     seed=0)
