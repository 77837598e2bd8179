"""Config loading: types, ranges, unknown keys, overrides, and the CLI's one-line errors."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Annotated

import pytest
from pydantic import Field

from fl_shadow.config import (
    DEFAULT_CONFIG,
    ExperimentConfig,
    Float,
    apply_overrides,
    load_config,
    load_config_dict,
    parse_overrides,
    parse_settings,
    parse_yaml,
    settings,
)
from fl_shadow.errors import ConfigError


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "exp.yaml"
    path.write_text(text)
    return path


def test_default_config_loads_and_round_trips() -> None:
    config = load_config()
    assert config.data.dataset == "mni152"
    assert config.partition.sizes is not None
    assert len(config.partition.sizes) == config.partition.num_clients
    again = load_config_dict(config.to_dict())
    assert again == config


def test_int_accepted_for_float_and_scalar_for_list(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, "train:\n  lr: 1\nattack:\n  rounds: 3\n"))
    assert config.train.lr == 1.0 and isinstance(config.train.lr, float)
    assert config.attack.rounds == (3,)


@pytest.mark.parametrize(
    ("yaml_text", "message"),
    [
        ("train:\n  lrr: 0.1\n", r"^train\.lrr: unknown key; expected one of: rounds"),
        ("bogus: 1\n", r"^bogus: unknown key"),
        ("train:\n  lr: -0.1\n", r"^train\.lr: expected a number > 0, got -0\.1$"),
        ("train:\n  rounds: two\n", r"^train\.rounds: expected an integer, got 'two'$"),
        ("train:\n  rounds: 2.5\n", r"^train\.rounds: expected an integer"),
        ("train:\n  optimizer: rmsprop\n", r"^train\.optimizer: expected one of sgd, adam"),
        ("data:\n  channels: 2\n", r"^data\.channels: expected one of 1, 3, got 2$"),
        ("partition:\n  num_clients: 3\n  sizes: [1, 2]\n",
         r"^partition\.sizes: expected 3 entries \(one per client\)"),
        ("partition:\n  scheme: sizes\n", r"^partition\.sizes: expected a list"),
        ("attack:\n  clients: [7]\n", r"^attack\.clients: expected partition ids < 4"),
        ("train: 3\n", r"^train: expected a mapping of keys, got 3$"),
        ("model:\n  norm: true\n", r"^model\.norm: expected one of batch, none"),
        ("partition:\n  batch_sizes: [1, x]\n", r"^partition\.batch_sizes\[1\]: expected an integer"),
    ],
)
def test_bad_values_name_the_key(tmp_path: Path, yaml_text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config(write(tmp_path, yaml_text))


def test_missing_and_malformed_files_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="config file not found: .*nope.yaml"):
        load_config(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match=r"exp\.yaml: not valid YAML \(line 2\)"):
        load_config(write(tmp_path, "a: 1\n b: [\n"))


def test_overrides_apply_yaml_values_and_validate() -> None:
    config = load_config(None, ["train.rounds=5", "attack.rounds=[1, 5]", "defense.name=none"])
    assert config.train.rounds == 5 and config.attack.rounds == (1, 5)
    with pytest.raises(ConfigError, match=r"^train\.roundz: unknown key"):
        load_config(None, ["train.roundz=5"])
    with pytest.raises(ConfigError, match="expected key=value"):
        apply_overrides({}, ["train.rounds"])
    with pytest.raises(ConfigError, match=r"^train\.rounds\.x: is a value, not a section|"
                                          r"^train\.rounds: is a value"):
        apply_overrides({"train": {"rounds": 3}}, ["train.rounds.x=1"])


def test_parse_overrides_splits_on_semicolons_only() -> None:
    assert parse_overrides("a.b=1; c=[1, 2]\nd=x") == ["a.b=1", "c=[1, 2]", "d=x"]
    assert parse_overrides("") == []


def test_attack_round_selection() -> None:
    config = load_config(None, ["attack.rounds=[1, -1]", "train.rounds=4"])
    chosen = [r for r in range(1, 5) if config.attack.attacks_round(r, 4)]
    assert chosen == [1, 4]


@settings
class _StrengthParams:
    strength: Annotated[Float, Field(ge=0)] = 1.0


def test_component_params_are_validated_by_their_dataclass() -> None:
    P = _StrengthParams
    assert parse_settings(P, {"strength": 2}, "defense.params").strength == 2.0
    with pytest.raises(ConfigError, match=r"^defense\.params\.strenght: unknown key; expected "
                                          r"one of: strength$"):
        parse_settings(P, {"strenght": 2}, "defense.params")
    with pytest.raises(ConfigError, match=r"^defense\.params\.strength: expected a number >= 0"):
        parse_settings(P, {"strength": -1}, "defense.params")
    with pytest.raises(ConfigError, match=r"^defense\.params\.strength: expected a finite "
                                          r"number, got inf$"):
        parse_settings(P, {"strength": float("inf")}, "defense.params")


def test_registry_lookup_lists_known_names() -> None:
    from fl_shadow.defenses import DEFENSES

    with pytest.raises(ConfigError, match=r"^defense\.name: unknown defense 'shadw'; expected "
                                          r"one of: .*none"):
        DEFENSES.get("shadw")


def test_cli_prints_one_line_and_exits_2(tmp_path: Path) -> None:
    path = write(tmp_path, "train:\n  lr: -1\n")
    proc = subprocess.run([sys.executable, "-m", "fl_shadow.apps.cli", "validate", str(path)],
                          capture_output=True, text=True, check=False)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == ["fl-shadow: train.lr: expected a number > 0, "
                                                "got -1"]
    assert "Traceback" not in proc.stderr
    ok = subprocess.run([sys.executable, "-m", "fl_shadow.apps.cli", "validate", str(DEFAULT_CONFIG)],
                        capture_output=True, text=True, check=False)
    assert ok.returncode == 0, ok.stderr


def test_default_dataclass_is_valid() -> None:
    ExperimentConfig().validate()


# ---- composition: `base:` -------------------------------------------------------------------
def test_base_composes_and_a_new_component_drops_the_old_params(tmp_path: Path) -> None:
    (tmp_path / "parent.yaml").write_text(
        "base: default.yaml\nname: parent\ndefense:\n  name: dp\n  params: {clip_norm: 2.0}\n")
    child = write(tmp_path, "base: parent.yaml\ntrain:\n  rounds: 4\n"
                            "defense:\n  name: sparsification\n")
    config = load_config(child)
    default = load_config()
    assert config.name == "parent" and config.train.rounds == 4
    assert config.train.lr == default.train.lr and config.partition == default.partition
    # dp's clip_norm did not leak into sparsification's params.
    assert config.defense.name == "sparsification" and config.defense.params == {}
    same_name = write(tmp_path, "base: parent.yaml\ndefense:\n  params: {noise_multiplier: 0.5}\n")
    assert load_config(same_name).defense.params == {"clip_norm": 2.0, "noise_multiplier": 0.5}


def test_base_errors_name_the_file(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text("base: b.yaml\n")
    (tmp_path / "b.yaml").write_text("base: a.yaml\n")
    with pytest.raises(ConfigError, match=r"a\.yaml: base: the chain of base configs loops back"):
        load_config(tmp_path / "a.yaml")
    with pytest.raises(ConfigError, match=r"config file not found: nope\.yaml \(shipped "
                                          r"configs: anatomy_noise, ct_head, default, "):
        load_config(write(tmp_path, "base: nope.yaml\n"))
    with pytest.raises(ConfigError, match=r"exp\.yaml: base: expected the name or path"):
        load_config(write(tmp_path, "base: [1]\n"))
    with pytest.raises(ConfigError, match=r"^base: only a config file"):
        load_config_dict({"base": "default.yaml"})


def test_shipped_configs_load_by_name_and_shadow_is_a_short_diff() -> None:
    from fl_shadow.config import SHIPPED_CONFIGS, shipped_config_names

    assert {"default", "shadow", "flower_dp", "paper_scale", "paper_scale_shadow"} <= \
        set(shipped_config_names())
    shadow = load_config("shadow")
    assert load_config("shadow.yaml") == shadow
    assert shadow.defense.name == "shadow" and shadow.partition == load_config().partition
    assert len((SHIPPED_CONFIGS / "shadow.yaml").read_text().splitlines()) < 40
    assert load_config("paper_scale_shadow").model.name == "resnet18"


# ---- strict YAML -----------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("a: &x [1, 2]\nb: *x\n", r"exp\.yaml: YAML aliases are not accepted \(\*x on line 2\)"),
        ("train:\n  lr: 0.1\ntrain:\n  rounds: 2\n",
         r"exp\.yaml: line 3: duplicate key 'train' \(first on line 1\)"),
        ("train: {lr: 1, lr: 2}\n", r"line 1: duplicate key 'lr'"),
        ("[" * 5000 + "]" * 5000, r"exp\.yaml: nested deeper than 32 levels"),
        ("name: a\0b\n", r"exp\.yaml: not a text file \(it holds NUL bytes\)"),
        ("? [1, 2]\n: 3\n", r"exp\.yaml: line 1: a key must be a plain value"),
    ],
)
def test_yaml_is_read_strictly(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config(write(tmp_path, text))


def test_a_billion_laughs_file_is_refused_before_expansion(tmp_path: Path) -> None:
    import time

    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, 9)]
    path = write(tmp_path, "\n".join(lines) + "\n")
    start = time.perf_counter()
    with pytest.raises(ConfigError, match="YAML aliases are not accepted"):
        load_config(path)
    assert time.perf_counter() - start < 1.0


def test_binary_and_huge_files_are_one_line_errors(tmp_path: Path) -> None:
    binary = tmp_path / "bin.yaml"
    binary.write_bytes(bytes(range(256)))
    with pytest.raises(ConfigError, match=r"bin\.yaml: not UTF-8 text"):
        load_config(binary)
    huge = tmp_path / "huge.yaml"
    huge.write_text("# " + "x" * (1 << 20) + "\n")
    with pytest.raises(ConfigError, match=r"huge\.yaml: larger than 1024 KiB"):
        load_config(huge)
    with pytest.raises(ConfigError, match="is a folder, not a config file"):
        load_config(tmp_path)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("train.lr=.inf", r"^train\.lr: expected a finite number, got inf$"),
        ("train.lr=.nan", r"^train\.lr: expected a finite number, got nan$"),
        ("seed=1180591620717411303424", r"^seed: expected an integer <= 4294967295"),
        ("data.image_size=100000", r"^data\.image_size: expected an integer <= 1024"),
        ("name=a/b", r"^name: expected a printable name"),
        ("train.rounds='3'", r"^train\.rounds: expected an integer, got '3'$"),
        ("attack.adaptive=1", r"^attack\.adaptive: expected true or false, got 1$"),
        ("attack.rounds=[0]", r"^attack\.rounds: expected round numbers >= 1"),
        ("attack.rounds=[11]", r"^attack\.rounds: expected rounds of the run \(1\.\.10"),
        ("strategy.min_available_clients=9", r"^strategy\.min_available_clients: expected at "
                                             r"most partition\.num_clients \(4\)"),
        ("attack.assumed_training.lr=.inf", r"^attack\.assumed_training\.lr: expected a "
                                            r"number > 0, got inf$"),
        ("train..lr=1", r"empty key part"),
    ],
)
def test_bad_overrides_name_the_key(override: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config(None, [override])


def test_empty_sections_mean_defaults(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, "train:\nstrategy:\n  flower_dp:\n"))
    assert config.train == ExperimentConfig().train


def test_yaml_reads_exponents_without_a_dot_as_numbers() -> None:
    """YAML 1.1 (PyYAML) reads ``1e-5`` as text; the loader reads it as YAML 1.2 does."""
    assert parse_yaml("lr: 1e-5\nbig: -2E3\nword: 1e\n", "t") == {"lr": 1e-5, "big": -2000.0,
                                                                    "word": "1e"}
    assert load_config(None, ["train.lr=1e-3"]).train.lr == 0.001
    with pytest.raises(ConfigError, match=r"^train\.lr: expected a finite number, got inf$"):
        load_config(None, ["train.lr=1e309"])


def test_error_messages_stay_one_line_whatever_they_quote() -> None:
    from fl_shadow.errors import DataError

    error = DataError("/data/class\nname/x.png: not a readable image\x00")
    assert str(error) == "/data/class\\nname/x.png: not a readable image\\x00"
    assert isinstance(error, ConfigError) and isinstance(error, ValueError)
