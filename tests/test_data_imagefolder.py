"""Class-per-folder loader on tiny images written by the tests."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from fl_shadow.config import DataConfig, load_config, resolve_paths
from fl_shadow.data import imagefolder, load_dataset
from fl_shadow.data.cache import dataset_cache_path
from fl_shadow.errors import ConfigError, DataError


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


# ---------------------------------------------------------------------------------------------
# Without data.patients: the splits and the cache key of before (pinned from the code before
# patient grouping and data.public_fraction existed)
# ---------------------------------------------------------------------------------------------
PINNED_FLAT = {
    "train": ["a/img_00.png", "a/img_01.png", "a/img_05.png", "a/img_06.png", "b/img_02.png",
              "b/img_03.png", "b/img_04.png", "b/img_05.png", "b/img_06.png", "b/img_08.png",
              "b/img_09.png", "b/img_10.png", "c/img_00.png", "c/img_01.png", "c/img_03.png"],
    "test": ["a/img_03.png", "a/img_04.png", "b/img_01.png", "b/img_07.png", "b/img_11.png",
             "c/img_02.png", "c/img_04.png"],
    "public": ["a/img_02.png", "b/img_00.png"],
}
PINNED_PRESPLIT_PUBLIC = ["train/a/img_04.png", "train/b/img_07.png"]


def write_flat(root: Path) -> Path:
    """Classes a, b, c of 7, 12 and 5 gray images."""
    write_images(root / "a", 7, seed=1)
    write_images(root / "b", 12, seed=2)
    write_images(root / "c", 5, seed=3)
    return root


def write_presplit(root: Path) -> Path:
    """train/ of 9 a and 14 b images, test/ of 2 of each."""
    write_images(root / "train" / "a", 9, seed=4)
    write_images(root / "train" / "b", 14, seed=5)
    write_images(root / "test" / "a", 2, seed=6)
    write_images(root / "test" / "b", 2, seed=7)
    return root


def split_paths(arrays) -> dict[str, list[str]]:
    return {s: sorted(arrays[f"{s}_paths"].tolist()) for s in ("train", "test", "public")}


def test_without_patients_the_splits_and_cache_key_are_unchanged(tmp_path):
    root = write_flat(tmp_path / "flat")
    cfg = cfg_for(root, tmp_path / "cache", image_size=8, test_fraction=0.3)
    arrays = imagefolder.load_arrays(cfg)
    assert split_paths(arrays) == PINNED_FLAT
    assert not any(key.endswith("_patients") for key in arrays)
    # The key of before: the same parameters, the same fingerprint of (split, file, size, mtime).
    digest = hashlib.sha256()
    for split in ("train", "test", "public"):
        for name in PINNED_FLAT[split]:
            stat = (root / name).stat()
            digest.update(f"{split}\0{name}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    old_params = {"version": 1, "root": str(root.resolve()), "files": digest.hexdigest(),
                  "image_size": 8, "channels": 1, "test_fraction": 0.3}
    assert dataset_cache_path(str(tmp_path / "cache"), "imagefolder", old_params).is_file()
    # public_fraction: 0.1 is the default, so it reads (and keys) the same as unset
    again = imagefolder.load_arrays(cfg_for(root, tmp_path / "cache", image_size=8,
                                            test_fraction=0.3, public_fraction=0.1))
    assert split_paths(again) == PINNED_FLAT
    assert len(list((tmp_path / "cache" / "datasets").glob("*.npz"))) == 1

    presplit = write_presplit(tmp_path / "pre")
    arrays = imagefolder.load_arrays(cfg_for(presplit, tmp_path / "cache", image_size=8))
    assert split_paths(arrays)["public"] == PINNED_PRESPLIT_PUBLIC
    assert len(arrays["train_paths"]) == 21


def test_image_count_lists_every_image(tmp_path):
    root = write_flat(tmp_path / "flat")
    assert imagefolder.image_count(cfg_for(root, tmp_path / "cache")) == 7 + 12 + 5
    with_patients = cfg_for(root, tmp_path / "cache", patients=r"^(\w)/")  # class = patient
    assert imagefolder.image_count(with_patients) == 24


# ---------------------------------------------------------------------------------------------
# data.public_fraction
# ---------------------------------------------------------------------------------------------
def test_public_fraction_sets_the_flat_public_share(tmp_path):
    root = write_flat(tmp_path / "flat")
    cfg = cfg_for(root, tmp_path / "cache", image_size=8, test_fraction=0.3,
                  public_fraction=0.25)
    splits = load_dataset(cfg, seed=0)
    counts = {s: torch.bincount(getattr(splits, s).labels, minlength=3).tolist()
              for s in ("train", "test", "public")}
    # a (7): round(1.75) = 2 public, round(0.3 * 5) = 2 test; b (12): 3 public,
    # round(0.3 * 9) = 3 test; c (5): round(1.25) = 1 public, round(0.3 * 4) = 1 test
    assert counts["public"] == [2, 3, 1]
    assert counts["test"] == [2, 3, 1]
    assert counts["train"] == [3, 6, 3]
    # another fraction is another cache file, not the 10% one reused
    default = load_dataset(cfg_for(root, tmp_path / "cache", image_size=8, test_fraction=0.3),
                           seed=0)
    assert len(default.public) == 2


def test_public_fraction_sets_the_share_taken_from_train_without_val(tmp_path):
    root = write_presplit(tmp_path / "pre")
    splits = load_dataset(cfg_for(root, tmp_path / "cache", image_size=8, public_fraction=0.3),
                          seed=0)
    # a: round(0.3 * 9) = 3, b: round(0.3 * 14) = 4; test/ as given
    assert torch.bincount(splits.public.labels).tolist() == [3, 4]
    assert torch.bincount(splits.train.labels).tolist() == [6, 10]
    assert len(splits.test) == 4


def test_public_fraction_with_a_val_folder_is_unused_and_warned(tmp_path):
    root = tmp_path / "chest_xray"
    for split, n in (("train", 6), ("test", 3), ("val", 2)):
        write_images(root / split / "NORMAL", n, seed=n)
    cfg = cfg_for(root, tmp_path / "cache", image_size=8, public_fraction=0.5)
    with pytest.warns(UserWarning, match=r"data\.public_fraction: unused \(0\.5\); .*val is the "
                                         r"public split"):
        arrays = imagefolder.load_arrays(cfg)
    assert len(arrays["public_paths"]) == 2


# ---------------------------------------------------------------------------------------------
# data.patients
# ---------------------------------------------------------------------------------------------
def write_patients(root: Path, patients: dict[str, tuple[int, ...]], *, seed: int = 0
                   ) -> list[str]:
    """Per patient ``p``, ``counts[k]`` images ``<class k>/<p>_<i>.png`` (classes a, b, ...);
    returns the relative paths."""
    rng = np.random.default_rng(seed)
    written = []
    for patient, counts in patients.items():
        for k, count in enumerate(counts):
            for i in range(count):
                relative = f"{'ab'[k]}/{patient}_{i}.png"
                (root / relative).parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(rng.integers(0, 256, (6, 6), dtype=np.uint8)).save(root / relative)
                written.append(relative)
    return written


def patient_sets(arrays) -> dict[str, set[str]]:
    return {s: set(arrays[f"{s}_patients"].tolist()) for s in ("train", "test", "public")}


def assert_disjoint_by_patient(arrays) -> None:
    sets = patient_sets(arrays)
    assert not (sets["train"] & sets["test"] or sets["train"] & sets["public"]
                or sets["test"] & sets["public"])


def test_regex_grouping_assigns_whole_patients(tmp_path):
    root = tmp_path / "flat"
    # class a: 5 patients of 2 images; class b: 4 patients of 3 images
    write_patients(root, {**{f"p{i}": (2, 0) for i in range(5)},
                          **{f"p{i}": (0, 3) for i in range(5, 9)}})
    cfg = cfg_for(root, tmp_path / "cache", image_size=8, test_fraction=0.25,
                  public_fraction=0.2, patients=r"/(p\d+)_")
    arrays = imagefolder.load_arrays(cfg)
    assert_disjoint_by_patient(arrays)
    for split in ("train", "test", "public"):
        for path, patient in zip(arrays[f"{split}_paths"], arrays[f"{split}_patients"]):
            assert Path(str(path)).name.split("_")[0] == patient
    counts = {s: np.bincount(arrays[f"{s}_labels"], minlength=2).tolist()
              for s in ("train", "test", "public")}
    # a: 10 images, public target 2 -> 1 patient; test target 0.25 * 8 = 2 -> 1 patient.
    # b: 12 images, public target 2.4 -> 1 patient (3 is closer than 0); test target
    # 0.25 * 9 = 2.25 -> 1 patient.
    assert counts["public"] == [2, 3]
    assert counts["test"] == [2, 3]
    assert counts["train"] == [6, 6]
    assert {s: len(v) for s, v in patient_sets(arrays).items()} == {
        "train": 5, "test": 2, "public": 2}


def test_named_group_patient_is_the_id(tmp_path):
    root = tmp_path / "flat"
    write_patients(root, {f"p{i}": (2, 1) for i in range(6)})
    cfg = cfg_for(root, tmp_path / "cache", image_size=8, patients=r"(\w)/(?P<patient>p\d)_")
    arrays = imagefolder.load_arrays(cfg)
    assert set().union(*patient_sets(arrays).values()) == {f"p{i}" for i in range(6)}
    assert_disjoint_by_patient(arrays)


def test_csv_grouping_keeps_a_patient_of_several_classes_in_one_split(tmp_path):
    root = tmp_path / "flat"
    written = write_patients(root, {"x": (3, 2), **{f"q{i}": (2, 0) for i in range(4)},
                                    **{f"r{i}": (0, 2) for i in range(4)}})
    table = tmp_path / "patients.csv"
    # a BOM, an extra column, blank lines, "./" and padding spaces are all accepted
    rows = ["\ufeffsite,file,patient"] + [f"north, ./{r} ,{r.split('/')[1].split('_')[0]}"
                                          for r in written]
    table.write_text("\n".join(rows[:3] + [""] + rows[3:] + ["", "south,other.png,z"]) + "\n")
    arrays = imagefolder.load_arrays(cfg_for(root, tmp_path / "cache", image_size=8,
                                             patients=str(table)))
    assert_disjoint_by_patient(arrays)
    where_x = {s for s in ("train", "test", "public") if "x" in patient_sets(arrays)[s]}
    assert len(where_x) == 1
    (split,) = where_x
    x_paths = {str(p) for p, q in zip(arrays[f"{split}_paths"], arrays[f"{split}_patients"])
               if q == "x"}
    assert x_paths == {r for r in written if "/x_" in r}  # all 5 images of x, both classes
    assert sum(len(arrays[f"{s}_paths"]) for s in ("train", "test", "public")) == len(written)


def test_every_class_keeps_a_train_image_with_patients():
    # Class 1 is only in patient A, whose majority is class 0. The seeded order of the class-0
    # group is C, A, B, D (rng [0, 0]): images 2, 5, 7, 9 cumulated; the public target
    # 0.5 * 9 = 4.5 is closest to 5 (C and A), the test target 0.3 * 4 = 1.2 takes B. A would
    # leave class 1 without a train image, so it is moved back to train.
    labels = [0, 0, 1, 0, 0, 0, 0, 0, 0]
    patients = ["A", "A", "A", "B", "B", "C", "C", "D", "D"]
    parts = imagefolder.patient_split(labels, patients, test_fraction=0.3, public_fraction=0.5)
    by_split = {s: {patients[i] for i in parts[s]} for s in parts}
    assert by_split == {"train": {"A", "D"}, "test": {"B"}, "public": {"C"}}
    assert parts["train"].tolist() == [0, 1, 2, 7, 8]  # sorted positions


def test_patient_split_one_image_per_patient_is_like_the_stratified_split():
    labels = [0] * 10 + [1] * 20
    parts = imagefolder.patient_split(labels, [str(i) for i in range(30)], test_fraction=0.25)
    per_class = {s: np.bincount(np.asarray(labels)[parts[s]], minlength=2).tolist()
                 for s in parts}
    # public: 10% of 10 and of 20; test: 0.25 * 9 = 2.25 -> 2 and 0.25 * 18 = 4.5 -> 4 (on a
    # tie the closest prefix is the smaller one)
    assert per_class == {"train": [7, 14], "test": [2, 4], "public": [1, 2]}
    with pytest.raises(ValueError, match=r"patients: expected one per label \(30\), got 2"):
        imagefolder.patient_split(labels, ["a", "b"], test_fraction=0.25)


def test_presplit_with_patients_sets_aside_public_by_patient(tmp_path):
    root = tmp_path / "pre"
    write_patients(root / "train", {f"p{i}": (2, 2) for i in range(8)})
    write_patients(root / "test", {f"t{i}": (1, 1) for i in range(2)})
    arrays = imagefolder.load_arrays(cfg_for(root, tmp_path / "cache", image_size=8,
                                             patients=r"(\w\d)_", public_fraction=0.25))
    assert_disjoint_by_patient(arrays)
    assert patient_sets(arrays)["test"] == {"t0", "t1"}
    # all 8 patients have majority a (a tie): 32 images, public target 8 -> 2 patients
    assert len(patient_sets(arrays)["public"]) == 2
    assert len(arrays["public_paths"]) == 8


@pytest.mark.parametrize("second, folder", [("test", "test/"), ("val", "val/")])
def test_presplit_sharing_patients_is_refused(tmp_path, second, folder):
    root = tmp_path / "pre"
    write_patients(root / "train", {"p1": (1, 1), "p2": (1, 1), "p3": (2, 0)})
    write_patients(root / "test", {"p4": (1, 1)} if second == "val" else {"p1": (1, 1),
                                                                            "p2": (1, 0)})
    if second == "val":
        write_patients(root / "val", {"p2": (1, 1)})
        expected = (r"pre: 1 patient has images in both train/ and val/, e.g. 'p2' "
                    r"\(train/a/p2_0\.png, val/a/p2_0\.png\); the given split leaks patients")
    else:
        expected = (r"pre: 2 patients have images in both train/ and test/, e.g. 'p1' "
                    r"\(train/a/p1_0\.png, test/a/p1_0\.png\)")
    with pytest.raises(DataError, match=expected):
        load_dataset(cfg_for(root, tmp_path / "cache", patients=r"(p\d)_"), seed=0)


def test_an_image_without_a_patient_is_refused(tmp_path):
    root = tmp_path / "flat"
    write_patients(root, {f"p{i}": (2, 2) for i in range(3)})
    write_images(root / "a", 2)  # a/img_00.png, a/img_01.png: no "p<digit>_"
    write_images(root / "b", 1)
    with pytest.raises(DataError, match=r"flat/a/img_00\.png: data\.patients '\(p\\d\)_' finds "
                                        r"no patient id in its path; nor do 2 other images$"):
        load_dataset(cfg_for(root, tmp_path / "cache", patients=r"(p\d)_"), seed=0)

    table = tmp_path / "patients.csv"
    table.write_text("file,patient\n" + "".join(f"a/p{i}_{k}.png,p{i}\n" for i in range(3)
                                                for k in range(2)))
    with pytest.raises(DataError, match=r"flat/a/img_00\.png: not in the patient table .*"
                                        r"patients\.csv \(data\.patients\); nor do 8 other"):
        load_dataset(cfg_for(root, tmp_path / "cache", patients=str(table)), seed=0)


@pytest.mark.parametrize("patients, table, error, message", [
    ("(p\\d", None, ConfigError,
     r"^data\.patients: expected a regular expression \(or a \.csv table\), got '\(p\\d' "
     r"\(error: missing \), unterminated subpattern at position 0\)$"),
    ("p\\d_", None, ConfigError,
     r"^data\.patients: expected a regular expression with exactly one capturing group \(or "
     r"one named 'patient'\), got 0 groups"),
    ("(\\w)/(p\\d)_", None, ConfigError, r"exactly one capturing group .*got 2 groups"),
    ("TABLE", b"name,id\na/p0_0.png,p0\n", ConfigError,
     r"^data\.patients: .*patients\.csv: expected a header with the columns 'file' and "
     r"'patient', got 'name', 'id'$"),
    ("TABLE", b"", ConfigError, r"expected a header with the columns .*, got nothing$"),
    ("TABLE", b"file,patient\na/p0_0.png,h\xf4pital\n", DataError,
     r"^data\.patients: .*patients\.csv: not UTF-8 text \(byte 25\)"),
    ("TABLE", b"file,patient\na/p0_0.png\n", DataError,
     r"patients\.csv, line 2: expected 2 fields, got 1$"),
    ("TABLE", b"file,patient\na/p0_0.png,p0\na/p0_0.png,p1\n", DataError,
     r"patients\.csv, line 3: 'a/p0_0\.png' has two patients, 'p0' and 'p1'$"),
    ("TABLE", b"file,patient\na/p0_0.png, \n", DataError, r"line 2: an empty patient$"),
    ("TABLE", b'file,patient\n"a/p0_0.png,p0\n', DataError,
     r"line 2: not valid CSV \(unexpected end of data\)$"),
    ("missing.csv", None, DataError,
     r"^data\.patients: .*missing\.csv: patient table not found"),
])
def test_bad_patients_are_refused_in_one_line(tmp_path, patients, table, error, message):
    root = tmp_path / "flat"
    write_patients(root, {f"p{i}": (1, 1) for i in range(3)})
    if table is not None:
        (tmp_path / "patients.csv").write_bytes(table)
        patients = str(tmp_path / "patients.csv")
    elif patients.endswith(".csv"):
        patients = str(tmp_path / patients)
    with pytest.raises(ConfigError, match=message) as caught:
        load_dataset(cfg_for(root, tmp_path / "cache", patients=patients), seed=0)
    assert caught.type is error
    assert "\n" not in str(caught.value)


def test_a_cache_with_a_patient_in_two_splits_is_rebuilt(tmp_path, caplog):
    root = tmp_path / "flat"
    write_patients(root, {f"p{i}": (2, 1) for i in range(6)})
    cfg = cfg_for(root, tmp_path / "cache", image_size=8, patients=r"(p\d)_")
    fresh = imagefolder.load_arrays(cfg)
    (cache,) = (tmp_path / "cache" / "datasets").glob("*.npz")
    with np.load(cache) as npz:
        arrays = {k: npz[k] for k in npz.files if k != "_content_sha256"}
    arrays["public_patients"] = np.full_like(arrays["public_patients"],
                                             arrays["train_patients"][0])
    with cache.open("wb") as handle:
        np.savez(handle, **arrays)
    again = imagefolder.load_arrays(cfg)
    assert "patients 'p" in caplog.text and "rebuilding it" in caplog.text
    assert_disjoint_by_patient(again)
    assert np.array_equal(again["public_patients"], fresh["public_patients"])


def test_patients_table_is_resolved_like_data_path(tmp_path):
    config = load_config(None, ["data.dataset=imagefolder", "data.path=images",
                                "data.patients=meta/Patients.CSV"])
    resolved = resolve_paths(config, tmp_path)
    assert resolved.data.path == str(tmp_path / "images")
    assert resolved.data.patients == str(tmp_path / "meta" / "Patients.CSV")
    regex = resolve_paths(load_config(None, [r"data.patients='person(\d+)_'"]), tmp_path)
    assert regex.data.patients == r"person(\d+)_"


def test_a_generator_needs_two_public_images_said_at_load(tmp_path):
    # 1 public image: the shadow defense's generator cannot train on it; one line at load
    # (it was a ValueError inside every client's first fit)
    from fl_shadow.apps.experiment import load_experiment
    root = tmp_path / "xray"
    write_images(root / "NORMAL", 12, seed=1)
    write_images(root / "PNEUMONIA", 6, seed=2)
    base = ["data.dataset=imagefolder", f"data.path={root}", f"data.cache_dir={tmp_path}/c",
            "data.image_size=16", "partition.num_clients=2", "partition.sizes=[2, 4]",
            "partition.batch_sizes=[1, 4]", "strategy.min_fit_clients=2",
            "strategy.min_available_clients=2",
            "defense.name=shadow"]
    with pytest.raises(ConfigError, match=r"^data: imagefolder has 1 public image, and defense "
                                          r"shadow needs a generator trained on at least 2 "):
        load_experiment(None, [*base, "data.public_fraction=0.06"])
    load_experiment(None, [*base, "data.public_fraction=0.1"])  # 1 + 1 public images: enough
