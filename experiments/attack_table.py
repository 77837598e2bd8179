"""The measured attack table: every attack against one federation's updates (issue 4).

For each row of ``experiments/configs/attack_table.yaml`` (an attack and its params), the
curious server's view of a real run is rebuilt and attacked: the global model of each listed
round, and the update each listed client sends back from it.

* The federation is replayed once for all rows, in-process, by the same code a run uses
  (:func:`fl_shadow.apps.inprocess.run_in_process`: the ServerApp's strategy, the ClientApp and
  Flower's own server loop, clients on one torch thread each), with an honest server; a tap
  keeps the listed rounds' global models and the listed clients' updates as they arrived. The
  central evaluation of every round is kept, and the final one can be checked against a real
  ``flwr run`` of the same config (``replay_check`` in the YAML).
* Each row's attack is then run on the kept updates through the hook the curious server uses
  (:meth:`fl_shadow.apps.federation.Federation.attack_hook` of the base config with only
  ``attack.name``/``attack.params`` replaced: the same threat model, prior and adaptive
  knowledge), and scored by the federation's scorer, outside the attack: PSNR/SSIM/LPIPS on one
  assignment, label accuracy, foreground scores, reference-classifier accuracy.

Each row records ``seconds`` (the attack's own wall time, ``Reconstruction.seconds``),
``iterations`` and ``seconds_per_iteration``. Results are merged into ``<out>.json`` (rows of
the labels run now replace their earlier rows, others are kept), written after every finished
row, and ``<out>.md`` is rewritten from the whole file. A results file measured on another
federation (any setting of the base config that shapes the updates differs) is refused.

Usage::

    python experiments/attack_table.py [SPEC] [--only LABEL ...] [--out PREFIX]
        [--set key=value ...]

Exit status 2 with one line on a bad spec, an unknown ``--only`` label or a mismatching
results file.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import json
import logging
import math
import os
import platform
import sys
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# First, before anything loads torch: OMP_WAIT_POLICY=PASSIVE (fl_shadow.threads).
from fl_shadow.threads import set_torch_threads  # isort: skip

import numpy as np
import torch
import yaml
from runs import ROOT

from attacks import ATTACKS
from fl_shadow import flower_keys as keys
from fl_shadow.apps.experiment import check_experiment, load_experiment
from fl_shadow.apps.federation import Federation
from fl_shadow.apps.inprocess import run_in_process
from fl_shadow.config import ExperimentConfig, resolve_config_path
from fl_shadow.errors import ConfigError
from fl_shadow.report import read_jsonl
from fl_shadow.training import resolve_device
from strategies import ReceivedUpdate, Skipped

log = logging.getLogger("attack_table")

DEFAULT_SPEC = ROOT / "experiments/configs/attack_table.yaml"
DEFAULT_OUT = ROOT / "experiments/results/attack_table_cpu"
SPEC_KEYS = ("base", "overrides", "rounds", "clients", "replay_check", "rows")
ROW_KEYS = ("label", "attack", "params")
# Score keys every attacked row carries (the Scorer's summary with a reference classifier and
# foreground maps), then the timing keys this script adds.
METRIC_KEYS = ("psnr", "ssim", "lpips", "label_accuracy", "mse", "fg_psnr", "fg_ssim",
               "fg_lpips", "ref_accuracy", "ref_accuracy_truth", "num_matched")
TIMING_KEYS = ("iterations", "seconds", "seconds_per_iteration")


# --------------------------------------------------------------------------------------------
# The spec (data)
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class TableRow:
    """One attack setting: ``label`` names it in the table and in ``--only``."""

    label: str
    attack: str
    params: Mapping[str, Any]


@dataclass(frozen=True)
class TableSpec:
    """The parsed ``attack_table.yaml``.

    Attributes:
        base: the experiment config of the federation (a path).
        overrides: dotted ``key=value`` items applied to ``base``.
        rounds: server rounds whose updates are attacked (1-based).
        clients: partition ids whose updates are attacked.
        rows: the attack settings, in table order.
        replay_check: ``(results JSON, row name)`` of a real run of ``base`` whose final test
            accuracy and macro-F1 the replay must reproduce; None: no check.
    """

    base: Path
    overrides: tuple[str, ...]
    rounds: tuple[int, ...]
    clients: tuple[int, ...]
    rows: tuple[TableRow, ...]
    replay_check: tuple[Path, str] | None = None

    def select(self, labels: Sequence[str] | None) -> list[TableRow]:
        """The rows called ``labels`` (all rows for None); an unknown label is a ConfigError."""
        if not labels:
            return list(self.rows)
        known = [r.label for r in self.rows]
        unknown = [lbl for lbl in labels if lbl not in known]
        if unknown:
            raise ConfigError(f"--only: unknown row {unknown[0]!r}; the spec's rows are: "
                              f"{', '.join(known)}")
        return [r for r in self.rows if r.label in labels]


def _resolve(path: str) -> Path:
    p = Path(path).expanduser()
    return p if p.is_absolute() else ROOT / p


def _int_list(raw: Any, key: str, minimum: int) -> tuple[int, ...]:
    if not isinstance(raw, list) or not raw or not all(
            isinstance(v, int) and not isinstance(v, bool) and v >= minimum for v in raw):
        raise ConfigError(f"{key}: expected a non-empty list of integers >= {minimum}, got {raw!r}")
    return tuple(raw)


def parse_spec(raw: Any) -> TableSpec:
    """Validate a spec mapping (the YAML's content) into a :class:`TableSpec`."""
    if not isinstance(raw, dict):
        raise ConfigError("attack table spec: expected a mapping at the top level")
    unknown = sorted(set(raw) - set(SPEC_KEYS))
    if unknown:
        raise ConfigError(f"{unknown[0]}: unknown key; expected one of: {', '.join(SPEC_KEYS)}")
    if not isinstance(raw.get("base"), str):
        raise ConfigError(f"base: expected the path of an experiment config, got "
                          f"{raw.get('base')!r}")
    overrides = raw.get("overrides") or []
    if not isinstance(overrides, list) or not all(isinstance(o, str) for o in overrides):
        raise ConfigError(f"overrides: expected a list of 'key=value' strings, got {overrides!r}")
    rows_raw = raw.get("rows")
    if not isinstance(rows_raw, list) or not rows_raw:
        raise ConfigError("rows: expected a non-empty list of {label, attack, params}")
    rows: list[TableRow] = []
    for i, row in enumerate(rows_raw):
        key = f"rows[{i}]"
        if not isinstance(row, dict):
            raise ConfigError(f"{key}: expected a mapping with keys label, attack, params")
        extra = sorted(set(row) - set(ROW_KEYS))
        if extra:
            raise ConfigError(f"{key}.{extra[0]}: unknown key; expected one of: "
                              f"{', '.join(ROW_KEYS)}")
        for name in ("label", "attack"):
            if not isinstance(row.get(name), str) or not row[name]:
                raise ConfigError(f"{key}.{name}: expected a non-empty name, got "
                                  f"{row.get(name)!r}")
        params = row.get("params") or {}
        if not isinstance(params, dict):
            raise ConfigError(f"{key}.params: expected a mapping, got {params!r}")
        if any(r.label == row["label"] for r in rows):
            raise ConfigError(f"{key}.label: {row['label']!r} is used by an earlier row")
        rows.append(TableRow(row["label"], row["attack"], dict(params)))
    check = raw.get("replay_check")
    replay_check = None
    if check is not None:
        if (not isinstance(check, dict) or set(check) != {"results", "row"}
                or not all(isinstance(v, str) for v in check.values())):
            raise ConfigError(f"replay_check: expected {{results: PATH, row: NAME}}, got {check!r}")
        replay_check = (_resolve(check["results"]), check["row"])
    return TableSpec(base=resolve_config_path(raw["base"], relative_to=ROOT),
                     overrides=tuple(overrides),
                     rounds=_int_list(raw.get("rounds"), "rounds", 1),
                     clients=_int_list(raw.get("clients"), "clients", 0),
                     rows=tuple(rows), replay_check=replay_check)


def load_spec(path: Path) -> TableSpec:
    """Read and validate an attack-table YAML."""
    if not path.is_file():
        raise ConfigError(f"attack table spec not found: {path}")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError:
        raise ConfigError(f"{path}: not valid YAML") from None
    return parse_spec(raw)


def base_config(spec: TableSpec, extra_overrides: Sequence[str] = ()) -> ExperimentConfig:
    """The federation's config, checked whole; checks that the spec's rounds and clients
    exist in it."""
    config, _ = load_experiment(spec.base, [*spec.overrides, *extra_overrides])
    bad_rounds = [r for r in spec.rounds if r > config.train.rounds]
    if bad_rounds:
        raise ConfigError(f"rounds: {bad_rounds[0]} is after the federation's last round "
                          f"(train.rounds = {config.train.rounds})")
    bad_clients = [c for c in spec.clients if c >= config.partition.num_clients]
    if bad_clients:
        raise ConfigError(f"clients: {bad_clients[0]} is not a partition id (partition."
                          f"num_clients = {config.partition.num_clients})")
    return config


def row_config(config: ExperimentConfig, row: TableRow) -> ExperimentConfig:
    """``config`` with the row's attack: the threat model (labels, BN statistics) is kept."""
    return dataclasses.replace(config, attack=dataclasses.replace(
        config.attack, name=row.attack, params=dict(row.params)))


def runnable_rows(config: ExperimentConfig, rows: Sequence[TableRow]
                  ) -> tuple[list[TableRow], dict[str, str]]:
    """Split ``rows`` into those to run and ``{label: why skipped}``.

    A row whose attack is not registered is skipped (it may be written later); a registered
    one is checked whole against the base config now (its params, its threat-model needs,
    ``attack.max_images``), before the federation is replayed, with the key named as
    ``<label>: ...``.
    """
    run, skipped = [], {}
    for row in rows:
        if row.attack not in ATTACKS:
            skipped[row.label] = (f"attack {row.attack!r} is not registered (known: "
                                  f"{', '.join(ATTACKS.names())}); row skipped")
            continue
        try:
            check_experiment(row_config(config, row), data=False)
        except ConfigError as exc:
            raise ConfigError(f"{row.label}: {exc}") from None
        run.append(row)
    return run, skipped


# --------------------------------------------------------------------------------------------
# The federation, replayed
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class RoundView:
    """What the curious server holds in one round: the model it sent and the kept replies."""

    server_round: int
    global_arrays: list[np.ndarray]
    replies: dict[int, ReceivedUpdate]


@dataclass(frozen=True)
class Replay:
    """A replayed federation.

    Attributes:
        rounds: the kept rounds' views (only the kept clients' replies).
        utility: central evaluation per round (0 = the initial model): ``round``, ``loss``,
            ``accuracy``, ``macro_f1``.
        seconds: wall time of the replay.
        run_dir: the replay's results folder (its ``fit.jsonl``, ``utility.jsonl``, ...).
    """

    rounds: dict[int, RoundView]
    utility: list[dict[str, float]]
    seconds: float
    run_dir: Path


def replay_federation(config: ExperimentConfig, run_dir: Path, *, keep_rounds: Sequence[int],
                      keep_clients: Sequence[int]) -> Replay:
    """Run ``config``'s federation in-process with an honest server; keep what the attacks
    need.

    The federation is the one ``flwr run`` runs (:func:`fl_shadow.apps.inprocess.
    run_in_process`: the project's ServerApp strategy, ClientApp and Flower's server loop),
    with ``attack.name: none`` so that the rows attack the kept updates afterwards; the
    clients train on one torch thread each, as a simulated client does.
    """
    honest = dataclasses.replace(config, attack=dataclasses.replace(config.attack, name="none",
                                                                    params={}))
    views: dict[int, RoundView] = {}

    def keep(server_round: int, global_arrays: list[np.ndarray],
             update: ReceivedUpdate) -> None:
        if server_round in keep_rounds and update.client_id in keep_clients:
            view = views.setdefault(server_round,
                                    RoundView(server_round, global_arrays, {}))
            view.replies[update.client_id] = update

    run = run_in_process(Federation(honest), run_dir, tap=keep)
    utility = [{k: float(r[k]) for k in ("round", "loss", "accuracy", "macro_f1")}
               for r in read_jsonl(run_dir / "utility.jsonl")]
    for row in utility:
        row["round"] = int(row["round"])
    return Replay(views, utility, run.seconds, run_dir)


def check_replay(replay: Replay, check: tuple[Path, str] | None) -> dict[str, Any]:
    """Compare the replay's final evaluation with the real run named by ``check``."""
    final = replay.utility[-1]
    out: dict[str, Any] = {"accuracy": final["accuracy"], "macro_f1": final["macro_f1"]}
    if check is None:
        return out
    path, row = check
    out.update(results=str(path.relative_to(ROOT) if path.is_relative_to(ROOT) else path),
               row=row)
    if not path.is_file():
        out["matches"] = None
        out["note"] = "results file not found"
        return out
    real = json.loads(path.read_text()).get("rows", {}).get(row)
    if real is None:
        out["matches"] = None
        out["note"] = f"no row {row!r} in the results file"
        return out
    out["real_accuracy"], out["real_macro_f1"] = real["accuracy"], real["macro_f1"]
    # Accuracy is a count over the test split (exact); F1 is compared to float precision.
    out["matches"] = bool(math.isclose(final["accuracy"], real["accuracy"], abs_tol=1e-9) and
                          math.isclose(final["macro_f1"], real["macro_f1"], abs_tol=1e-6))
    return out


# --------------------------------------------------------------------------------------------
# Attacks
# --------------------------------------------------------------------------------------------
class Server:
    """The curious server's fixed parts, built once from the base federation: the scorer (and
    its reference classifier) is shared by every row."""

    def __init__(self, config: ExperimentConfig) -> None:
        self.config = config
        self.federation = Federation(config)
        self.scorer = self.federation.scorer()

    def attack_row(self, row: TableRow, replay: Replay, rounds: Sequence[int],
                   clients: Sequence[int]) -> list[dict[str, Any]]:
        """Run ``row``'s attack on every (round, client) and score it; one dict each."""
        hook = Federation(row_config(self.config, row)).attack_hook()
        assert hook is not None  # rows name registered attacks
        out = []
        for server_round in rounds:
            view = replay.rounds[server_round]
            for cid in clients:
                update = view.replies[cid]
                base = {"label": row.label, "attack": row.attack, "params": dict(row.params),
                        "round": server_round, "client": cid,
                        "images": update.num_examples,
                        "batch_size": self.federation.plan_for(cid).batch_size,
                        "local_steps": int(update.metrics[keys.NUM_STEPS])}
                outcome = hook.run(server_round, view.global_arrays, update)
                if isinstance(outcome, Skipped):
                    out.append({**base, "skipped": outcome.reason})
                    continue
                rec = outcome.reconstruction
                scores = self.scorer.score(rec, outcome.audit, view.global_arrays)
                if scores is None:  # no audit record: cannot happen in a replay
                    raise RuntimeError("the replayed client sent no audit record")
                out.append({**base, **{k: float(v) for k, v in scores.summary.items()},
                            "iterations": int(rec.iterations), "seconds": float(rec.seconds),
                            "seconds_per_iteration": float(rec.seconds) / max(rec.iterations, 1),
                            "attack_loss": float(rec.loss)})
                log.info("%s round %d client %d: PSNR %.2f dB, SSIM %.3f, %.1f s", row.label,
                         server_round, cid, scores.summary["psnr"], scores.summary["ssim"],
                         rec.seconds)
        return out


# --------------------------------------------------------------------------------------------
# Results file
# --------------------------------------------------------------------------------------------
def machine_info(device: torch.device) -> dict[str, Any]:
    """Where and when the rows of one invocation were measured."""
    return {"date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            "platform": platform.platform(), "processor": platform.processor() or
            platform.machine(), "cpu_count": os.cpu_count(), "torch": torch.__version__,
            "torch_threads": torch.get_num_threads(), "device": str(device),
            "load_average": [round(v, 2) for v in os.getloadavg()]}


def read_results(path: Path) -> dict[str, Any] | None:
    return json.loads(path.read_text()) if path.is_file() else None


def federation_settings(config: ExperimentConfig) -> dict[str, Any]:
    """The settings that decide what the attacked updates are, as dotted keys.

    Everything in the resolved config but the names, the output folder, the simulation's
    resources and what each row replaces or the table fixes itself (``attack.name``,
    ``attack.params``, ``attack.rounds``, ``attack.clients``).
    """
    return {k: v for k, v in _flatten(config.to_dict()).items()
            if k not in ("name", "output_dir", "attack.name", "attack.rounds", "attack.clients")
            and not k.startswith(("attack.params", "simulation."))}


def _flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, Mapping) and value:
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def conflicting_settings(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    """Dotted keys whose value differs between two :func:`federation_settings`.

    The config schema grows while a table is filled in: a key only in ``new`` is compared with
    its schema default (the old rows were measured under it); a key only in ``old`` (removed
    since) is ignored.
    """
    defaults = federation_settings(ExperimentConfig())
    keys_ = sorted(set(old) | set(new))
    return [k for k in keys_ if k in new and
            (old[k] if k in old else defaults.get(k, new[k])) != new[k]]


def check_same_federation(existing: Mapping[str, Any] | None,
                          settings: Mapping[str, Any]) -> None:
    """Raise ConfigError when ``existing`` results were measured on another federation."""
    if existing is None:
        return
    conflicts = conflicting_settings(existing.get("base_config", {}), settings)
    if conflicts:
        k = conflicts[0]
        raise ConfigError(f"--out: the results file was measured with {k}="
                          f"{existing.get('base_config', {}).get(k, '(default)')!r}, this "
                          f"base config has {settings[k]!r}; choose another --out")


def merge_results(existing: dict[str, Any] | None, *, settings: dict[str, Any], spec_path: str,
                  federation: dict[str, Any], invocation: dict[str, Any],
                  new_rows: list[dict[str, Any]], order: Sequence[str],
                  overrides: Sequence[str] = ()) -> dict[str, Any]:
    """The results with ``new_rows`` merged in (``overrides``: those of the base config).

    Rows of labels in ``invocation["labels"]`` are replaced by ``new_rows``; the others are
    kept. Rows are ordered by ``order`` (the spec's labels; others after), round, client.

    Raises:
        ConfigError: ``existing`` was measured on another federation
            (:func:`check_same_federation`).
    """
    check_same_federation(existing, settings)
    runs = list(existing["runs"]) if existing else []
    index = len(runs)
    runs.append(invocation)
    replaced = set(invocation["labels"])
    rows = [r for r in (existing["rows"] if existing else []) if r["label"] not in replaced]
    rows += [{**r, "run": index} for r in new_rows]
    rank = {label: i for i, label in enumerate(order)}
    rows.sort(key=lambda r: (rank.get(r["label"], len(rank)), r["round"], r["client"]))
    return {"spec": spec_path, "base_config": settings, "overrides": list(overrides),
            "federation": federation, "runs": runs, "rows": rows}


def describe_federation(config: ExperimentConfig, spec: TableSpec) -> str:
    """The federation and threat model in words, from the config (never hard-coded prose)."""
    p, t, a, d = config.partition, config.train, config.attack, config.defense
    sizes = (f"{p.num_clients} hospitals of {'/'.join(map(str, p.sizes))} images"
             if p.sizes is not None else f"{p.num_clients} hospitals ({p.scheme} partition)")
    defense = "no defense" if d.name == "none" else (
        f"defense `{d.name}`" + (f" ({', '.join(f'{k}={v}' for k, v in d.params.items())})"
                                 if d.params else " (default parameters)"))
    steps = (f"{t.local_steps} local steps" if t.local_steps is not None
             else f"{t.local_epochs} local epoch(s)")
    return (f"{sizes} at batch sizes {'/'.join(map(str, p.batch_sizes))} on "
            f"{config.data.dataset} {config.data.image_size} px, {config.model.name} "
            f"(width {config.model.width}, norm {config.model.norm}), strategy "
            f"`{config.strategy.name}`, {defense}, seed {config.seed}, {t.rounds} rounds of "
            f"{steps} of {t.optimizer} (lr {t.lr:g}); replayed in-process. Attacked: rounds "
            f"{', '.join(map(str, spec.rounds))}, clients {', '.join(map(str, spec.clients))}. "
            f"Threat model: labels {'given' if a.labels == 'given' else 'recovered from the update'}"
            f", BatchNorm statistics {a.bn_statistics}"
            f"{', adaptive attacker (knows the defense)' if a.adaptive else ''}.")


def _fmt(value: Any, digits: int) -> str:
    return "" if value is None else f"{value:.{digits}f}"


def markdown(results: dict[str, Any]) -> str:
    """The table, the replay check and the machines, from a results dict."""
    fed = results["federation"]
    lines = ["# Attacks on one federation's updates", "",
             f"Produced by `python experiments/attack_table.py` from `{results['spec']}`: "
             f"{fed.get('description', '(federation not described)')} Each attack at its "
             "default parameters unless listed. Scored as a run "
             "scores: images in [0, 1], one assignment, PSNR (dB) / SSIM / LPIPS (AlexNet), "
             "label accuracy of the matched pairs. Iterations: the attack's objective "
             "evaluations (one gradient-matching loss and its gradient each: Adam steps for "
             "Inverting Gradients and GradInversion, L-BFGS function evaluations for DLG and "
             "iDLG, at most 100 steps x 20, fewer when L-BFGS stops on its tolerances); "
             "s/it = total / iterations; total = the attack's own wall time (scoring excluded)."
             + (" Overrides of the base config: "
                + ", ".join(f"`{o}`" for o in results["overrides"]) + "."
                if results.get("overrides") else ""), "",
             "| attack | params | round | client / batch | PSNR | SSIM | LPIPS | label acc. | "
             "s/it | iterations | total s | run |",
             "|---|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in results["rows"]:
        params = ", ".join(f"{k}={v}" for k, v in r["params"].items()) or "defaults"
        who = f"{r['client']} / {r['batch_size']} ({r['images']} img)"
        if "skipped" in r:
            lines.append(f"| {r['label']} | {params} | {r['round']} | {who} | "
                         f"skipped: {r['skipped']} | | | | | | | {r['run']} |")
            continue
        lines.append(f"| {r['label']} | {params} | {r['round']} | {who} | {r['psnr']:.2f} | "
                     f"{r['ssim']:.3f} | {r['lpips']:.4f} | {r['label_accuracy']:.2f} | "
                     f"{r['seconds_per_iteration']:.4f} | {r['iterations']} | "
                     f"{r['seconds']:.1f} | {r['run']} |")
    check = ""
    if "matches" in fed:
        verdict = {True: "matches", False: "does NOT match", None: "could not be compared"}[
            fed["matches"]]
        check = (f" The real run (`{fed.get('results')}`, row `{fed.get('row')}`): accuracy "
                 f"{_fmt(fed.get('real_accuracy'), 4)}, macro-F1 "
                 f"{_fmt(fed.get('real_macro_f1'), 4)}: the replay {verdict}"
                 + (f" ({fed['note']})" if fed.get("note") else "") + ".")
    lines += ["", f"Replay check: central evaluation of the replayed global model after the "
              f"last round: accuracy {fed['accuracy']:.4f}, macro-F1 {fed['macro_f1']:.4f}."
              + check, "", "Runs (the `run` column):", "",
              "| run | date (UTC) | rows measured | machine | torch threads | device | "
              "load average (1/5/15 min) before -> after |", "|---:|---|---|---|---:|---|---|"]
    in_table = {r["run"] for r in results["rows"]}
    for i, run in enumerate(results["runs"]):
        m = run["machine"]
        labels = ", ".join(run["labels"]) or "-"
        if run["labels"] and i not in in_table:
            labels = f"{labels} (superseded by a later run)"
        before = "/".join(f"{v:.2f}" for v in m["load_average"])
        after = "/".join(f"{v:.2f}" for v in run.get("load_average_after", []))
        lines.append(f"| {i} | {m['date']} | {labels} | "
                     f"{m['processor']}, {m['cpu_count']} CPUs, torch {m['torch']} | "
                     f"{m['torch_threads']} | {m['device']} | {before} -> {after} |")
        for label, why in run.get("skipped", {}).items():
            lines.append(f"|  | | {label}: {why} | | | | |")
    return "\n".join(lines) + "\n"


def write_results(results: dict[str, Any], out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    json_path, md_path = out.with_name(out.name + ".json"), out.with_name(out.name + ".md")
    tmp = json_path.with_name(json_path.name + ".tmp")
    tmp.write_text(json.dumps(results, indent=2) + "\n")
    tmp.replace(json_path)  # a crash mid-write keeps the previous file
    md_path.write_text(markdown(results))


# --------------------------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------------------------
def run_table(spec: TableSpec, *, spec_path: str, only: Sequence[str] | None, out: Path,
              extra_overrides: Sequence[str] = ()) -> dict[str, Any]:
    """Replay the federation, run the selected rows, merge into ``out``; returns the results.

    Rows whose attack is not registered are logged (warning), listed under the invocation's
    ``skipped`` and in the markdown, and not run.
    """
    config = base_config(spec, extra_overrides)
    selected = spec.select(only)
    rows, skipped = runnable_rows(config, selected)
    for label, why in skipped.items():
        log.warning("%s: %s", label, why)
    settings = federation_settings(config)
    overrides = [*spec.overrides, *extra_overrides]
    json_path = out.with_name(out.name + ".json")
    existing = read_results(json_path)
    check_same_federation(existing, settings)  # before the replay, not after it
    device = resolve_device(config.train.device)
    with tempfile.TemporaryDirectory(prefix="attack-table-replay-") as tmp:
        replay = replay_federation(config, Path(tmp) / "run", keep_rounds=spec.rounds,
                                   keep_clients=spec.clients)
    fed_summary = {**check_replay(replay, spec.replay_check), "utility": replay.utility,
                   "replay_seconds": round(replay.seconds, 2),
                   "description": describe_federation(config, spec)}
    server = Server(config)
    invocation = {"labels": [], "skipped": skipped, "machine": machine_info(device),
                  "extra_overrides": list(extra_overrides)}
    results = existing
    done: list[dict[str, Any]] = []
    if not rows:  # record the invocation (and its skips) even when nothing ran
        results = merge_results(existing, settings=settings, spec_path=spec_path,
                                federation=fed_summary, invocation=invocation, new_rows=[],
                                order=[r.label for r in spec.rows], overrides=overrides)
        write_results(results, out)
    for row in rows:
        done += server.attack_row(row, replay, spec.rounds, spec.clients)
        invocation = {**invocation, "labels": [*invocation["labels"], row.label],
                      "load_average_after": [round(v, 2) for v in os.getloadavg()]}
        # Written after every row, from the file as it was, so a crash keeps finished rows.
        results = merge_results(existing, settings=settings, spec_path=spec_path,
                                federation=fed_summary, invocation=invocation, new_rows=done,
                                order=[r.label for r in spec.rows], overrides=overrides)
        write_results(results, out)
    assert results is not None
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("spec", nargs="?", type=Path, default=DEFAULT_SPEC)
    parser.add_argument("--only", nargs="+", metavar="LABEL", help="run only these rows")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT,
                        help="results prefix: writes PREFIX.json and PREFIX.md")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override of the base config (e.g. train.device=cuda)")
    args = parser.parse_args(argv)
    set_torch_threads()  # FL_SHADOW_THREADS, default 1
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    spec_path = args.spec.resolve()
    shown = str(spec_path.relative_to(ROOT)) if spec_path.is_relative_to(ROOT) else str(spec_path)
    try:
        spec = load_spec(spec_path)
        results = run_table(spec, spec_path=shown, only=args.only, out=args.out,
                            extra_overrides=args.set)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(markdown(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
