"""Class-per-folder loader on tiny images written by the tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from fl_shadow.config import DataConfig
from fl_shadow.data import imagefolder, load_dataset
from fl_shadow.errors import DataError


def write_images(folder: Path, count: int, *, mode: str = "L", size: tuple[int, int] = (20, 16),
                 seed: int = 0, suffix: str = ".png") -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(count):
        shape = (size[1], size[0], 3) if mode == "RGB" else (size[1], size[0])
        pixels = rng.integers(0, 256, size=shape, dtype=np.uint8)
        path = folder / f"img_{i:02d}{suffix}"
        Image.fromarray(pixels, mode=mode).save(path)
        paths.append(path)
    return paths


def cfg_for(root: Path, cache: Path, **kwargs) -> DataConfig:
    return DataConfig(dataset="imagefolder", path=str(root), cache_dir=str(cache), **kwargs)


def test_flat_layout_is_split_stratified_and_disjoint(tmp_path):
    root = tmp_path / "xray"
    write_images(root / "PNEUMONIA", 20, seed=1)
    write_images(root / "NORMAL", 10, mode="RGB", seed=2, suffix=".JPG")
    (root / "NORMAL" / "notes.txt").write_text("not an image")
    cfg = cfg_for(root, tmp_path / "cache", image_size=16, test_fraction=0.25)
    splits = load_dataset(cfg, seed=0)
    assert splits.class_names == ("NORMAL", "PNEUMONIA")  # sorted folder names
    counts = {s: torch.bincount(getattr(splits, s).labels, minlength=2).tolist()
              for s in ("train", "test", "public")}
    # per class: 10% public, 25% of the rest test, the remainder train
    assert counts["public"] == [1, 2]
    assert counts["test"] == [2, 4]
    assert counts["train"] == [7, 14]
    assert splits.train.images.shape == (21, 1, 16, 16)
    arrays = imagefolder.load_arrays(cfg)
    paths = [set(arrays[f"{s}_paths"].tolist()) for s in ("train", "test", "public")]
    assert not (paths[0] & paths[1] or paths[0] & paths[2] or paths[1] & paths[2])
    assert len(set.union(*paths)) == 30  # every image used once; notes.txt ignored


def test_presplit_layout_uses_val_as_public(tmp_path):
    root = tmp_path / "chest_xray"
    for split, n in (("train", 6), ("test", 3), ("val", 2)):
        write_images(root / split / "NORMAL", n, seed=n)
        write_images(root / split / "PNEUMONIA", n, seed=n + 10)
    splits = load_dataset(cfg_for(root, tmp_path / "cache", image_size=8, channels=3), seed=0)
    assert (len(splits.train), len(splits.test), len(splits.public)) == (12, 6, 4)
    assert splits.image_shape == (3, 8, 8)
    assert torch.equal(splits.train.images[:, 0], splits.train.images[:, 1])  # gray -> RGB


def test_presplit_layout_without_val_sets_aside_public_from_train(tmp_path):
    root = tmp_path / "chest_xray"
    write_images(root / "train" / "a", 10)
    write_images(root / "train" / "b", 10, seed=3)
    write_images(root / "test" / "a", 2, seed=4)
    write_images(root / "test" / "b", 2, seed=5)
    splits = load_dataset(cfg_for(root, tmp_path / "cache", image_size=8), seed=0)
    assert (len(splits.train), len(splits.test), len(splits.public)) == (18, 4, 2)
    assert torch.bincount(splits.public.labels).tolist() == [1, 1]


def test_pixels_are_cropped_resized_and_converted(tmp_path):
    root = tmp_path / "synthetic"
    (root / "red").mkdir(parents=True)
    (root / "bar").mkdir()
    Image.new("RGB", (16, 16), (255, 0, 0)).save(root / "red" / "r.png")
    # a 48x16 image: gray 200 in the central 16x16 square, black on both sides
    bar = np.zeros((16, 48), np.uint8)
    bar[:, 16:32] = 200
    Image.fromarray(bar).save(root / "bar" / "b.png")
    splits = load_dataset(cfg_for(root, tmp_path / "cache", image_size=8), seed=0)
    images = torch.cat([splits.train.images, splits.test.images, splits.public.images])
    labels = torch.cat([splits.train.labels, splits.test.labels, splits.public.labels])
    red = images[labels == splits.class_names.index("red")][0]
    center = images[labels == splits.class_names.index("bar")][0]
    assert torch.allclose(red, torch.full_like(red, round(0.299 * 255) / 255))  # BT.601 luma
    assert torch.allclose(center, torch.full_like(center, 200 / 255))  # only the center kept


def test_loading_is_deterministic_and_cached(tmp_path, monkeypatch):
    root = tmp_path / "data"
    write_images(root / "x", 8)
    write_images(root / "y", 8, seed=9)
    first = load_dataset(cfg_for(root, tmp_path / "c1", image_size=12), seed=0)
    second = load_dataset(cfg_for(root, tmp_path / "c2", image_size=12), seed=0)
    assert torch.equal(first.train.images, second.train.images)
    assert torch.equal(first.test.labels, second.test.labels)

    monkeypatch.setattr(imagefolder, "read_image", lambda *a, **k: pytest.fail("cache miss"))
    again = imagefolder.load(cfg_for(root, tmp_path / "c1", image_size=12), seed=0)
    assert torch.equal(again.train.images, first.train.images)


def test_corrupt_image_names_the_file(tmp_path):
    root = tmp_path / "data"
    write_images(root / "x", 3)
    write_images(root / "y", 3)
    (root / "y" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    with pytest.raises(DataError, match=r"y/broken\.png: not a readable image"):
        load_dataset(cfg_for(root, tmp_path / "cache"), seed=0)


def test_empty_class_folder_names_the_folder(tmp_path):
    root = tmp_path / "data"
    write_images(root / "x", 3)
    (root / "empty").mkdir()
    (root / "empty" / "readme.md").write_text("no images here")
    with pytest.raises(DataError, match=r"data/empty: class folder holds no images"):
        load_dataset(cfg_for(root, tmp_path / "cache"), seed=0)


@pytest.mark.parametrize("layout, message", [
    ("missing", r"nowhere: image folder not found"),
    ("no_classes", r"bare: no class sub-folders"),
    ("train_only", r"found train/ but no test/"),
    ("unknown_test_class", r"test/z: class folder not among the training classes"),
])
def test_layout_errors(tmp_path, layout, message):
    if layout == "missing":
        root = tmp_path / "nowhere"
    elif layout == "no_classes":
        root = tmp_path / "bare"
        root.mkdir()
        Image.new("L", (4, 4)).save(root / "loose.png")
    else:
        root = tmp_path / "split"
        write_images(root / "train" / "x", 2)
        if layout == "unknown_test_class":
            write_images(root / "test" / "z", 2)
    with pytest.raises(DataError, match=message):
        load_dataset(cfg_for(root, tmp_path / "cache"), seed=0)
