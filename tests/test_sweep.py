"""The sweep runner on a tiny 2 x 2 grid with 2 seeds: plan, run, resume after a kill, and the
verdict tables equal to what the records say."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import fl_shadow.apps.sweep as sweeps
from fl_shadow import verdict
from fl_shadow.errors import ConfigError
from fl_shadow.metrics import mean_ci

TINY = ["data.image_size=8", "model.width=4", "train.rounds=2", "train.device=cpu",
        "partition.sizes=[1, 4, 8, 16]", "partition.batch_sizes=[1, 4, 8, 8]"]
IG = {"iterations": 3, "progress": False}


def write_spec(tmp: Path, **changes: object) -> Path:
    spec = {"name": "tiny", "base": "default.yaml", "overrides": TINY, "seeds": [0, 1],
            "rounds": [1, -1], "clients": [0, 1],
            "defenses": [{"label": "fedavg", "name": "none"},
                         {"label": "gc", "name": "clipping", "strength": "max_norm",
                          "values": [0.5]}],
            "attacks": [{"label": "ig", "name": "inverting_gradients", "params": dict(IG)},
                        {"label": "ig-adaptive", "name": "inverting_gradients",
                         "adaptive": True, "params": dict(IG)}]}
    spec.update(changes)
    path = tmp / "spec.yaml"
    path.write_text(json.dumps(spec))  # JSON is YAML, and has no aliases
    return path


@pytest.fixture(scope="module")
def swept(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[sweeps.FederationCell]]:
    tmp = tmp_path_factory.mktemp("sweep")
    spec, spec_dir = sweeps.load_sweep(write_spec(tmp))
    cells = sweeps.plan(spec, spec_dir)
    out = tmp / "out"
    progress = list(sweeps.run_sweep(spec, cells, out))
    assert [p["done"] for p in progress] == [1, 2, 3, 4]
    return out, cells


def test_the_plan_is_the_grid(tmp_path: Path) -> None:
    spec, spec_dir = sweeps.load_sweep(write_spec(tmp_path, defenses=[
        {"label": "fedavg", "name": "none"},
        {"label": "fedkl", "name": "fedkl"},  # no attacker model: the adaptive attack skips it
        {"label": "dp", "name": "dp", "strength": "noise_multiplier", "values": [0.1, 1.0],
         "params": {"clip_norm": 2.0}}]))
    cells = sweeps.plan(spec, spec_dir)
    assert [(c.key.defense, c.key.strength, c.key.seed) for c in cells] == [
        ("fedavg", None, 0), ("fedavg", None, 1), ("fedkl", None, 0), ("fedkl", None, 1),
        ("dp", 0.1, 0), ("dp", 0.1, 1), ("dp", 1.0, 0), ("dp", 1.0, 1)]
    assert cells[4].config.defense.params == {"clip_norm": 2.0, "noise_multiplier": 0.1}
    assert cells[4].config.seed == 0 and cells[4].config.attack.name == "none"
    assert [a.label for a in cells[2].attacks] == ["ig"]
    assert cells[2].skipped[0][0] == "ig-adaptive"
    assert len({c.name for c in cells}) == len(cells)


@pytest.mark.parametrize(("changes", "message"), [
    ({"defenses": [{"label": "fedavg", "name": "none"},
                   {"label": "dp", "name": "dp", "strength": "noise_multiplier",
                    "values": [-1]}]},
     r"^defenses\[dp\] at noise_multiplier=-1: defense\.params\.noise_multiplier: expected a "
     r"number >= 0, got -1"),
    ({"attacks": [{"label": "ig", "name": "inverting_gradients", "params": {"iters": 3}}]},
     r"^attacks\[ig\]: attack\.params\.iters: unknown key"),
    ({"reference": "none"}, r"^reference: expected the label of a defense row"),
    ({"defenses": [{"label": "a", "name": "none"}, {"label": "a", "name": "dp"}],
      "reference": "a"}, r"^defenses: label 'a' is used twice"),
    ({"defenses": [{"label": "fedavg", "name": "none", "values": [1.0]}]},
     r"^defenses\[0\]\.values: expected strength values exactly when a strength key"),
    ({"seedz": [1]}, r"^seedz: unknown key"),
])
def test_spec_errors_are_one_line(tmp_path: Path, changes: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        spec, spec_dir = sweeps.load_sweep(write_spec(tmp_path, **changes))
        sweeps.plan(spec, spec_dir)


def test_every_cell_has_its_records(swept: tuple[Path, list[sweeps.FederationCell]]) -> None:
    out, cells = swept
    federations, attacks = sweeps.read_records(out)
    assert len(federations) == 4 and len(attacks) == 8
    for record in attacks:
        assert [(u["round"], u["client"]) for u in record["updates"]] == [
            (1, 0), (1, 1), (2, 0), (2, 1)]
        assert all(len(u["pairs"]["psnr"]) == u["num_images"] for u in record["updates"])
    for record in federations:
        assert [r["round"] for r in record["utility"]] == [0, 1, 2]
        assert record["state"] == "completed"
    assert json.loads((out / "sweep.json").read_text())["spec"]["name"] == "tiny"


def test_the_tables_are_the_records(swept: tuple[Path, list[sweeps.FederationCell]]) -> None:
    out, _ = swept
    federations, attacks = sweeps.read_records(out)
    rows = verdict.with_worst_case(verdict.image_rows(attacks))
    table = verdict.privacy_table(rows, ["psnr_affine"])
    # By hand: per seed the mean over the 2 rounds x (1 + 4) images, then over seeds.
    for record_attack in ("ig", "ig-adaptive"):
        per_seed = {}
        for record in attacks:
            if record["attack"] != record_attack or record["key"]["defense"] != "gc":
                continue
            values = [v for u in record["updates"] for v in u["pairs"]["psnr_affine"]]
            assert len(values) == 10
            per_seed[record["key"]["seed"]] = float(np.mean(values))
        expected = mean_ci(per_seed.values())
        got = table[(("gc", 0.5, ()), record_attack)]["psnr_affine"]
        assert got.mean == pytest.approx(expected.mean)
        assert got.half_width == pytest.approx(expected.half_width)
    worst = table[(("gc", 0.5, ()), verdict.WORST_CASE)]["psnr_affine"]
    best_single = max(table[(("gc", 0.5, ()), a)]["psnr_affine"].mean
                      for a in ("ig", "ig-adaptive"))
    assert worst.mean >= best_single - 1e-9
    utility = verdict.utility_table(federations, "fedavg")
    finals = {r["key"]["seed"]: max(r["utility"], key=lambda u: u["round"])["macro_f1"]
              for r in federations if r["key"]["defense"] == "gc"}
    assert utility[("gc", 0.5, ())]["macro_f1"].mean == pytest.approx(np.mean(list(
        finals.values())))
    assert "d_macro_f1" in utility[("gc", 0.5, ())] and "time_ratio" in utility[("gc", 0.5, ())]


def test_a_killed_sweep_resumes_where_it_stopped(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    spec, spec_dir = sweeps.load_sweep(write_spec(tmp_path, seeds=[0]))
    cells = sweeps.plan(spec, spec_dir)
    out = tmp_path / "out"
    real = sweeps.attack_cell
    calls: list[str] = []

    class Killed(Exception):
        pass

    def dying(cell, attack, kept):  # type: ignore[no-untyped-def]
        if len(calls) == 3:  # the second cell's second attack: the process dies
            raise Killed
        calls.append(f"{cell.name}/{attack.label}")
        return real(cell, attack, kept)

    monkeypatch.setattr(sweeps, "attack_cell", dying)
    with pytest.raises(Killed):
        list(sweeps.run_sweep(spec, cells, out))
    first = out / "cells" / cells[0].name
    stamps = {p.name: p.stat().st_mtime_ns for p in first.iterdir()}
    assert sweeps.is_done(cells[0], out) and not sweeps.is_done(cells[1], out)
    replays = []
    real_replay = sweeps.replay
    monkeypatch.setattr(sweeps, "attack_cell", real)
    monkeypatch.setattr(sweeps, "replay", lambda c, d: replays.append(c.name) or
                        real_replay(c, d))
    progress = list(sweeps.run_sweep(spec, cells, out))
    assert [p["cell"] for p in progress] == [cells[1].name]
    assert progress[0]["attacks"] == 1  # only the missing attack ran
    assert replays == []  # its federation's updates were kept, not replayed again
    assert {p.name: p.stat().st_mtime_ns for p in first.iterdir()} == stamps
    assert all(sweeps.is_done(c, out) for c in cells)


def test_resuming_into_another_sweeps_records_is_refused(
        swept: tuple[Path, list[sweeps.FederationCell]], tmp_path: Path) -> None:
    out, cells = swept
    sweeps.check_records(cells, out)  # the same spec: its own records
    # Cell folders hash the cell's key, not the base or the overrides: the same names, stale
    # records.
    spec, spec_dir = sweeps.load_sweep(write_spec(tmp_path,
                                                  overrides=[*TINY, "train.local_epochs=2"]))
    changed = sweeps.plan(spec, spec_dir)
    assert [c.name for c in changed] == [c.name for c in cells]
    before = (out / "sweep.json").read_text()
    with pytest.raises(ConfigError, match=rf"^{out}/cells/fedavg-seed0-\w+/federation.json: "
                                          r"recorded with another config \(train.local_epochs: "
                                          r"1 there, 2 now\); use a new --out folder"):
        list(sweeps.run_sweep(spec, changed, out))
    assert (out / "sweep.json").read_text() == before  # refused before anything was written
    spec, spec_dir = sweeps.load_sweep(write_spec(tmp_path, attacks=[
        {"label": "ig", "name": "inverting_gradients", "params": {**IG, "iterations": 4}}]))
    with pytest.raises(ConfigError, match=r"/attack-ig.json: recorded with another attack "
                                          r"\(params.iterations: 3 there, 4 now\)"):
        sweeps.check_records(sweeps.plan(spec, spec_dir), out)


def test_an_attack_may_run_on_fewer_rounds(tmp_path: Path) -> None:
    spec, spec_dir = sweeps.load_sweep(write_spec(
        tmp_path, seeds=[0], defenses=[{"label": "fedavg", "name": "none"}],
        attacks=[{"label": "ig", "name": "inverting_gradients", "params": dict(IG)},
                 {"label": "ig-first", "name": "inverting_gradients", "params": dict(IG),
                  "rounds": [1]}]))
    cells = sweeps.plan(spec, spec_dir)
    list(sweeps.run_sweep(spec, cells, tmp_path / "out"))
    _, attacks = sweeps.read_records(tmp_path / "out")
    rounds = {r["attack"]: sorted({u["round"] for u in r["updates"]}) for r in attacks}
    assert rounds == {"ig": [1, 2], "ig-first": [1]}
    with pytest.raises(ConfigError, match=r"^attacks\[ig\]\.rounds: expected rounds of the "
                                          r"spec's rounds \[1, -1\], got 3"):
        sweeps.load_sweep(write_spec(tmp_path, attacks=[
            {"label": "ig", "name": "inverting_gradients", "rounds": [3]}]))
