"""The project's fuzz corpus: bad (and barely valid) inputs of every kind a user hands fl_shadow.

Each :class:`Case` writes its files into a fresh folder (``setup``), names the *verb* that feeds
them to fl_shadow, and says what must happen (``expect``):

* ``refused``: a named error (exit status 2 of ``fl-shadow``) in one line, no traceback, and
  no file of the folder changed or lost;
* ``accepted``: a valid edge case, accepted;
* ``rebuilt``: a damaged dataset cache: what loads equals a fresh build (the cache was
  rebuilt, or found harmless);
* ``tolerated``: bad rows of a results file are skipped or reported in one line, never a
  traceback, and the rows read back are valid ones.

Verbs (:func:`run_case`):

* ``validate``: ``fl-shadow validate [CONFIG] --set ...``;
* ``load``: validate, then load the dataset (what a run does before its first round);
* ``cache``: load the dataset, damage its cache file (``mutate``), load it again;
* ``resume``: ``fl-shadow resume RUN_DIR`` up to the ServerApp's server being built (the
  launch of Flower replaced by building the server in-process);
* ``rows``: ``resume``, then the summary tables of the reopened results files.

The corpus imports fl_shadow only inside :func:`run_case`, and adapts to the layout of the
checkout it runs in (``fl_shadow.apps`` now, ``fl_shadow.cli``/``fl_shadow.server_app``
before the restructure), so ``tests/fuzz_counts.py`` measures an older checkout with it too.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import random
import re
import struct
import zipfile
import zlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from bad_configs import CASES as BAD_CONFIGS
from bad_configs import make_files, resolve

# ---------------------------------------------------------------------------------------------
# The experiment every case starts from: the offline dataset at 16 px, two clients, no attack.
# ---------------------------------------------------------------------------------------------
TINY: dict[str, Any] = {
    "name": "tiny", "seed": 5,
    "data": {"dataset": "mni152", "image_size": 16, "channels": 1},
    "partition": {"scheme": "sizes", "num_clients": 2, "sizes": [2, 6], "batch_sizes": [1, 3]},
    "model": {"name": "convnet", "width": 4},
    "train": {"rounds": 3, "device": "cpu"},
    "strategy": {"min_fit_clients": 2, "min_available_clients": 2},
    "attack": {"name": "none"},
}
#: What the in-process checks assume the machine has free (refusals by size do not depend on
#: the machine the suite runs on).
AVAILABLE_MEMORY = 8 * 2**30


def merged(base: Mapping[str, Any], **sections: Any) -> dict[str, Any]:
    """``base`` with whole keys or sections replaced (a dict merges into a dict)."""
    out = json.loads(json.dumps(base))
    for key, value in sections.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = {**out[key], **value}
        else:
            out[key] = value
    return out


def write_yaml(path: Path, data: Any) -> Path:
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


@dataclass(frozen=True)
class Case:
    """One input and what must happen to it (see the module docstring).

    Attributes:
        label: what it is, as a test id.
        verb: ``validate``, ``load``, ``cache``, ``resume`` or ``rows``.
        expect: ``refused``, ``accepted``, ``rebuilt`` or ``tolerated``.
        setup: ``setup(folder) -> arguments of the verb`` (``config``: a file or None,
            ``overrides``, ``run_dir``, ``mutate``); writes the case's files into ``folder``.
        match: a regex the one-line error must match (this checkout's wording).
    """

    label: str
    verb: str
    expect: str
    setup: Callable[[Path], dict[str, Any]]
    match: str = ""


CASES: list[Case] = []


def case(label: str, verb: str, expect: str, match: str = ""
         ) -> Callable[[Callable[[Path], dict[str, Any]]], Callable[[Path], dict[str, Any]]]:
    def register(setup: Callable[[Path], dict[str, Any]]) -> Callable[[Path], dict[str, Any]]:
        CASES.append(Case(label, verb, expect, setup, match))
        return setup
    return register


# ---------------------------------------------------------------------------------------------
# A. YAML files
# ---------------------------------------------------------------------------------------------
def _text_case(label: str, text: str | bytes, expect: str = "refused", match: str = "") -> None:
    def setup(folder: Path) -> dict[str, Any]:
        path = folder / "config.yaml"
        if isinstance(text, bytes):
            path.write_bytes(text)
        else:
            path.write_text(text)
        return {"config": path}
    CASES.append(Case(label, "validate", expect, setup, match))


TINY_TEXT = yaml.safe_dump(TINY, sort_keys=False)
_LAUGHS = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"{chr(98 + i)}: &{chr(98 + i)} [{', '.join(['*' + chr(97 + i)] * 9)}]\n" for i in range(8))

_text_case("yaml alias", "train: &t {rounds: 2}\nstrategy: *t\n", match=r"aliases are not accepted")
_text_case("yaml merge key", "x: &t {rounds: 2}\ntrain:\n  <<: *t\n", match=r"aliases")
_text_case("yaml billion laughs (9 levels)", _LAUGHS, match=r"aliases are not accepted")
_text_case("duplicate section", TINY_TEXT + "train: {rounds: 5}\n", match=r"duplicate key 'train'")
_text_case("duplicate nested key", "train:\n  lr: 0.1\n  lr: 0.2\n", match=r"duplicate key 'lr'")
_text_case("latin-1 bytes", "name: h\xf4pital\n".encode("latin-1"), match=r"not UTF-8")
_text_case("UTF-16 file", TINY_TEXT.encode("utf-16"), match=r"not UTF-8|NUL")
_text_case("NUL byte", "name: a\0b\n", match=r"NUL")
_text_case("binary garbage", bytes(random.Random(3).randrange(256) for _ in range(4096)),
           match=r"not UTF-8|NUL|not valid YAML|expected a mapping")
_text_case("5000 nested brackets", "x: " + "[" * 5000 + "]" * 5000 + "\n", match=r"nested")
_text_case("40 nested mappings", "".join("  " * i + f"k{i}:\n" for i in range(40)) + "  " * 40
           + "v: 1\n", match=r"nested deeper than 32")
_text_case("larger than 1 MiB", "# padding\n" * 120_000, match=r"larger than 1024 KiB")
_text_case("top level is a list", "- train\n- attack\n", match=r"expected a mapping")
_text_case("top level is a number", "42\n", match=r"expected a mapping")
_text_case("unclosed flow mapping", "train: {lr: 0.1\n", match=r"not valid YAML \(line")
_text_case("tab indentation", "train:\n\tlr: 0.1\n", match=r"not valid YAML")
_text_case("a list as a key", "? [a, b]\n: 1\n", match=r"a key must be a plain value|unknown")
_text_case("python object tag", "train: !!python/object:os.system {}\n",
           match=r"not valid YAML|expected")
_text_case("a date for a number", "train: {lr: 2001-12-14}\n", match=r"^train\.lr: expected")
_text_case("a 10,000-character name", f"name: {'x' * 10000}\n", match=r"^name: expected")
_text_case("an empty name", "name: ''\n", match=r"^name: expected")
_text_case("name '..'", "name: '..'\n", match=r"^name: expected")
_text_case("name with a newline", 'name: "a\\nb"\n', match=r"^name: expected")
_text_case("unknown section", "trian: {rounds: 2}\n", match=r"^trian: unknown key")
_text_case("a section as a list", "train: [1, 2]\n", match=r"^train: expected a mapping")
_text_case("a key of the wrong case", "Train: {rounds: 2}\n", match=r"^Train: unknown key")
_text_case("an empty file", "", expect="accepted")
_text_case("comments only", "# nothing here\n", expect="accepted")
_text_case("an empty section", TINY_TEXT + "generator:\n", expect="accepted")
_text_case("CRLF line endings", TINY_TEXT.replace("\n", "\r\n"), expect="accepted")
_text_case("a UTF-8 byte order mark", "\ufeff" + TINY_TEXT, expect="accepted")
_text_case("a non-ASCII name", TINY_TEXT.replace("name: tiny", "name: hôpital-Zürich"),
           expect="accepted")


@case("base config loops back", "validate", "refused", r"loops back|base")
def _(folder: Path) -> dict[str, Any]:
    (folder / "a.yaml").write_text("base: b.yaml\n")
    (folder / "b.yaml").write_text("base: a.yaml\n")
    return {"config": folder / "a.yaml"}


@case("base config missing", "validate", "refused", r"not found|base")
def _(folder: Path) -> dict[str, Any]:
    (folder / "a.yaml").write_text("base: nowhere.yaml\n")
    return {"config": folder / "a.yaml"}


@case("base is a number", "validate", "refused", r"base")
def _(folder: Path) -> dict[str, Any]:
    (folder / "a.yaml").write_text("base: 3\n")
    return {"config": folder / "a.yaml"}


@case("a folder as the config", "validate", "refused", r"is a folder, not a config file")
def _(folder: Path) -> dict[str, Any]:
    (folder / "dir.yaml").mkdir()
    return {"config": folder / "dir.yaml"}


@case("no such config file", "validate", "refused", r"config file not found")
def _(folder: Path) -> dict[str, Any]:
    return {"config": folder / "missing.yaml"}


@case("output_dir is a file", "validate", "refused", r"^output_dir: .* is a file")
def _(folder: Path) -> dict[str, Any]:
    (folder / "taken").write_text("x")
    return {"config": write_yaml(folder / "c.yaml", merged(TINY, output_dir=str(folder / "taken")))}


@case("output_dir inside a file", "validate", "refused", r"^output_dir: .* is a file")
def _(folder: Path) -> dict[str, Any]:
    (folder / "taken").write_text("x")
    return {"config": write_yaml(folder / "c.yaml",
                                 merged(TINY, output_dir=str(folder / "taken" / "results")))}


# ---------------------------------------------------------------------------------------------
# B. Overrides of the tiny experiment (tests/bad_configs.py adds the shipped default's corpus)
# ---------------------------------------------------------------------------------------------
def _override_case(label: str, overrides: list[str], expect: str = "refused", match: str = ""
                   ) -> None:
    def setup(folder: Path) -> dict[str, Any]:
        return {"config": write_yaml(folder / "tiny.yaml", TINY), "overrides": overrides}
    CASES.append(Case(label, "validate", expect, setup, match))


for _label, _items, _match in [
    ("override without '='", ["train.rounds"], r"expected key=value"),
    ("override without a key", ["=5"], r"expected key=value"),
    ("override with an empty key part", ["train..lr=1"], r"empty key part"),
    ("override below a value", ["train.rounds=2", "train.rounds.x=1"],
     r"^train\.rounds: is a value, not a section"),
    ("override making a value a section", ["train.lr.x=1"], r"^train\.lr: expected a number"),
    ("override of unclosed YAML", ["train.lr=["], r"^train\.lr: override value"),
    ("override to null", ["train.lr="], r"^train\.lr: expected"),
    ("negative seed", ["seed=-1"], r"^seed: expected an integer >= 0"),
    ("seed of 2**32", ["seed=4294967296"], r"^seed: expected an integer <= 4294967295"),
    ("image size 7", ["data.image_size=7"], r"^data\.image_size: expected an integer >= 8"),
    ("image size 1025", ["data.image_size=1025"],
     r"^data\.image_size: expected an integer <= 1024"),
    ("lr overflowing to inf", ["train.lr=1.0e309"], r"^train\.lr: expected a finite number"),
    ("lr overflowing, YAML 1.2 style", ["train.lr=1e309"], r"^train\.lr: expected a finite"),
    ("lr of -0.0", ["train.lr=-0.0"], r"^train\.lr: expected a number > 0"),
    ("negative infinity", ["train.momentum=-.inf"], r"^train\.momentum: expected a finite"),
    ("100,001 rounds", ["train.rounds=100001"], r"^train\.rounds: expected an integer <= 100000"),
    ("no clients", ["partition.num_clients=0"],
     r"^partition\.num_clients: expected an integer >= 1"),
    ("fraction_fit 0", ["strategy.fraction_fit=0"],
     r"^strategy\.fraction_fit: expected a number > 0"),
    ("fraction_fit above 1", ["strategy.fraction_fit=1.0000001"], r"^strategy\.fraction_fit"),
    ("no wait for clients", ["strategy.wait_for_clients_s=0"], r"^strategy\.wait_for_clients_s"),
    ("attack round -2", ["attack.rounds=[-2]"], r"^attack\.rounds: expected round numbers"),
    ("attack client -1", ["attack.clients=[-1]"], r"^attack\.clients: expected partition ids"),
    ("momentum 1", ["train.momentum=1"], r"^train\.momentum: expected a number < 1"),
    ("test fraction 1", ["data.test_fraction=1"], r"^data\.test_fraction: expected a number < 1"),
    ("test fraction 0", ["data.test_fraction=0"], r"^data\.test_fraction: expected a number > 0"),
    ("no CPU per client", ["simulation.num_cpus_per_client=0"],
     r"^simulation\.num_cpus_per_client"),
    ("dp noise -1", ["defense.name=dp", "defense.params.noise_multiplier=-1"],
     r"^defense\.params\.noise_multiplier: expected a number >= 0"),
    ("params as a list", ["defense.params=[1]"], r"^defense\.params: expected a mapping"),
    ("NUL in output_dir", ['output_dir="a\\0b"'], r"^output_dir: expected text without NUL"),
    ("NUL in cache_dir", ['data.cache_dir="x\\0"'], r"^data\.cache_dir: expected text without NUL"),
    ("NUL in data.path", ['data.path="x\\0"'], r"^data\.path: expected text without NUL"),
    ("a string for an integer", ["train.rounds='3'"], r"^train\.rounds: expected an integer"),
    ("a boolean for an integer", ["train.rounds=true"], r"^train\.rounds: expected an integer"),
    ("a list for a number", ["train.lr=[0.1]"], r"^train\.lr: expected a number"),
    ("channels 2", ["data.channels=2"], r"^data\.channels: expected one of 1, 3"),
    ("unknown optimizer", ["train.optimizer=lbfgs"], r"^train\.optimizer: expected one of sgd"),
    ("CPUs beyond the machine", ["simulation.num_cpus_per_client=4096"],
     r"^simulation\.num_cpus_per_client: expected at most"),
    ("dataset of 31 GiB", ["data.image_size=1024", "data.channels=3"],
     r"^data: the dataset needs about .* GiB in memory \(2,518 images of 3 x 1024 x 1024 "
     r"float32\)"),
]:
    _override_case(_label, _items, match=_match)

for _label, _items in [
    ("seed 2**32 - 1", ["seed=4294967295"]),
    ("image size 8", ["data.image_size=8"]),
    ("a tiny positive lr", ["train.lr=1.0e-300"]),
    ("an exponent without a dot (YAML 1.2)", ["train.lr=1e-3"]),
    ("lr at its bound", ["train.lr=10000"]),
    ("evaluation batch of 1", ["train.eval_batch_size=1"]),
    ("a batch larger than the data", ["partition.batch_sizes=[1000000]"]),
    ("an integer for a number", ["train.lr=1"]),
    ("a single attack round", ["attack.rounds=3"]),
    ("the last round as -1", ["attack.rounds=[-1]"]),
    ("an empty override", [""]),
    ("spaces around an override", ["  train.rounds = 2 "]),
]:
    _override_case(_label, _items, expect="accepted")


def _default_case(label: str, overrides: list[str], expected: str) -> None:
    def setup(folder: Path) -> dict[str, Any]:
        make_files(folder)
        return {"config": None, "overrides": resolve(overrides, folder)}
    CASES.append(Case(f"default, {label}", "validate", "refused", setup, expected))


for _label, _items, _expected in BAD_CONFIGS:  # the shipped default's corpus, as they are
    _default_case(_label, _items, _expected)


# ---------------------------------------------------------------------------------------------
# C. Image folders
# ---------------------------------------------------------------------------------------------
def _png(path: Path, array: np.ndarray) -> Path:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)
    return path


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_claiming(width: int, height: int) -> bytes:
    """A PNG whose header claims ``width x height`` 8-bit gray pixels; its data is 64 bytes."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr)
            + _chunk(b"IDAT", zlib.compress(b"\0" * 64)) + _chunk(b"IEND", b""))


def image_folder(root: Path, *, classes: int = 3, per_class: int = 4, size: int = 8) -> Path:
    rng = np.random.default_rng(0)
    for c in range(classes):
        for i in range(per_class):
            _png(root / f"class{c}" / f"img{i}.png",
                 rng.integers(0, 256, (size, size), dtype=np.uint8))
    return root


def folder_config(folder: Path, root: Path, **data: Any) -> dict[str, Any]:
    return merged(TINY, data={"dataset": "imagefolder", "path": str(root),
                              "cache_dir": str(folder / "cache"), **data},
                  partition={"scheme": "iid", "num_clients": 2, "batch_sizes": [1],
                             "sizes": None})


def _folder_case(label: str, damage: Callable[[Path], Any], expect: str = "refused",
                 match: str = "", **data: Any) -> None:
    def setup(folder: Path) -> dict[str, Any]:
        root = image_folder(folder / "images")
        damage(root)
        return {"config": write_yaml(folder / "c.yaml", folder_config(folder, root, **data))}
    CASES.append(Case(label, "load", expect, setup, match))


def _put(name: str, content: bytes) -> Callable[[Path], None]:
    def damage(root: Path) -> None:
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)
    return damage


def _valid_png_bytes(size: int = 8) -> bytes:
    buffer = io.BytesIO()
    from PIL import Image

    Image.fromarray(np.full((size, size), 128, np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


_PNG_NAMED = r"class0[/\\]bad\.\w+: "
for _label, _name, _content, _match in [
    ("an empty PNG", "class0/bad.png", b"", _PNG_NAMED + "not a readable image"),
    ("a truncated PNG", "class0/bad.png", _valid_png_bytes()[:40], _PNG_NAMED),
    ("a PNG claiming 100000 x 100000 pixels", "class0/bad.png", png_claiming(100_000, 100_000),
     _PNG_NAMED + "its header claims more than 89478485 pixels"),
    ("a PNG claiming 20000 x 20000 pixels", "class0/bad.png", png_claiming(20_000, 20_000),
     _PNG_NAMED + "its header claims more than"),
    ("a PNG claiming 10000 x 10000 pixels", "class0/bad.png", png_claiming(10_000, 10_000),
     _PNG_NAMED + "its header claims more than"),
    ("a PNG claiming 9000 x 9000 pixels, with 64", "class0/bad.png", png_claiming(9000, 9000),
     _PNG_NAMED),
    ("a PNG claiming 0 x 5 pixels", "class0/bad.png", png_claiming(0, 5), _PNG_NAMED),
    ("text named .png", "class0/bad.png", b"this is not an image\n", _PNG_NAMED),
    ("garbage JPEG", "class0/bad.jpg", b"\xff\xd8\xff\xe0" + b"\x13" * 200, _PNG_NAMED),
    ("garbage TIFF", "class0/bad.tif", b"II*\x00" + b"\x07" * 200, _PNG_NAMED),
    ("a BMP claiming 60000 x 60000", "class0/bad.bmp",
     b"BM" + struct.pack("<IHHI", 70, 0, 0, 54) + struct.pack("<IiiHHIIiiII", 40, 60000, 60000,
                                                              1, 8, 0, 0, 0, 0, 0, 0), _PNG_NAMED),
    ("PNG signature only", "class0/bad.png", b"\x89PNG\r\n\x1a\n", _PNG_NAMED),
]:
    _folder_case(_label, _put(_name, _content), match=_match)


def _empty_class(root: Path) -> None:
    (root / "class3").mkdir()


def _no_classes(root: Path) -> None:
    for path in sorted(root.rglob("*"), reverse=True):
        path.unlink() if path.is_file() else path.rmdir()
    (root / "loose.png").write_bytes(_valid_png_bytes())


def _train_without_test(root: Path) -> None:
    (root / "class0").rename(root / "train")


def _unknown_test_class(root: Path) -> None:
    image_folder(root / "split" / "train", classes=2)
    image_folder(root / "split" / "test", classes=3, per_class=1)


def _one_per_class(root: Path) -> None:
    for path in root.rglob("img[1-9].png"):
        path.unlink()


_folder_case("an empty class folder", _empty_class,
             match=r"class3: class folder holds no images")
_folder_case("no class folders", _no_classes, match=r"no class sub-folders")
_folder_case("train/ without test/", _train_without_test, match=r"found train/ but no test/")
_folder_case("one image per class", _one_per_class, match=r"empty test split")
_folder_case("a class folder named with a newline", _put("class\nname/x.png", b"not a png"),
             match=r"class\\nname")


@case("a test class not among the training classes", "load", "refused",
      r"class folder not among the training classes")
def _(folder: Path) -> dict[str, Any]:
    root = folder / "images"
    _unknown_test_class(root)
    return {"config": write_yaml(folder / "c.yaml", folder_config(folder, root / "split"))}


for _label, _extra in [
    ("a 16-bit PNG", lambda root: _png(root / "class0" / "deep.png",
                                       np.arange(64, dtype=np.uint16).reshape(8, 8) * 1000)),
    ("a 1 x 1 PNG", lambda root: _png(root / "class0" / "dot.png", np.zeros((1, 1), np.uint8))),
    ("an RGBA PNG", lambda root: _png(root / "class0" / "rgba.png",
                                      np.full((8, 8, 4), 200, np.uint8))),
    ("a constant image", lambda root: _png(root / "class1" / "flat.png",
                                           np.zeros((8, 8), np.uint8))),
    ("a wide image", lambda root: _png(root / "class1" / "wide.png",
                                       np.zeros((2, 64), np.uint8))),
    ("hidden files", lambda root: (root / "class0" / ".junk.png").write_bytes(b"junk")),
    ("other files", lambda root: (root / "class0" / "notes.txt").write_text("notes")),
    ("upper-case suffixes", lambda root: (root / "class0" / "img0.png").rename(
        root / "class0" / "IMG0.PNG")),
    ("a nested sub-folder", lambda root: _png(root / "class2" / "deep" / "er.png",
                                              np.zeros((8, 8), np.uint8))),
]:
    _folder_case(_label, _extra, expect="accepted")


@case("a pre-split folder", "load", "accepted")
def _(folder: Path) -> dict[str, Any]:
    root = folder / "images"
    image_folder(root / "train", classes=2, per_class=3)
    image_folder(root / "test", classes=2, per_class=1)
    return {"config": write_yaml(folder / "c.yaml", folder_config(folder, root))}


@case("RGB output from gray images", "load", "accepted")
def _(folder: Path) -> dict[str, Any]:
    root = image_folder(folder / "images")
    return {"config": write_yaml(folder / "c.yaml", folder_config(folder, root, channels=3))}


_folder_case("data.patients with an unclosed group", lambda root: None, patients="(class",
             match=r"^data\.patients: expected a regular expression \(or a \.csv table\)")
_folder_case("data.patients matching no image", lambda root: None, patients=r"(person\d+)_",
             match=r"class0[/\\]img0\.png: data\.patients .* finds no patient id in its path; "
                   r"nor do 11 other images$")


def _patients_table_case(label: str, content: bytes, match: str) -> None:
    def setup(folder: Path) -> dict[str, Any]:
        root = image_folder(folder / "images")
        (folder / "patients.csv").write_bytes(content)
        config = folder_config(folder, root, patients=str(folder / "patients.csv"))
        return {"config": write_yaml(folder / "c.yaml", config)}
    CASES.append(Case(label, "load", "refused", setup, match))


_patients_table_case("a patients table of latin-1 bytes",
                     b"file,patient\nclass0/img0.png,h\xf4pital\n", r"not UTF-8 text \(byte 30\)")
_patients_table_case("a patients table without a patient column", b"file,who\nclass0/img0.png,a\n",
                     r"^data\.patients: .*patients\.csv: expected a header with the columns "
                     r"'file' and 'patient', got 'file', 'who'$")


@case("a pre-split folder sharing patients between train and test", "load", "refused",
      r"split: 4 patients have images in both train/ and test/, e.g. '0' "
      r"\(train/class0/img0\.png, test/class0/img0\.png\)")
def _(folder: Path) -> dict[str, Any]:
    root = folder / "images" / "split"
    image_folder(root / "train", classes=2, per_class=4)
    image_folder(root / "test", classes=2, per_class=4)
    return {"config": write_yaml(folder / "c.yaml",
                                 folder_config(folder, root, patients=r"img(\d)"))}


@case("a patients table with a byte order mark and CRLF", "load", "accepted")
def _(folder: Path) -> dict[str, Any]:
    root = image_folder(folder / "images", per_class=6)
    rows = "".join(f"class{c}/img{i}.png,patient{i}\r\n" for c in range(3) for i in range(6))
    (folder / "patients.csv").write_bytes(("\ufefffile,patient\r\n" + rows).encode())
    return {"config": write_yaml(folder / "c.yaml", folder_config(
        folder, root, patients=str(folder / "patients.csv")))}


@case("a model of 13 GiB on small data", "load", "refused",
      r"^model: convnet at 1024 px \(model\.width 1024\) has [\d,]+ weights, about [\d.]+ GiB")
def _(folder: Path) -> dict[str, Any]:
    root = image_folder(folder / "images")
    config = folder_config(folder, root, image_size=1024)
    config["model"] = {"name": "convnet", "width": 1024}
    return {"config": write_yaml(folder / "c.yaml", config)}


# ---------------------------------------------------------------------------------------------
# D. MedMNIST files
# ---------------------------------------------------------------------------------------------
def medmnist_arrays(*, n: tuple[int, int, int] = (20, 6, 6), side: int = 28, rgb: bool = False,
                    classes: int = 2) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(1)
    shape = (side, side, 3) if rgb else (side, side)
    out = {}
    for split, count in zip(("train", "val", "test"), n):
        out[f"{split}_images"] = rng.integers(0, 256, (count, *shape), dtype=np.uint8)
        out[f"{split}_labels"] = (np.arange(count) % classes).reshape(-1, 1).astype(np.int64)
    return out


def npz_config(folder: Path, path: Path) -> dict[str, Any]:
    return merged(TINY, data={"dataset": "medmnist", "path": str(path), "image_size": 16},
                  partition={"scheme": "iid", "num_clients": 2, "batch_sizes": [1],
                             "sizes": None})


def _npz_case(label: str, write: Callable[[Path], Any], expect: str = "refused",
              match: str = "") -> None:
    def setup(folder: Path) -> dict[str, Any]:
        path = folder / "data.npz"
        write(path)
        return {"config": write_yaml(folder / "c.yaml", npz_config(folder, path))}
    CASES.append(Case(label, "load", expect, setup, match))


def _savez(changes: Mapping[str, Any] | None = None, drop: tuple[str, ...] = (),
           **kwargs: Any) -> Callable[[Path], None]:
    def write(path: Path) -> None:
        arrays = {**medmnist_arrays(**kwargs), **(changes or {})}
        with path.open("wb") as f:
            np.savez(f, **{k: v for k, v in arrays.items() if k not in drop})
    return write


def save_npy(path: Path, array: np.ndarray) -> None:
    """A single ``.npy`` array written under ``path`` (whatever its suffix)."""
    with path.open("wb") as f:
        np.save(f, array)


def _npz_bytes(**arrays: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


def _raw(content: bytes) -> Callable[[Path], None]:
    return lambda path: path.write_bytes(content)


def _npy_as_npz(path: Path) -> None:
    save_npy(path, np.zeros((4, 28, 28), np.uint8))


def _truncated_npz(path: Path) -> None:
    _savez()(path)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _zip_without_arrays(path: Path) -> None:
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("readme.txt", "no arrays here")


def _huge_header(path: Path) -> None:
    """A valid file whose train_images header claims 20 million 28 x 28 images (16 GB)."""
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": "|u1", "fortran_order": False,
                                                   "shape": (20_000_000, 28, 28)})
    with zipfile.ZipFile(path, "w") as archive:
        for key, value in medmnist_arrays().items():
            buffer = io.BytesIO()
            np.save(buffer, value)
            data = buffer.getvalue()
            if key == "train_images":
                data = header.getvalue() + data[-64:]  # the claim, and 64 bytes of data
            archive.writestr(f"{key}.npy", data)


_NPZ = r"data\.npz: "
for _label, _write, _match in [
    ("a .npy saved as the .npz", _npy_as_npz, _NPZ + "not a readable \\.npz"),
    ("an empty .npz", _raw(b""), _NPZ + "not a readable \\.npz"),
    ("a truncated .npz", _truncated_npz, _NPZ),
    ("random bytes as .npz", _raw(bytes(random.Random(5).randrange(256) for _ in range(2048))),
     _NPZ + "not a readable"),
    ("a zip without arrays", _zip_without_arrays, _NPZ + "missing key 'train_images'"),
    ("a missing test_labels", _savez(drop=("test_labels",)), _NPZ + "missing key 'test_labels'"),
    ("float images", _savez({"train_images": np.zeros((20, 28, 28), np.float32)}),
     _NPZ + "train_images must be uint8"),
    ("2-D images", _savez({"train_images": np.zeros((20, 28), np.uint8)}), _NPZ + "train_images"),
    ("non-square images", _savez({"train_images": np.zeros((20, 28, 20), np.uint8)}),
     _NPZ + "train_images must be"),
    ("float labels", _savez({"train_labels": np.zeros((20, 1), np.float32)}),
     _NPZ + "train_labels must be integers"),
    ("negative labels", _savez({"test_labels": -np.ones((6, 1), np.int64)}),
     _NPZ + "test_labels must be integers >= 0"),
    ("multi-label labels", _savez({"train_labels": np.zeros((20, 3), np.int64)}),
     _NPZ + r"train_labels has shape \(20, 3\): multi-label"),
    ("labels of another length", _savez({"val_labels": np.zeros((5, 1), np.int64)}),
     _NPZ + "val_labels must be"),
    ("an empty train split", _savez(n=(0, 6, 6)),
     _NPZ + "train_images and test_images must not be empty"),
    ("an empty test split", _savez(n=(20, 6, 0)),
     _NPZ + "train_images and test_images must not be empty"),
    ("splits of two sizes", _savez({"val_images": np.zeros((6, 32, 32), np.uint8)}),
     _NPZ + r"splits have different image shapes \[\(28, 28\), \(32, 32\)\]"),
    ("pickled object arrays", _savez({"train_labels": np.array([[1], ["a"]] * 10,
                                                               dtype=object)}), _NPZ),
    ("a header claiming 16 GB", _huge_header, r"data\.npz|data: the dataset needs"),
    ("3-D volumes", _savez({"train_images": np.zeros((20, 28, 28, 28), np.uint8)}),
     _NPZ + "train_images must be"),
]:
    _npz_case(_label, _write, match=_match)

for _label, _write in [
    ("a valid tiny MedMNIST file", _savez()),
    ("RGB images", _savez(rgb=True)),
    ("labels as (N,)", _savez({k: (np.arange(n) % 2).astype(np.int64) for k, n in
                               (("train_labels", 20), ("val_labels", 6), ("test_labels", 6))})),
    ("uint8 labels", _savez({k: (np.arange(n) % 2).astype(np.uint8).reshape(-1, 1) for k, n in
                             (("train_labels", 20), ("val_labels", 6), ("test_labels", 6))})),
    ("an empty public (val) split", _savez(n=(20, 0, 6))),
    ("a compressed file", lambda path: np.savez_compressed(path, **medmnist_arrays())),
    ("images of 64 px resized to 16", _savez(side=64)),
]:
    _npz_case(_label, _write, expect="accepted")


# ---------------------------------------------------------------------------------------------
# E. Dataset caches (an image folder's; two of the offline dataset's)
# ---------------------------------------------------------------------------------------------
def _cache_case(label: str, mutate: Callable[[Path], None], *, dataset: str = "imagefolder"
                ) -> None:
    def setup(folder: Path) -> dict[str, Any]:
        if dataset == "imagefolder":
            config = folder_config(folder, image_folder(folder / "images"))
        else:
            config = merged(TINY, data={"cache_dir": str(folder / "cache")})
        return {"config": write_yaml(folder / "c.yaml", config), "mutate": mutate}
    CASES.append(Case(label, "cache", "rebuilt", setup))


def _rewrite(change: Callable[[dict[str, np.ndarray]], None]) -> Callable[[Path], None]:
    def mutate(path: Path) -> None:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
        change(arrays)
        with path.open("wb") as f:
            np.savez(f, **arrays)
    return mutate


def _drop_checksum(arrays: dict[str, np.ndarray]) -> None:
    arrays.pop("_content_sha256", None)


def _same_as_train(split: str, ids: str) -> Callable[[dict[str, np.ndarray]], None]:
    def change(arrays: dict[str, np.ndarray]) -> None:
        for key in ("images", "labels", ids, *(["variants"] if ids == "sources" else [])):
            arrays[f"{split}_{key}"] = arrays[f"train_{key}"]
        _drop_checksum(arrays)
    return change


def _edit(key: str, value: Callable[[np.ndarray], np.ndarray], *, checksum: bool = False
          ) -> Callable[[dict[str, np.ndarray]], None]:
    def change(arrays: dict[str, np.ndarray]) -> None:
        arrays[key] = value(arrays[key])
        if not checksum:
            _drop_checksum(arrays)
    return change


for _label, _mutate in [
    ("a truncated cache", lambda p: p.write_bytes(p.read_bytes()[: p.stat().st_size // 3])),
    ("an empty cache", lambda p: p.write_bytes(b"")),
    ("random bytes as the cache", lambda p: p.write_bytes(bytes(range(256)) * 8)),
    ("a .npy as the cache", lambda p: save_npy(p, np.zeros(3))),
    ("cached images of another size", _rewrite(_edit("train_images",
                                                     lambda a: a[:, :, :8, :8].copy()))),
    ("cached float images", _rewrite(_edit("train_images", lambda a: a.astype(np.float32)))),
    ("cached labels out of range", _rewrite(_edit("train_labels", lambda a: a + 100))),
    ("cached negative labels", _rewrite(_edit("test_labels", lambda a: a - 10))),
    ("cached float labels", _rewrite(_edit("train_labels", lambda a: a.astype(np.float64)))),
    ("a public split equal to the train split", _rewrite(_same_as_train("public", "paths"))),
    ("a test split equal to the train split", _rewrite(_same_as_train("test", "paths"))),
    ("other class names", _rewrite(_edit("class_names", lambda a: a[::-1].copy()))),
    ("a split missing", _rewrite(lambda arrays: [arrays.pop(k) for k in list(arrays)
                                                 if k.startswith("test_")])),
    ("images changed, checksum kept", _rewrite(_edit("train_images", lambda a: 255 - a,
                                                     checksum=True))),
    ("a wrong checksum", _rewrite(lambda arrays: arrays.update(
        _content_sha256=np.asarray("0" * 64)))),
    ("no checksum (an older cache), content valid", _rewrite(_drop_checksum)),
    ("an extra array", _rewrite(lambda arrays: arrays.update(extra=np.zeros(3)))),
]:
    _cache_case(_label, _mutate)

_cache_case("a truncated offline-dataset cache",
            lambda p: p.write_bytes(p.read_bytes()[: p.stat().st_size // 2]), dataset="mni152")
_cache_case("an offline-dataset public split equal to its train split",
            _rewrite(_same_as_train("public", "sources")), dataset="mni152")


# ---------------------------------------------------------------------------------------------
# F. Checkpoints and results folders (resume)
# ---------------------------------------------------------------------------------------------
def model_arrays(config: Mapping[str, Any], *, width: int | None = None) -> list[np.ndarray]:
    """The tiny experiment's global model, as the server checkpoints it."""
    import torch

    from fl_shadow.models import build_model

    torch.manual_seed(0)
    model = build_model(config["model"]["name"], in_channels=1, num_classes=6,
                        image_size=config["data"]["image_size"],
                        width=width or config["model"]["width"])
    return [v.detach().numpy().copy() for v in model.state_dict().values()]


def checkpoint_entries(config_text: str, arrays: list[np.ndarray], *, server_round: int = 1,
                       num_rounds: int = 3) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """``(meta, entries)`` of a format-1 checkpoint (readable before and after the
    restructure), with random states captured now."""
    import torch

    _, keys, pos, has_gauss, cached = np.random.get_state(legacy=True)
    _, words, gauss_next = random.getstate()
    meta = {"format": 1, "server_round": server_round, "num_rounds": num_rounds,
            "config_sha256": hashlib.sha256(config_text.encode()).hexdigest(),
            "num_arrays": len(arrays), "numpy_pos": int(pos), "numpy_has_gauss": int(has_gauss),
            "numpy_cached_gaussian": float(cached), "python_gauss_next": gauss_next}
    entries = {"rng_torch_cpu": torch.get_rng_state().numpy().copy(),
               "rng_numpy_keys": np.asarray(keys, np.uint32),
               "rng_python_words": np.asarray(words, np.uint64),
               **{f"array_{i:04d}": a for i, a in enumerate(arrays)}}
    return meta, entries


def write_checkpoint(path: Path, meta: Any, entries: Mapping[str, np.ndarray]) -> None:
    with path.open("wb") as f:
        np.savez(f, meta=np.array(meta if isinstance(meta, str) else json.dumps(meta)),
                 **entries)


def results_folder(folder: Path, *, state: str = "running",
                   meta_change: Callable[[dict[str, Any]], Any] | None = None,
                   entries_change: Callable[[dict[str, np.ndarray]], None] | None = None,
                   config: Mapping[str, Any] = TINY) -> Path:
    """A run killed in round 2 after checkpointing round 1: its rows, status, checkpoint."""
    run_dir = folder / "run"
    run_dir.mkdir()
    text = yaml.safe_dump(dict(config), sort_keys=False)
    (run_dir / "config.yaml").write_text(text)
    (run_dir / "status.json").write_text(json.dumps({"state": state, "num_rounds": 3,
                                                     "rounds_completed": 1}))
    (run_dir / "utility.jsonl").write_text("".join(
        json.dumps({"round": r, "loss": 1.5 - r / 10, "accuracy": 0.2 + r / 10,
                    "macro_f1": 0.1 + r / 10}) + "\n" for r in (0, 1, 2)))
    (run_dir / "fit.jsonl").write_text("".join(
        json.dumps({"round": r, "client": c, "num_examples": (2, 6)[c], "train_loss": 1.0,
                    "fit_seconds": 0.1}) + "\n" for r in (1, 2) for c in (0, 1)))
    meta, entries = checkpoint_entries(text, model_arrays(config))
    if meta_change is not None:
        replaced = meta_change(meta)
        meta = meta if replaced is None else replaced
    if entries_change is not None:
        entries_change(entries)
    write_checkpoint(run_dir / "checkpoint.npz", meta, entries)
    return run_dir


def _resume_case(label: str, expect: str = "refused", match: str = "", **folder: Any) -> None:
    def setup(case_folder: Path) -> dict[str, Any]:
        return {"run_dir": results_folder(case_folder, **folder)}
    CASES.append(Case(label, "resume", expect, setup, match))


def _meta(**changes: Any) -> Callable[[dict[str, Any]], None]:
    def change(meta: dict[str, Any]) -> None:
        for key, value in changes.items():
            if value is _DROP:
                meta.pop(key, None)
            else:
                meta[key] = value
    return change


def _entries(**changes: Any) -> Callable[[dict[str, np.ndarray]], None]:
    def change(entries: dict[str, np.ndarray]) -> None:
        for key, value in changes.items():
            if value is _DROP:
                entries.pop(key, None)
            else:
                entries[key] = value(entries[key]) if callable(value) else value
    return change


_DROP = object()
_CKPT = r"checkpoint"

_resume_case("a valid results folder", expect="accepted")
for _label, _change, _match in [
    ("round 0", _meta(server_round=0), _CKPT),
    ("round -4", _meta(server_round=-4), _CKPT),
    ("round 3 of 3", _meta(server_round=3), r"already closes the last round|checkpoint"),
    ("round 4 of 3", _meta(server_round=4), _CKPT),
    ("round '1' as text", _meta(server_round="1"), _CKPT),
    ("round 1.5", _meta(server_round=1.5), _CKPT),
    ("round true", _meta(server_round=True), _CKPT),
    ("round null", _meta(server_round=None), _CKPT),
    ("round 10**20", _meta(server_round=10**20), _CKPT),
    ("no round", _meta(server_round=_DROP), _CKPT),
    ("a run of 5 rounds", _meta(num_rounds=5), r"rounds"),
    ("a run of 0 rounds", _meta(num_rounds=0), _CKPT),
    ("no array count", _meta(num_arrays=_DROP), _CKPT),
    ("0 arrays", _meta(num_arrays=0), _CKPT),
    ("999 arrays announced", _meta(num_arrays=999), _CKPT),
    ("-1 arrays", _meta(num_arrays=-1), _CKPT),
    ("numpy position 700", _meta(numpy_pos=700), _CKPT),
    ("numpy position -1", _meta(numpy_pos=-1), _CKPT),
    ("numpy has_gauss 2", _meta(numpy_has_gauss=2), _CKPT),
    ("numpy cached gaussian as text", _meta(numpy_cached_gaussian="x"), _CKPT),
    ("numpy cached gaussian NaN", _meta(numpy_cached_gaussian=float("nan")), _CKPT),
    ("python gauss_next as text", _meta(python_gauss_next="x"), _CKPT),
    ("format 99", _meta(format=99), r"checkpoint format 99"),
    ("no format", _meta(format=_DROP), r"checkpoint format None"),
    ("the digest of another config", _meta(config_sha256="0" * 64), r"config\.yaml differs"),
    ("a digest that is a number", _meta(config_sha256=5), _CKPT),
    ("strategy state of an unknown name", _meta(format=2, strategy_state={"m_t": None}),
     r"strategy state"),
    ("strategy state that is a list", _meta(format=2, strategy_state=[1]), _CKPT),
    ("strategy state of -3 arrays", _meta(format=2, strategy_state={"m_t": -3}), _CKPT),
]:
    _resume_case(f"checkpoint with {_label}", meta_change=_change, match=_match)

for _label, _meta_text in [("meta that is not JSON", "{round: 1"), ("meta that is a list", "[1]"),
                           ("meta that is a number", "3")]:
    _resume_case(f"checkpoint with {_label}", meta_change=lambda meta, t=_meta_text: t,
                 match=_CKPT)

_W = "array_0000"
for _label, _change, _match in [
    ("an array missing", _entries(array_0003=_DROP), _CKPT),
    ("a wrong array shape", _entries(array_0000=lambda a: a[:1].copy()), r"shape"),
    ("text arrays", _entries(array_0000=np.array(["x"] * 4)), _CKPT),
    ("a NaN weight", _entries(array_0000=lambda a: np.where(a == a.flat[0], np.nan, a)), _CKPT),
    ("an infinite weight", _entries(array_0001=lambda a: a + np.inf), _CKPT),
    ("no torch random state", _entries(rng_torch_cpu=_DROP), _CKPT),
    ("a short torch random state", _entries(rng_torch_cpu=lambda a: a[:10].copy()), _CKPT),
    ("a float torch random state", _entries(rng_torch_cpu=lambda a: a.astype(np.float32)), _CKPT),
    ("10 NumPy random keys", _entries(rng_numpy_keys=lambda a: a[:10].copy()), _CKPT),
    ("10 Python random words", _entries(rng_python_words=lambda a: a[:10].copy()), _CKPT),
    ("Python random words of 2**40", _entries(rng_python_words=lambda a: a + 2**40), _CKPT),
    ("float Python random words", _entries(rng_python_words=lambda a: a.astype(np.float64)),
     _CKPT),
]:
    _resume_case(f"checkpoint with {_label}", entries_change=_change, match=_match)


@case("checkpoint of another model (width 8)", "resume", "refused", r"shape|arrays")
def _(folder: Path) -> dict[str, Any]:
    run_dir = results_folder(folder)
    text = (run_dir / "config.yaml").read_text()
    meta, entries = checkpoint_entries(text, model_arrays(TINY, width=8))
    write_checkpoint(run_dir / "checkpoint.npz", meta, entries)
    return {"run_dir": run_dir}


@case("checkpoint with one array fewer, counted", "resume", "refused", r"arrays")
def _(folder: Path) -> dict[str, Any]:
    run_dir = results_folder(folder)
    text = (run_dir / "config.yaml").read_text()
    meta, entries = checkpoint_entries(text, model_arrays(TINY)[:-1])
    write_checkpoint(run_dir / "checkpoint.npz", meta, entries)
    return {"run_dir": run_dir}


def _damaged_file(label: str, damage: Callable[[Path], None], match: str = _CKPT) -> None:
    def setup(folder: Path) -> dict[str, Any]:
        run_dir = results_folder(folder)
        damage(run_dir)
        return {"run_dir": run_dir}
    CASES.append(Case(label, "resume", "refused", setup, match))


_C = "checkpoint.npz"
_damaged_file("no checkpoint", lambda d: (d / _C).unlink(), r"no checkpoint\.npz")
_damaged_file("an empty checkpoint", lambda d: (d / _C).write_bytes(b""))
_damaged_file("a truncated checkpoint",
              lambda d: (d / _C).write_bytes((d / _C).read_bytes()[: (d / _C).stat().st_size // 2]))
_damaged_file("random bytes as the checkpoint", lambda d: (d / _C).write_bytes(bytes(range(256))))
_damaged_file("a .npy as the checkpoint", lambda d: save_npy(d / _C, np.zeros(3)))
_damaged_file("a checkpoint without meta",
              lambda d: (d / _C).write_bytes(_npz_bytes(x=np.zeros(1))))
_damaged_file("a completed run", lambda d: (d / "status.json").write_text('{"state": "completed"}'),
              r"already completed")
_damaged_file("no config.yaml", lambda d: (d / "config.yaml").unlink(), r"no config\.yaml")
_damaged_file("a config.yaml with an alias",
              lambda d: (d / "config.yaml").write_text("a: &x 1\nname: *x\n"), r"aliases")
_damaged_file("a config.yaml of latin-1 bytes",
              lambda d: (d / "config.yaml").write_bytes(b"name: h\xf4pital\n"), r"not UTF-8")


@case("a results folder that does not exist", "resume", "refused", r"no such results folder")
def _(folder: Path) -> dict[str, Any]:
    return {"run_dir": folder / "nowhere"}


@case("a file as the results folder", "resume", "refused", r"no such results folder")
def _(folder: Path) -> dict[str, Any]:
    (folder / "file").write_text("x")
    return {"run_dir": folder / "file"}


@case("a status.json that is not JSON", "resume", "accepted")
def _(folder: Path) -> dict[str, Any]:
    run_dir = results_folder(folder)
    (run_dir / "status.json").write_text("{state")
    return {"run_dir": run_dir}


# ---------------------------------------------------------------------------------------------
# G. Results files (.jsonl) of a folder being resumed
# ---------------------------------------------------------------------------------------------
def _rows_case(label: str, name: str, content: bytes) -> None:
    def setup(folder: Path) -> dict[str, Any]:
        run_dir = results_folder(folder)
        path = run_dir / name
        path.write_bytes((path.read_bytes() if path.exists() else b"") + content)
        return {"run_dir": run_dir}
    CASES.append(Case(label, "rows", "tolerated", setup))


_ROW = b'{"round": 1, "client": 0, "num_examples": 2}\n'
for _label, _name, _content in [
    ("a non-UTF-8 row", "fit.jsonl", b'{"round": 1, "client": "\xff\xfe"}\n' + _ROW),
    ("a row that is not JSON", "fit.jsonl", b"round 1 client 0\n" + _ROW),
    ("a row that is a list", "fit.jsonl", b"[1, 2, 3]\n"),
    ("a row that is a number", "utility.jsonl", b"7\n"),
    ("a round that is text", "fit.jsonl", b'{"round": "x", "client": 0}\n'),
    ("a round that is null", "fit.jsonl", b'{"round": null, "client": 0}\n'),
    ("a round of 1.5", "utility.jsonl", b'{"round": 1.5, "loss": 1.0}\n'),
    ("a round that is true", "utility.jsonl", b'{"round": true, "loss": 1.0}\n'),
    ("a row without a round", "fit.jsonl", b'{"client": 0, "num_examples": 2}\n'),
    ("a client that is text", "fit.jsonl", b'{"round": 1, "client": "a"}\n'),
    ("a loss that is text", "utility.jsonl", b'{"round": 1, "loss": "low"}\n'),
    ("an accuracy that is text", "utility.jsonl", b'{"round": 1, "loss": 1, "accuracy": "x"}\n'),
    ("fit seconds that are text", "fit.jsonl", b'{"round": 1, "client": 1, "fit_seconds": "x"}\n'),
    ("a clients' utility row without examples", "client_utility.jsonl",
     b'{"round": 1, "client": 0, "accuracy": 0.5, "macro_f1": 0.5}\n'),
    ("a privacy row neither skipped nor scored", "privacy.jsonl", b'{"round": 1, "client": 0}\n'),
    ("a PSNR that is text", "privacy.jsonl",
     b'{"round": 1, "client": 0, "num_images": 1, "attack_seconds": 1, "psnr": "x"}\n'),
    ("a torn last line", "fit.jsonl", b'{"round": 2, "client": 1, "num_ex'),
    ("blank lines", "fit.jsonl", b"\n\n   \n"),
    ("a NUL line", "fit.jsonl", b"\x00\x00\x00\n"),
    ("CRLF rows", "failures.jsonl", b'{"round": 1, "error": "x"}\r\n'),
    ("a byte order mark", "failures.jsonl", b'\xef\xbb\xbf{"round": 1, "error": "x"}\n'),
]:
    _rows_case(_label, _name, _content)


# ---------------------------------------------------------------------------------------------
# Running a case, on whichever layout this checkout has
# ---------------------------------------------------------------------------------------------
@dataclass
class Outcome:
    """What a case did.

    Attributes:
        kind: ``error`` (a refusal: exit 2, or a named error), ``exception`` (anything else
            escaped: a traceback), ``accepted``.
        message: the error's text (stderr for the CLI).
        error_type: the exception's class name.
        changed: files of the case's folder changed or lost by a refused case.
        bad_data: an accepted case used what it should not have (a damaged cache's content,
            an invalid row).
    """

    kind: str
    message: str = ""
    error_type: str = ""
    changed: list[str] = field(default_factory=list)
    bad_data: str = ""


def _modules() -> dict[str, Any]:
    """This checkout's cli and server-app modules (``fl_shadow.apps`` or the older layout)."""
    try:
        from fl_shadow.apps import cli, server_app
    except ImportError:
        from fl_shadow import cli, server_app  # type: ignore[no-redef]
    return {"cli": cli, "server_app": server_app}


def _snapshot(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file() and "cache" not in p.parts}


def _cli(argv: list[str]) -> tuple[int, str]:
    err, out = io.StringIO(), io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
        rc = _modules()["cli"].main(argv)
    return int(rc), err.getvalue()


def _validate(args: Mapping[str, Any]) -> tuple[int, str]:
    argv = ["validate"] + ([str(args["config"])] if args.get("config") else [])
    for item in args.get("overrides", []):
        argv += ["--set", item]
    return _cli(argv)


def _load_config(args: Mapping[str, Any]) -> Any:
    from fl_shadow.config import load_config

    return load_config(args.get("config"), args.get("overrides", []))


def _splits_equal(a: Any, b: Any) -> str:
    import torch

    for split in ("train", "test", "public"):
        x, y = getattr(a, split), getattr(b, split)
        if not (torch.equal(x.images, y.images) and torch.equal(x.labels, y.labels)):
            return f"the {split} split differs from a fresh build"
    return "" if tuple(a.class_names) == tuple(b.class_names) else "other class names"


def _clear_dataset_memo() -> None:
    import fl_shadow.data as data

    data._load_cached.cache_clear()


def _launch_builds_the_server(calls: list[Any]) -> Callable[..., int]:
    """``cli._launch`` replaced: build the ServerApp's server in-process, as Flower would."""
    from flwr.app import Context, RecordDict

    server_app = _modules()["server_app"]

    def launch(config: Any, config_path: Path, overrides: list[str], run_dir: Path, *,
               resume: bool, **_: Any) -> int:
        context = Context(run_id=1, node_id=0, node_config={}, state=RecordDict(),
                          run_config={"run-dir": str(run_dir), "resume": resume})
        build = getattr(server_app, "build_server", None) or server_app.server_fn
        calls.append(build(context))
        return 0

    return launch


def _resume(args: Mapping[str, Any]) -> tuple[int, str]:
    cli = _modules()["cli"]
    original, calls = cli._launch, []
    cli._launch = _launch_builds_the_server(calls)
    try:
        return _cli(["resume", str(args["run_dir"])])
    finally:
        cli._launch = original


def _invalid_rows(run_dir: Path) -> str:
    from fl_shadow.report import read_jsonl, summary_markdown

    rows = {name: read_jsonl(run_dir / f"{name}.jsonl")
            for name in ("utility", "privacy", "fit", "failures", "client_utility")}
    for name, found in rows.items():
        for row in found:
            if not isinstance(row, dict) or not isinstance(row.get("round"), int) \
                    or isinstance(row.get("round"), bool):
                return f"{name}.jsonl: read back {row!r}"
    summary_markdown(rows["utility"], rows["privacy"], rows["fit"])
    return ""


def run_case(case: Case, folder: Path) -> Outcome:
    """Set the case up in ``folder`` and run its verb; errors become the :class:`Outcome`."""
    args = case.setup(folder)
    before = _snapshot(folder)
    outcome = Outcome("accepted")
    try:
        if case.verb in ("validate", "load"):
            rc, err = _validate(args)
            if rc == 0 and case.verb == "load":
                from fl_shadow.data import load_dataset

                config = _load_config(args)
                load_dataset(config.data, seed=config.seed)
        elif case.verb == "cache":
            from fl_shadow.data import load_dataset

            config = _load_config(args)
            _clear_dataset_memo()
            fresh = load_dataset(config.data, seed=config.seed)
            for cached in sorted((folder / "cache" / "datasets").glob("*.npz")):
                args["mutate"](cached)
            _clear_dataset_memo()
            again = load_dataset(config.data, seed=config.seed)
            outcome.bad_data = _splits_equal(fresh, again)
            rc, err = 0, ""
        else:
            rc, err = _resume(args)
            if rc == 0 and case.verb == "rows":
                outcome.bad_data = _invalid_rows(Path(args["run_dir"]))
        if rc != 0:
            # The error is the CLI's "fl-shadow: ..." line (log lines and warnings may precede).
            message = err[err.rfind("fl-shadow: "):] if "fl-shadow: " in err else err
            outcome = Outcome("error", message.strip().removeprefix("fl-shadow: "), "exit 2")
    except Exception as exc:  # noqa: BLE001  (the point: what escapes, and as what)
        named = type(exc).__name__ in ("ConfigError", "DataError", "ResumeError",
                                       "ProtocolError", "RunFailed")
        outcome = Outcome("error" if named else "exception", str(exc), type(exc).__name__)
    if outcome.kind != "accepted":
        after = _snapshot(folder)
        outcome.changed = sorted(k for k in before if before[k] != after.get(k))
    return outcome


def verdict(case: Case, outcome: Outcome) -> str:
    """``ok`` (as expected), ``clean`` (refused in one clean line, as a bad input must be),
    ``traceback``, ``multi-line``, ``silent`` (a bad input accepted), ``lost`` (a refused case
    changed files), ``blow-up`` (out of memory), ``refused-valid``."""
    if outcome.kind == "exception":
        return "blow-up" if outcome.error_type == "MemoryError" else "traceback"
    if outcome.kind == "error":
        if "\n" in outcome.message or "Traceback" in outcome.message:
            return "multi-line"
        if outcome.changed:
            return "lost"
        return "refused-valid" if case.expect == "accepted" else "clean"
    if case.expect == "refused":
        return "silent"
    return "silent" if outcome.bad_data else "ok"


def message_matches(case: Case, outcome: Outcome) -> bool:
    return not case.match or re.search(case.match, outcome.message) is not None


__all__ = ["AVAILABLE_MEMORY", "CASES", "Case", "Outcome", "TINY", "message_matches", "run_case",
           "verdict"]
