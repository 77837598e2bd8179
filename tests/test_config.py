"""Config loading: types, ranges, unknown keys, overrides, and the CLI's one-line errors."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from fl_shadow.config import (
    DEFAULT_CONFIG,
    ExperimentConfig,
    apply_overrides,
    build_params,
    load_config,
    load_config_dict,
    parse_overrides,
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
        ("data:\n  channels: 2\n", r"^data\.channels: expected 1 or 3, got 2$"),
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


def test_component_params_are_validated_by_their_dataclass() -> None:
    from dataclasses import dataclass

    @dataclass(frozen=True)
    class P:
        strength: float = 1.0

        def validate(self, key: str) -> None:
            if self.strength < 0:
                raise ConfigError(f"{key}.strength: expected a number >= 0, got {self.strength}")

    assert build_params(P, {"strength": 2}, "defense.params").strength == 2.0
    with pytest.raises(ConfigError, match=r"^defense\.params\.strenght: unknown key"):
        build_params(P, {"strenght": 2}, "defense.params")
    with pytest.raises(ConfigError, match=r"^defense\.params\.strength: expected a number >= 0"):
        build_params(P, {"strength": -1}, "defense.params")


def test_registry_lookup_lists_known_names() -> None:
    from fl_shadow.defenses import DEFENSES

    with pytest.raises(ConfigError, match=r"^defense\.name: unknown defense 'shadw'; expected "
                                          r"one of: .*none"):
        DEFENSES.get("shadw")


def test_cli_prints_one_line_and_exits_2(tmp_path: Path) -> None:
    path = write(tmp_path, "train:\n  lr: -1\n")
    proc = subprocess.run([sys.executable, "-m", "fl_shadow.cli", "validate", str(path)],
                          capture_output=True, text=True, check=False)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == ["fl-shadow: train.lr: expected a number > 0, "
                                                "got -1.0"]
    assert "Traceback" not in proc.stderr
    ok = subprocess.run([sys.executable, "-m", "fl_shadow.cli", "validate", str(DEFAULT_CONFIG)],
                        capture_output=True, text=True, check=False)
    assert ok.returncode == 0, ok.stderr


def test_default_dataclass_is_valid() -> None:
    ExperimentConfig().validate()
