"""The sweep runner: defenses x strengths x attacks x seeds (x any config key), resumable.

A sweep spec (YAML, e.g. ``experiments/configs/sweeps/cpu.yaml``)::

    name: cpu
    base: default.yaml                 # the experiment every cell starts from
    overrides: [train.rounds=4]        # applied to every cell
    seeds: [0, 1, 2]
    rounds: [1, -1]                    # attacked rounds (-1 = the last)
    clients: [0, 1]                    # attacked clients
    defenses:
      - {label: fedavg, name: none}
      - {label: dp, name: dp, strength: noise_multiplier, values: [0.01, 0.1], params: {clip_norm: 1.0}}
    attacks:
      - {label: ig, name: inverting_gradients}
      - {label: gradinversion, name: gradinversion}
      - {label: gradinversion-adaptive, name: gradinversion, adaptive: true}
    grid: {train.lr: [0.05]}           # other config keys, every combination

Cells. A *federation cell* is one defense at one strength, one grid point and one seed: its
federation is replayed once, in-process, by the code a run uses
(:func:`fl_shadow.apps.inprocess.run_in_process`) with an honest server, and a tap keeps the
attacked rounds' global models and the attacked clients' updates (saved in the cell's folder).
Every attack of the spec then runs on those updates through the curious server's own hook
(:meth:`fl_shadow.apps.federation.Federation.attack_hook`) and is scored outside the attack
(:meth:`~fl_shadow.apps.federation.Federation.scorer`). An adaptive attack runs only against a
defense that declares an attacker model. With ``--engine flwr`` each (cell, attack) is a real
``fl-shadow run`` instead.

Records (plain JSON, :mod:`fl_shadow.verdict` reads them) land in
``<out>/cells/<cell>/federation.json`` and ``attack-<label>.json``, each written atomically, and
a cell is skipped when its records exist: a killed sweep resumes where it stopped. Cells run in
``--jobs`` worker processes of ``FL_SHADOW_THREADS`` torch threads each (default 1;
``OMP_WAIT_POLICY=PASSIVE``: busy-waiting OpenMP threads of two processes on two cores slow
both 30-75x; :mod:`fl_shadow.threads`), with a progress line per cell.
Per-image latent fits of the generative defenses are memoized in ``<out>/latent-cache``
(:mod:`fl_shadow.generative.inversion`: bit-for-bit the same fits), so the strengths of the
shadow or latent-minimax defense share one fit per seed.
Everything is checked before the first cell starts: every cell's config whole
(:func:`~fl_shadow.apps.experiment.check_experiment`), the generator pretrained when a cell
needs it.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import hashlib
import itertools
import json
import logging
import multiprocessing
import os
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
from pydantic import Field

from fl_shadow.apps.experiment import Components, check_experiment, resolve_components
from fl_shadow.apps.federation import Federation
from fl_shadow.apps.inprocess import run_in_process
from fl_shadow.config import (
    Bool,
    ExperimentConfig,
    Int,
    IntList,
    Params,
    Str,
    apply_overrides,
    compose_config,
    load_config_dict,
    parse_settings,
    read_yaml,
    resolve_config_path,
    settings,
)
from fl_shadow.diagnostics import (
    WHERE_ATTACK,
    capture_warnings,
    label_recovery_warning,
    training_warnings,
)
from fl_shadow.errors import ConfigError
from fl_shadow.generative.inversion import LATENT_CACHE_ENV
from fl_shadow.generative.public import pretrained_generator
from fl_shadow.report import read_jsonl, read_warnings
from fl_shadow.scoring import Scorer
from fl_shadow.threads import configured_threads, passive_wait, set_torch_threads
from fl_shadow.verdict import CellKey, strength_text
from strategies import ReceivedUpdate, Skipped

log = logging.getLogger(__name__)


# ---------------------------------------------------------------------------------------------
# The spec
# ---------------------------------------------------------------------------------------------
@settings
class DefenseAxis:
    """One defense row of the sweep.

    Attributes:
        label: its name in the tables (``fedavg``, ``dp``, ...).
        name: the registered defense (``defense.name``).
        strength: the ``defense.params`` key whose ``values`` the sweep varies; None for a
            fixed defense (one strength).
        values: the strengths, weakest first (numbers, or any value the key takes, e.g.
            CENSOR's ``rounds`` lists).
        params: fixed ``defense.params`` of every strength.
    """

    label: Str
    name: Str
    strength: Str | None = None
    values: tuple[Any, ...] = ()
    params: Params = field(default_factory=dict)

    def __post_init__(self) -> None:
        if (self.strength is None) != (not self.values):
            raise ConfigError("values: expected strength values exactly when a strength key "
                              f"is given (strength {self.strength!r}, values "
                              f"{list(self.values)!r})")
        if self.strength is not None and self.strength in self.params:
            raise ConfigError(f"params.{self.strength}: is the strength the sweep varies; "
                              "give it in values only")

    def strengths(self) -> list[Any]:
        return list(self.values) if self.strength is not None else [None]


@settings
class AttackAxis:
    """One attack of the sweep.

    Attributes:
        label: its name in the tables.
        name: the registered attack (``attack.name``).
        params: its ``attack.params``.
        adaptive: the attacker models the defense (``attack.adaptive``); cells whose defense
            has no attacker model skip it.
        rounds: the attacked rounds this attack runs on (a subset of the spec's ``rounds``;
            default: all of them), e.g. a cheap attack on every round, the costly ones on the
            first.
        combine_rounds: the cross-round attacker (``attack.combine_rounds``): each round's
            reconstruction of a client combined with the earlier rounds' it attacked.
    """

    label: Str
    name: Str
    params: Params = field(default_factory=dict)
    adaptive: Bool = False
    rounds: IntList | None = None
    combine_rounds: Bool = False


@settings
class SweepSpec:
    """A sweep (see the module docstring).

    Attributes:
        name: the sweep's name (its results folder).
        base: the experiment config every cell starts from (a file, relative to the spec, or a
            shipped config's name).
        overrides: dotted ``key=value`` items applied to every cell.
        seeds: experiment seeds (at least 1; a verdict needs 3).
        rounds: attacked rounds (``-1`` = the last).
        clients: attacked clients.
        defenses, attacks: the rows and the attacks.
        grid: other config keys to vary: ``{key: [values]}``, every combination.
        reference: the defense label differences are taken against (FedAvg).
        engine: ``inprocess`` (the default) or ``flwr`` (a real ``fl-shadow run`` per cell and
            attack).
        jobs: worker processes (the command line's ``--jobs`` wins).
    """

    name: Str
    defenses: tuple[DefenseAxis, ...]
    attacks: tuple[AttackAxis, ...]
    base: Str = "default.yaml"
    overrides: tuple[Str, ...] = ()
    seeds: IntList = (0, 1, 2)
    rounds: IntList = (1,)
    clients: IntList = (0, 1)
    grid: dict[Str, tuple[Any, ...]] = field(default_factory=dict)
    reference: Str = "fedavg"
    engine: Literal["inprocess", "flwr"] = "inprocess"
    jobs: Annotated[Int, Field(ge=1, le=64)] = 1

    def __post_init__(self) -> None:
        for axis, what in ((self.defenses, "defenses"), (self.attacks, "attacks")):
            labels = [a.label for a in axis]
            if not labels:
                raise ConfigError(f"{what}: expected at least one entry")
            dup = sorted({x for x in labels if labels.count(x) > 1})
            if dup:
                raise ConfigError(f"{what}: label {dup[0]!r} is used twice")
        if self.reference not in [d.label for d in self.defenses]:
            raise ConfigError(f"reference: expected the label of a defense row, got "
                              f"{self.reference!r}")
        if not self.seeds:
            raise ConfigError("seeds: expected at least one seed")
        for key, values in self.grid.items():
            if not values:
                raise ConfigError(f"grid.{key}: expected at least one value")
        for attack in self.attacks:
            extra = [r for r in attack.rounds or () if r not in self.rounds]
            if extra:
                raise ConfigError(f"attacks[{attack.label}].rounds: expected rounds of the "
                                  f"spec's rounds {list(self.rounds)}, got {extra[0]}")


@dataclass(frozen=True)
class FederationCell:
    """One federation of the sweep and the attacks run on its updates.

    Attributes:
        key: defense, strength, grid point, seed.
        config: its experiment (attack ``none``: the replay is honest).
        attacks: the attacks to run on it.
        skipped: attacks the spec lists but this cell skips, with the reason.
    """

    key: CellKey
    config: ExperimentConfig
    attacks: tuple[AttackAxis, ...]
    skipped: tuple[tuple[str, str], ...] = ()

    @property
    def name(self) -> str:
        return cell_name(self.key)

    def attack_config(self, attack: AttackAxis) -> ExperimentConfig:
        """The cell's experiment with ``attack`` as the curious server's."""
        return dataclasses.replace(self.config, attack=dataclasses.replace(
            self.config.attack, name=attack.name, params=dict(attack.params),
            adaptive=attack.adaptive, combine_rounds=attack.combine_rounds))


def cell_name(key: CellKey) -> str:
    """A folder name: readable, and unique through a short hash of the whole key."""
    strength = "" if key.strength is None else f"-{strength_text(key.strength)}"
    digest = hashlib.sha256(json.dumps(key.to_json(), sort_keys=True).encode()).hexdigest()[:8]
    return f"{key.defense}{strength}-seed{key.seed}-{digest}"


def load_sweep(path: str | Path) -> tuple[SweepSpec, Path]:
    """Read a sweep spec (strict YAML); returns it and the folder its relative paths use.

    Raises:
        ConfigError: one line naming the key.
    """
    file = resolve_config_path(path)
    return parse_settings(SweepSpec, read_yaml(file), ""), file.parent


def plan(spec: SweepSpec, spec_dir: Path, *, check_data: bool = True
         ) -> list[FederationCell]:
    """Every federation cell of the spec, each config checked whole.

    Raises:
        ConfigError: naming the defense row or grid key, then the config key.
    """
    base_file = resolve_config_path(spec.base, relative_to=spec_dir)
    base = apply_overrides(compose_config(base_file), spec.overrides)
    grid_keys = sorted(spec.grid)
    grid_points = [tuple(zip(grid_keys, combo)) for combo in
                   itertools.product(*(spec.grid[k] for k in grid_keys))] or [()]
    cells: list[FederationCell] = []
    checked_data: set[str] = set()
    for defense in spec.defenses:
        for strength in defense.strengths():
            for point in grid_points:
                for seed in spec.seeds:
                    key = CellKey(defense.label, strength, point, int(seed))
                    where = f"defenses[{defense.label}]" + (
                        f" at {defense.strength}={strength_text(strength)}"
                        if strength is not None else "")
                    config, components = _cell_config(spec, base, defense, strength, point,
                                                      seed, where, checked_data, check_data)
                    attacks, skipped = [], []
                    for attack in spec.attacks:
                        if attack.adaptive and components.defense.attacker_model is None:
                            skipped.append((attack.label, f"defense {defense.name} has no "
                                            "attacker model (not modelled adaptively)"))
                        else:
                            attacks.append(attack)
                    cells.append(FederationCell(key, config, tuple(attacks), tuple(skipped)))
    _check_attacks(spec, cells[0])
    return cells


def _cell_config(spec: SweepSpec, base: Mapping[str, Any], defense: DefenseAxis,
                 strength: Any, point: tuple[tuple[str, Any], ...], seed: int,
                 where: str, checked_data: set[str], check_data: bool
                 ) -> tuple[ExperimentConfig, Components]:
    params = dict(defense.params)
    if defense.strength is not None:
        params[defense.strength] = strength
    raw = apply_overrides(base, [f"{k}={json.dumps(v)}" for k, v in point])
    raw["seed"] = int(seed)
    raw["defense"] = {"name": defense.name, "params": params}
    raw["attack"] = {**raw.get("attack", {}), "name": "none", "params": {},
                     "rounds": list(spec.rounds), "clients": list(spec.clients)}
    try:
        config = load_config_dict(raw)
        data_key = json.dumps([config.to_dict()["data"], config.seed])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # each cell's warnings reach its record instead
            components = check_experiment(config, data=check_data and
                                          data_key not in checked_data)
        checked_data.add(data_key)
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc}") from None
    return config, components


def _check_attacks(spec: SweepSpec, cell: FederationCell) -> None:
    """Every attack's params and needs, against the first cell (the threat model is shared)."""
    for attack in spec.attacks:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                check_experiment(cell.attack_config(attack), data=False)
        except ConfigError as exc:
            raise ConfigError(f"attacks[{attack.label}]: {exc}") from None


# ---------------------------------------------------------------------------------------------
# One cell
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Kept:
    """What the tap kept of the replay: per (round, client) the global model and the update."""

    globals: dict[int, list[np.ndarray]]
    updates: dict[tuple[int, int], ReceivedUpdate]


def replay(cell: FederationCell, run_dir: Path) -> tuple[Kept, dict[str, Any]]:
    """Replay the cell's federation (honest server); returns what the tap kept and the
    federation record."""
    federation = Federation(cell.config)
    rounds = {r if r != -1 else cell.config.train.rounds for r in cell.config.attack.rounds}
    clients = set(cell.config.attack.clients)
    kept = Kept({}, {})

    def tap(server_round: int, global_arrays: list[np.ndarray], update: ReceivedUpdate) -> None:
        if server_round in rounds and update.client_id in clients:
            kept.globals.setdefault(server_round, global_arrays)
            kept.updates[(server_round, update.client_id)] = update

    start = time.perf_counter()
    with capture_warnings() as caught:  # the checks' (small splits, ...) and the replay's
        check_experiment(cell.config)
        run = run_in_process(federation, run_dir, tap=tap)
    utility = read_jsonl(run_dir / "utility.jsonl")
    fits = read_jsonl(run_dir / "fit.jsonl")
    record = {"key": cell.key.to_json(), "config": cell.config.to_dict(), "utility": utility,
              "fit": fits, "seconds": time.perf_counter() - start, "state": run.state,
              "skipped_attacks": [list(s) for s in cell.skipped],
              "warnings": sorted(set(caught) | set(training_warnings(utility, fits)))}
    return kept, record


_SCORERS: dict[str, Scorer] = {}


def scorer_for(federation: Federation) -> Scorer:
    """The scorer of a dataset and seed, built once per process (its reference classifier
    takes seconds to train)."""
    key = json.dumps([federation.config.to_dict()["data"], federation.config.seed])
    if key not in _SCORERS:
        _SCORERS[key] = federation.scorer()
    return _SCORERS[key]


def attack_cell(cell: FederationCell, attack: AttackAxis, kept: Kept) -> tuple[
        dict[str, Any], dict[str, np.ndarray]]:
    """Run ``attack`` on the kept updates; returns its record and the reconstructions."""
    federation = Federation(cell.attack_config(attack))
    hook = federation.attack_hook()
    if hook is None:
        raise ConfigError(f"attacks[{attack.label}]: {attack.name} reconstructs nothing")
    scorer = scorer_for(federation)
    updates, pictures, warned = [], {}, []
    last = cell.config.train.rounds
    wanted = None if attack.rounds is None else {r if r != -1 else last for r in attack.rounds}
    start = time.perf_counter()
    for (server_round, client), update in sorted(kept.updates.items()):
        if wanted is not None and server_round not in wanted:
            continue
        global_arrays = kept.globals[server_round]
        entry: dict[str, Any] = {"round": server_round, "client": client,
                                 "num_images": update.num_examples,
                                 "batch_size": federation.plan_for(client).batch_size}
        outcome = hook.run(server_round, global_arrays, update)
        if isinstance(outcome, Skipped):
            updates.append({**entry, "skipped": outcome.reason})
            continue
        scores = scorer.score(outcome.reconstruction, outcome.audit, global_arrays)
        if scores is None:
            raise RuntimeError("the replayed client sent no audit record")
        rec = outcome.reconstruction
        entry.update(num_images=int(scores.matched_truth.shape[0]), pairs=scores.per_pair,
                     summary=scores.summary, seconds=rec.seconds, iterations=rec.iterations)
        updates.append(entry)
        tag = f"r{server_round}c{client}"
        pictures[f"{tag}_truth"] = scores.matched_truth.numpy()
        pictures[f"{tag}_recon"] = scores.matched_reconstructions.numpy()
        wrong = label_recovery_warning(attack.label, scores.per_pair["label_correct"],
                                       server_round=server_round, client=client)
        if wrong is not None:
            warned.append(wrong)
    record = {"key": cell.key.to_json(), "attack": attack.label, "name": attack.name,
              "params": dict(attack.params), "adaptive": attack.adaptive,
              "combine_rounds": attack.combine_rounds, "updates": updates,
              "seconds": time.perf_counter() - start, "warnings": warned}
    return record, pictures


def run_cell(cell: FederationCell, out_dir: Path) -> dict[str, Any]:
    """Replay and attack one cell (skipping what its folder already holds); returns a short
    summary for the progress line."""
    folder = out_dir / "cells" / cell.name
    folder.mkdir(parents=True, exist_ok=True)
    todo = [a for a in cell.attacks if not (folder / f"attack-{a.label}.json").exists()]
    start = time.perf_counter()
    kept = load_kept(folder) if (folder / "federation.json").exists() else None
    if kept is None:
        with tempfile.TemporaryDirectory(prefix="sweep-run-") as tmp:
            kept, record = replay(cell, Path(tmp) / "run")
        save_kept(folder, kept)
        write_json(folder / "federation.json", record)
    for attack in todo:
        record, pictures = attack_cell(cell, attack, kept)
        np.savez_compressed(folder / f"recon-{attack.label}.npz", **pictures)
        write_json(folder / f"attack-{attack.label}.json", record)
    return {"cell": cell.name, "attacks": len(todo), "seconds": time.perf_counter() - start}


def save_kept(folder: Path, kept: Kept) -> None:
    """The kept updates, so that attacks added later (or a resumed sweep) need no replay."""
    arrays: dict[str, np.ndarray] = {}
    meta: dict[str, Any] = {"globals": {}, "updates": []}
    for server_round, global_arrays in kept.globals.items():
        meta["globals"][str(server_round)] = len(global_arrays)
        arrays.update({f"g{server_round}_{i}": a for i, a in enumerate(global_arrays)})
    for (server_round, client), update in kept.updates.items():
        meta["updates"].append({"round": server_round, "client": client,
                                "num_examples": update.num_examples,
                                "metrics": dict(update.metrics), "count": len(update.arrays)})
        arrays.update({f"u{server_round}_{client}_{i}": a
                       for i, a in enumerate(update.arrays)})
    arrays["meta"] = np.array(json.dumps(meta))
    tmp = folder / "updates.npz.tmp"
    with tmp.open("wb") as f:
        np.savez(f, **arrays)
    tmp.replace(folder / "updates.npz")


def load_kept(folder: Path) -> Kept | None:
    path = folder / "updates.npz"
    if not path.is_file():
        return None
    with np.load(path, allow_pickle=False) as data:
        meta = json.loads(str(data["meta"]))
        globals_ = {int(r): [data[f"g{r}_{i}"] for i in range(n)]
                    for r, n in meta["globals"].items()}
        updates = {(u["round"], u["client"]): ReceivedUpdate(
            u["client"], [data[f"u{u['round']}_{u['client']}_{i}"] for i in range(u["count"])],
            u["num_examples"], u["metrics"]) for u in meta["updates"]}
    return Kept(globals_, updates)


def write_json(path: Path, record: Mapping[str, Any]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(record, default=_json_default) + "\n")
    tmp.replace(path)


def _json_default(value: Any) -> Any:
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, (tuple, set)):
        return list(value)
    raise TypeError(f"not JSON serializable: {type(value).__name__}")


# ---------------------------------------------------------------------------------------------
# With `fl-shadow run` (engine flwr)
# ---------------------------------------------------------------------------------------------
def run_cell_with_flwr(cell: FederationCell, out_dir: Path) -> dict[str, Any]:
    """Each attack of the cell as a real ``fl-shadow run`` (the federation once per attack)."""
    folder = out_dir / "cells" / cell.name
    folder.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    todo = [a for a in cell.attacks if not (folder / f"attack-{a.label}.json").exists()]
    for attack in todo or ([] if (folder / "federation.json").exists() else [None]):
        config = cell.config if attack is None else cell.attack_config(attack)
        label = attack.label if attack is not None else "none"
        run_dir = folder / f"run-{label}"
        config_file = folder / f"config-{label}.yaml"
        config_file.write_text(config.to_yaml())
        proc = subprocess.run([sys.executable, "-m", "fl_shadow.apps.cli", "run",
                               str(config_file), "--run-dir", str(run_dir)],
                              capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or [""]
            raise RuntimeError(f"{cell.name} {label}: fl-shadow run failed: {tail[0]}")
        # The run's own warnings: its checks at load, its training, its attack's labels.
        run_warnings = read_warnings(run_dir)
        if not (folder / "federation.json").exists():
            utility, fits = read_jsonl(run_dir / "utility.jsonl"), read_jsonl(run_dir /
                                                                             "fit.jsonl")
            write_json(folder / "federation.json", {
                "key": cell.key.to_json(), "config": cell.config.to_dict(), "utility": utility,
                "fit": fits, "seconds": time.perf_counter() - start, "state": "completed",
                "skipped_attacks": [list(s) for s in cell.skipped],
                "warnings": [w.message for w in run_warnings if w.where != WHERE_ATTACK]})
        if attack is not None:
            updates = []
            for row in read_jsonl(run_dir / "privacy.jsonl"):
                entry = {"round": row["round"], "client": row["client"],
                         "batch_size": Federation(config).plan_for(row["client"]).batch_size}
                if "skipped" in row:
                    updates.append({**entry, "num_images": 0, "skipped": row["skipped"]})
                else:
                    updates.append({**entry, "num_images": row["num_images"],
                                    "pairs": row.get("pairs", {}), "seconds":
                                    row["attack_seconds"], "iterations": row["iterations"]})
            write_json(folder / f"attack-{attack.label}.json", {
                "key": cell.key.to_json(), "attack": attack.label, "name": attack.name,
                "params": dict(attack.params), "adaptive": attack.adaptive,
                "combine_rounds": attack.combine_rounds, "updates": updates,
                "warnings": [w.message for w in run_warnings if w.where == WHERE_ATTACK]})
    return {"cell": cell.name, "attacks": len(todo), "seconds": time.perf_counter() - start}


# ---------------------------------------------------------------------------------------------
# The sweep
# ---------------------------------------------------------------------------------------------
def is_done(cell: FederationCell, out_dir: Path) -> bool:
    """The cell's federation and every one of its attacks have a record."""
    folder = out_dir / "cells" / cell.name
    return (folder / "federation.json").exists() and all(
        (folder / f"attack-{a.label}.json").exists() for a in cell.attacks)


def check_records(cells: Sequence[FederationCell], out_dir: Path) -> None:
    """Refuse to resume into records another sweep wrote.

    A cell's folder name hashes its key (defense, strength, seed, axes), not the base config
    or the spec's overrides, and an attack's record is found by its label: editing the spec and
    rerunning into the same folder would otherwise reuse the old federations and attacks as if
    they were the new ones. Each existing record is compared with what the cell would run: the
    federation's config (keys a record predates are not compared; ``output_dir`` never
    matters) and each attack's name, params, ``adaptive`` and ``combine_rounds``.

    Raises:
        ConfigError: naming the cell's folder and the first difference.
    """
    for cell in cells:
        folder = out_dir / "cells" / cell.name
        federation = folder / "federation.json"
        if federation.is_file():
            stored = json.loads(federation.read_text()).get("config", {})
            current = {k: v for k, v in cell.config.to_dict().items() if k != "output_dir"}
            difference = _first_difference(stored, current)
            if difference is not None:
                raise ConfigError(f"{federation}: recorded with another config ({difference}); "
                                  "use a new --out folder or delete this cell's folder")
        for attack in cell.attacks:
            path = folder / f"attack-{attack.label}.json"
            if not path.is_file():
                continue
            stored = json.loads(path.read_text())
            current = {"name": attack.name, "params": dict(attack.params),
                       "adaptive": attack.adaptive, "combine_rounds": attack.combine_rounds}
            difference = _first_difference(stored, current)
            if difference is not None:
                raise ConfigError(f"{path}: recorded with another attack ({difference}); use a "
                                  "new --out folder or delete this record")


def _first_difference(stored: Any, current: Any, where: str = "") -> str | None:
    """``key: <stored> there, <current> now`` for the first differing dotted key; keys only
    ``current`` has are skipped (records written before the key existed)."""
    if isinstance(stored, Mapping) and isinstance(current, Mapping):
        for key in current:
            if key in stored:
                found = _first_difference(stored[key], current[key],
                                          f"{where}.{key}" if where else str(key))
                if found is not None:
                    return found
        return None
    # JSON reads tuples back as lists; plain values compare as they are.
    if json.loads(json.dumps(current, default=_json_default)) != stored:
        return f"{where or 'value'}: {stored!r} there, {current!r} now"
    return None


def _worker_init() -> None:
    set_torch_threads()
    logging.basicConfig(level=logging.WARNING)
    for noisy in ("flwr", "fl_shadow", "attacks", "strategies", "clients"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def _run_one(cell: FederationCell, out_dir: Path, engine: str) -> dict[str, Any]:
    runner = run_cell_with_flwr if engine == "flwr" else run_cell
    return runner(cell, out_dir)


def run_sweep(spec: SweepSpec, cells: Sequence[FederationCell], out_dir: Path, *,
              jobs: int = 1, engine: str | None = None) -> Iterator[dict[str, Any]]:
    """Run every cell not done yet; yields a progress entry per finished cell.

    Args:
        spec: the sweep.
        cells: its :func:`plan`.
        out_dir: the sweep's folder (``cells/`` and the records land there).
        jobs: worker processes (1: in this process).
        engine: ``inprocess`` or ``flwr`` (default: the spec's).
    """
    engine = engine or spec.engine
    check_records(cells, out_dir)  # before anything is written
    out_dir.mkdir(parents=True, exist_ok=True)
    previous = (json.loads((out_dir / "sweep.json").read_text())
                if (out_dir / "sweep.json").is_file() else {})
    sittings = [*previous.get("sittings", []),
                {"started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "engine": engine,
                 "jobs": jobs, "torch_threads_per_worker": configured_threads()}]
    write_json(out_dir / "sweep.json", {"spec": dataclasses.asdict(spec), "sittings": sittings,
                                        "cells": [
        {"name": c.name, "key": c.key.to_json(), "attacks": [a.label for a in c.attacks],
         "skipped": [list(s) for s in c.skipped]} for c in cells]})
    todo = [c for c in cells if not is_done(c, out_dir)]
    if engine == "inprocess" and any(_needs_generator(c) for c in todo):
        pretrained_generator(todo[0].config)  # once, before the workers need it
    done, total, start = len(cells) - len(todo), len(cells), time.perf_counter()
    if not todo:
        return
    passive_wait()  # the workers inherit it (import fl_shadow set it already)
    # Latent fits (shadow, latent minimax) do not depend on the defense's strength: fit once.
    os.environ.setdefault(LATENT_CACHE_ENV, str(out_dir / "latent-cache"))
    if jobs <= 1:
        set_torch_threads()
        results: Iterator[dict[str, Any]] = (_run_one(c, out_dir, engine) for c in todo)
    else:
        pool = concurrent.futures.ProcessPoolExecutor(
            max_workers=jobs, mp_context=multiprocessing.get_context("spawn"),
            initializer=_worker_init)
        futures = [pool.submit(_run_one, c, out_dir, engine) for c in todo]
        results = (f.result() for f in concurrent.futures.as_completed(futures))
    try:
        for finished, result in enumerate(results, start=1):
            sittings[-1].update(finished=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                                wall_seconds=round(time.perf_counter() - start, 1),
                                cells_run=finished)
            _update_sittings(out_dir, sittings)
            elapsed = time.perf_counter() - start
            eta = elapsed / finished * (len(todo) - finished)
            result.update(done=done + finished, total=total, elapsed=elapsed, eta=eta)
            log.info("[%d/%d] %s: %d attack(s), %.0f s (elapsed %.0f min, about %.0f min "
                     "left)", done + finished, total, result["cell"], result["attacks"],
                     result["seconds"], elapsed / 60, eta / 60)
            yield result
    finally:
        if jobs > 1:
            pool.shutdown(wait=True, cancel_futures=True)


def _update_sittings(out_dir: Path, sittings: list[dict[str, Any]]) -> None:
    record = json.loads((out_dir / "sweep.json").read_text())
    record["sittings"] = sittings
    write_json(out_dir / "sweep.json", record)


def _needs_generator(cell: FederationCell) -> bool:
    if resolve_components(cell.config).needs_generator:
        return True
    return any(resolve_components(cell.attack_config(a)).needs_generator for a in cell.attacks)


def read_records(out_dir: Path) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The federation and attack records of a sweep's folder (cells in name order)."""
    federations, attacks = [], []
    for folder in sorted((out_dir / "cells").glob("*")):
        if (folder / "federation.json").is_file():
            federations.append(json.loads((folder / "federation.json").read_text()))
        for path in sorted(folder.glob("attack-*.json")):
            attacks.append(json.loads(path.read_text()))
    return federations, attacks


__all__ = ["AttackAxis", "DefenseAxis", "FederationCell", "Kept", "SweepSpec", "attack_cell",
           "cell_name", "check_records", "is_done", "load_sweep", "plan", "read_records", "replay",
           "run_cell", "run_sweep"]
