"""experiments/attack_table.py on a tiny federation: replay, rows, merging, skipped rows."""

from __future__ import annotations

import math
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from fl_shadow.errors import ConfigError

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "experiments"))
import attack_table as at  # noqa: E402

TINY = ["data.image_size=8", "model.width=4", "train.rounds=2", "train.device=cpu"]


def tiny_spec(tmp_path: Path) -> Path:
    spec = {"base": "default.yaml", "overrides": TINY,
            "rounds": [1, 2], "clients": [0, 1],
            "rows": [{"label": "ig", "attack": "inverting_gradients",
                      "params": {"iterations": 3, "progress": False}},
                     {"label": "not-yet", "attack": "no_such_attack", "params": {"x": 1}}]}
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


Table = tuple[at.TableSpec, Path, dict[str, Any]]


@pytest.fixture(scope="module")
def table(tmp_path_factory: pytest.TempPathFactory) -> Table:
    tmp = tmp_path_factory.mktemp("attack_table")
    spec = at.load_spec(tiny_spec(tmp))
    out = tmp / "table"
    results = at.run_table(spec, spec_path="spec.yaml", only=None, out=out)
    return spec, out, results


def test_later_round_model_is_trained_and_round_one_is_the_initial_model(
        table: Table, tmp_path: Path) -> None:
    spec, _, results = table
    config = at.base_config(spec)
    fed = at.replay_federation(config, tmp_path / "replay", keep_rounds=[1, 2],
                               keep_clients=[0, 1])
    first, later = fed.rounds[1].global_arrays, fed.rounds[2].global_arrays
    initial = at.Federation(config).initial_arrays()
    assert all(np.array_equal(x, y) for x, y in zip(first, initial))
    assert any(not np.array_equal(x, y) for x, y in zip(first, later))
    # The kept replies are the two attacked clients' (client 0 holds 1 image), as they arrived.
    assert set(fed.rounds[1].replies) == {0, 1} and fed.rounds[1].replies[0].num_examples == 1
    # The replay is deterministic: the table's recorded curve is this one.
    assert [u["accuracy"] for u in fed.utility] == \
        [u["accuracy"] for u in results["federation"]["utility"]]
    assert len(fed.utility) == 3  # the initial model and two rounds


def test_the_description_comes_from_the_config(table: Table) -> None:
    _, out, results = table
    text = results["federation"]["description"]
    assert "no defense" in text and "2 rounds" in text and "fedavg" in text
    md = out.with_name("table.md").read_text()
    assert text in md
    spec = at.load_spec(tiny_spec(out.parent))
    defended = at.TableSpec(base=spec.base, overrides=(*spec.overrides,
                                                        "defense.name=sparsification",
                                                        "defense.params.prune_percent=90"),
                            rounds=spec.rounds, clients=spec.clients, rows=spec.rows)
    text = at.describe_federation(at.base_config(defended), defended)
    assert "defense `sparsification` (prune_percent=90)" in text and "no defense" not in text


def test_rows_carry_every_metric_and_timing(table: Table) -> None:
    _, out, results = table
    rows = results["rows"]
    assert [(r["round"], r["client"], r["batch_size"], r["images"]) for r in rows] == \
        [(1, 0, 1, 1), (1, 1, 4, 4), (2, 0, 1, 1), (2, 1, 4, 4)]
    for r in rows:
        assert r["label"] == "ig" and r["params"] == {"iterations": 3, "progress": False}
        for key in (*at.METRIC_KEYS, *at.TIMING_KEYS):
            assert math.isfinite(r[key]), key
        assert r["iterations"] == 3
        assert r["seconds_per_iteration"] == pytest.approx(r["seconds"] / 3)
        assert 0 <= r["label_accuracy"] <= 1 and r["num_matched"] == r["images"]
    md = out.with_name("table.md").read_text()
    assert sum(line.startswith("| ig |") for line in md.splitlines()) == 4
    assert "Replay check" in md


def test_unregistered_attack_row_is_skipped_with_a_message(table: Table) -> None:
    _, out, results = table
    why = results["runs"][-1]["skipped"]["not-yet"]
    assert "'no_such_attack' is not registered" in why and "inverting_gradients" in why
    assert all(r["label"] != "not-yet" for r in results["rows"])
    assert "not-yet: attack 'no_such_attack' is not registered" in \
        out.with_name("table.md").read_text()


def test_merge_keeps_earlier_rows_and_replaces_rerun_labels(table: Table) -> None:
    _, _, results = table
    settings = results["base_config"]
    new = [{"label": "other", "round": 1, "client": 0}]
    merged = at.merge_results(results, settings=settings, spec_path="s", federation={},
                              invocation={"labels": ["other"]}, new_rows=new,
                              order=["other", "ig"])
    assert [r["label"] for r in merged["rows"]] == ["other"] + ["ig"] * 4
    assert merged["rows"][0]["run"] == len(results["runs"])
    rerun = at.merge_results(merged, settings=settings, spec_path="s", federation={},
                             invocation={"labels": ["ig"]},
                             new_rows=[{"label": "ig", "round": 2, "client": 1}],
                             order=["other", "ig"])
    assert [(r["label"], r["round"]) for r in rerun["rows"]] == [("other", 1), ("ig", 2)]
    # Another federation is refused, naming the setting; a setting the schema gained since,
    # at its default, is not a conflict.
    other = {**settings, "train.lr": 0.1}
    with pytest.raises(ConfigError, match="measured with train.lr=0.05, this base config has"):
        at.merge_results(results, settings=other, spec_path="s", federation={},
                         invocation={"labels": []}, new_rows=[], order=[])
    older = {k: v for k, v in settings.items() if not k.startswith("strategy.flower_dp.")}
    assert at.conflicting_settings(older, settings) == []
    dp_on = {**settings, "strategy.flower_dp.mode": "local_dp"}
    assert at.conflicting_settings(older, dp_on) == ["strategy.flower_dp.mode"]


def test_spec_errors_name_the_key(tmp_path: Path) -> None:
    spec = at.load_spec(tiny_spec(tmp_path))
    with pytest.raises(ConfigError, match="--only: unknown row 'gias'"):
        spec.select(["gias"])
    with pytest.raises(ConfigError, match=r"rows\[0\].params: expected a mapping"):
        at.parse_spec({"base": "b.yaml", "rounds": [1], "clients": [0],
                       "rows": [{"label": "a", "attack": "dlg", "params": 3}]})
    with pytest.raises(ConfigError, match="^round: unknown key"):
        at.parse_spec({"base": "b.yaml", "round": [1]})
    with pytest.raises(ConfigError, match=r"^ig: attack.params.iterations: expected an integer "
                                          r">= 1, got 0"):
        at.runnable_rows(at.base_config(spec),
                         [at.TableRow("ig", "inverting_gradients", {"iterations": 0})])
    late = at.TableSpec(base=spec.base, overrides=spec.overrides, rounds=(3,), clients=(0,),
                        rows=spec.rows)
    with pytest.raises(ConfigError, match=r"rounds: 3 is after .*train.rounds = 2"):
        at.base_config(late)


def test_the_shipped_spec_is_the_default_federation_with_every_attack() -> None:
    spec = at.load_spec(at.DEFAULT_SPEC)
    config = at.base_config(spec)
    assert spec.rounds == (1, config.train.rounds) and spec.clients == (0, 1)
    assert config.partition.sizes == (1, 4, 32, 128)
    assert config.partition.batch_sizes == (1, 4, 8, 16)
    assert config.defense.name == "none"
    assert {r.attack for r in spec.rows} >= {"inverting_gradients", "dlg", "idlg",
                                             "gradinversion", "ggl", "gias"}
    at.runnable_rows(config, spec.rows)  # registered rows are checked whole
