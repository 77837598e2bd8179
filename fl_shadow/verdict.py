"""From a sweep's records to verdicts: per-image rows, the worst case, means over seeds with
95% intervals, and differences to the reference defense (FedAvg) paired by seed.

A sweep (:mod:`fl_shadow.apps.sweep`) writes two kinds of records, plain JSON:

* a **federation record** per (defense, strength, grid point, seed): the cell's ``key``, its
  ``utility`` rows (central evaluation per round), ``fit`` rows (per client and round: train
  loss, seconds), ``warnings`` and wall ``seconds``;
* an **attack record** per federation cell and attack: the ``key``, the ``attack`` label and
  one entry per attacked update (``round``, ``client``, ``num_images``, ``batch_size`` and the
  scorer's per-pair lists under ``pairs``, or ``skipped`` with the reason).

Everything here is a pure function of those records, so a report can be rebuilt from a
sweep's folder at any time and its numbers checked against the rows.

The unit of replication is the seed: a cell's figure is, per seed, the mean over its attacked
images (every attacked round and client), then the mean over seeds with a Student-t interval
(:func:`fl_shadow.metrics.mean_ci`). The **worst case** is an attack of its own,
:data:`WORST_CASE`: per image that every attack of its cell attacked, the most any of them
leaked, score by score (:func:`fl_shadow.metrics.worst_case`'s rule: the maximum, the minimum
for distances); images only some attacks saw stay in those attacks' rows.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from fl_shadow.metrics import (
    LOWER_MEANS_MORE_LEAKED,
    PRIVACY_SCORES,
    Interval,
    mean_ci,
    paired_difference,
)

WORST_CASE = "worst case"
#: Per-image scores a table reports, besides :data:`PRIVACY_SCORES`.
EXTRA_SCORES = ("fg_psnr", "fg_ssim", "fg_lpips", "label_correct", "ref_correct")
#: The scores of the no-information baseline and the leakage above it.
BASELINE_PREFIXES = ("prior", "nearest", "leak")


def strength_text(value: Any) -> str:
    """A strength for cell names and tables: ``0.1``, ``90``, ``1-2-3`` for a list of rounds;
    ``""`` for a fixed defense (None). Cell folder names are built from it: changing it renames
    every cell and a killed sweep would no longer resume."""
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, (list, tuple)):
        return "-".join(strength_text(v) for v in value) or "none"
    return str(value)


@dataclass(frozen=True)
class CellKey:
    """One federation cell of a sweep.

    Attributes:
        defense: the defense row's label (``fedavg``, ``dp``, ...).
        strength: the value of the defense's strength parameter (None: a fixed defense); a
            number, or any JSON value the parameter takes (a list of rounds).
        grid: the other config keys varied, as ``((key, value), ...)``.
        seed: the experiment seed.
    """

    defense: str
    strength: Any
    grid: tuple[tuple[str, Any], ...]
    seed: int

    @classmethod
    def from_json(cls, raw: Mapping[str, Any]) -> CellKey:
        strength = raw.get("strength")
        if isinstance(strength, list):  # hashable, as the settings' keys must be
            strength = tuple(strength)
        return cls(defense=str(raw["defense"]), strength=strength,
                   grid=tuple((str(k), tuple(v) if isinstance(v, list) else v)
                              for k, v in raw.get("grid", [])),
                   seed=int(raw["seed"]))

    def to_json(self) -> dict[str, Any]:
        return {"defense": self.defense, "strength": self.strength,
                "grid": [list(kv) for kv in self.grid], "seed": self.seed}

    @property
    def setting(self) -> tuple[str, Any, tuple[tuple[str, Any], ...]]:
        """The cell without its seed: what is averaged over seeds."""
        return self.defense, self.strength, self.grid


Setting = tuple[str, Any, tuple[tuple[str, Any], ...]]


# ---- per-image rows --------------------------------------------------------------------------
def image_rows(attack_records: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """One row per attacked image: the cell, the attack, the round, the client, the image's
    index in the train split, and every per-pair score the scorer wrote."""
    rows = []
    for record in attack_records:
        key = CellKey.from_json(record["key"])
        for update in record["updates"]:
            pairs = update.get("pairs")
            if not pairs:
                continue
            count = len(pairs["psnr"])
            for i in range(count):
                row: dict[str, Any] = {"key": key, "attack": record["attack"],
                                       "round": int(update["round"]),
                                       "client": int(update["client"]),
                                       "num_images": int(update["num_images"]),
                                       "batch_size": int(update.get("batch_size", 0))}
                row.update({name: float(values[i]) for name, values in pairs.items()
                            if len(values) == count})
                rows.append(row)
    return rows


def scored_names(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    """The numeric scores the rows carry, in report order."""
    present = set().union(*(r.keys() for r in rows)) if rows else set()
    names = [n for n in PRIVACY_SCORES if n in present]
    names += [n for n in EXTRA_SCORES if n in present]
    names += [f"{p}_{n}" for p in BASELINE_PREFIXES for n in PRIVACY_SCORES
              if f"{p}_{n}" in present]
    return names


def with_worst_case(rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """``rows`` plus one :data:`WORST_CASE` row per image that **every** attack of its cell
    attacked: each score the most any attack leaked (max; min for LPIPS). Baseline scores
    (``prior_*``, ``nearest_*``) do not depend on the attack and are carried over; ``leak_*``
    follow their score.

    Images only some attacks saw (a sweep attacking the last round with Inverting Gradients
    alone, an update one attack skipped) get no worst-case row: with them the worst case would
    average a different set of images than each attack's row and could come out *below* the
    strongest attack's mean, which is the opposite of what the row claims. They stay in their
    own attack's row."""
    groups = _attack_rows_by(rows, ("key", "round", "client", "image_index"),
                             "with_worst_case")
    names = scored_names(rows)
    attacks_of: dict[Any, set[str]] = defaultdict(set)
    for (key, *_), members in groups.items():
        attacks_of[key].update(str(m["attack"]) for m in members)
    out = [dict(r) for r in rows]
    for (key, *_), members in groups.items():
        if {str(m["attack"]) for m in members} != attacks_of[key]:
            continue
        worst: dict[str, Any] = {k: members[0][k] for k in
                                 ("key", "round", "client", "num_images", "batch_size",
                                  "image_index") if k in members[0]}
        worst["attack"] = WORST_CASE
        worst["attacks"] = sorted(str(m["attack"]) for m in members)
        worst.update(_most_leaked_scores(members, names))
        out.append(worst)
    return out


def most_exposed(rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Per cell, client and image: each score the most **any** attack leaked in **any** round
    that attacked the image (max; min for LPIPS), over the attack rows of ``rows``
    (:data:`WORST_CASE` rows are ignored).

    This is the patient's view, which the per-hospital risk report takes: an image a defense
    protects in round 1 but that Inverting Gradients rebuilds in round 10 is exposed. Unlike
    :func:`with_worst_case` it does not need every attack to have seen the image, so it is not
    a like-for-like comparison across defenses (the headline tables are); it is the most a
    curious server showed of that image. Each result carries ``rounds`` and ``attacks``: where
    it was attacked."""
    groups = _attack_rows_by(rows, ("key", "client", "image_index"), "most_exposed")
    names = scored_names(rows)
    out = []
    for (key, client, image), members in groups.items():
        exposed: dict[str, Any] = {"key": key, "client": client, "image_index": image,
                                   "rounds": sorted({int(m["round"]) for m in members}),
                                   "attacks": sorted({str(m["attack"]) for m in members}),
                                   "num_images": max(int(m["num_images"]) for m in members),
                                   "batch_size": max(int(m.get("batch_size", 0))
                                                     for m in members)}
        exposed.update(_most_leaked_scores(members, names))
        out.append(exposed)
    return out


def _attack_rows_by(rows: Sequence[Mapping[str, Any]], fields: Sequence[str], caller: str
                    ) -> dict[tuple[Any, ...], list[Mapping[str, Any]]]:
    """The attack rows of ``rows`` (not :data:`WORST_CASE`) grouped by ``fields``, which
    include ``image_index``: the same image found across attacks and rounds."""
    groups: dict[tuple[Any, ...], list[Mapping[str, Any]]] = defaultdict(list)
    for row in rows:
        if row["attack"] == WORST_CASE:
            continue
        if "image_index" not in row:
            raise ValueError(f"{caller}: a row has no image_index, so the same image cannot be "
                             "found across attacks and rounds (records older than the scorer's "
                             "image_index)")
        groups[tuple(row[f] for f in fields)].append(row)
    return groups


def _most_leaked_scores(members: Sequence[Mapping[str, Any]], names: Sequence[str]
                        ) -> dict[str, float]:
    """Per score, the most any of ``members`` (rows of one image) leaked. Baseline scores
    (``prior_*``, ``nearest_*``) do not depend on the attack and are carried over."""
    out: dict[str, float] = {}
    for name in names:
        if not all(name in m for m in members):
            continue
        if name.startswith(("prior_", "nearest_")):
            out[name] = float(members[0][name])
            continue
        values = [float(m[name]) for m in members]
        # leak_* are signed so that more is always more leaked
        out[name] = min(values) if lower_is_more_leaked(name) else max(values)
    return out


# ---- means over seeds ------------------------------------------------------------------------
def seed_means(rows: Sequence[Mapping[str, Any]], name: str, *,
               where: Callable[[Mapping[str, Any]], bool] | None = None
               ) -> dict[tuple[Setting, str], dict[int, float]]:
    """Per (setting, attack) and seed, the mean of ``name`` over the attacked images."""
    acc: dict[tuple[Setting, str], dict[int, list[float]]] = defaultdict(lambda: defaultdict(list))
    for row in rows:
        if name not in row or (where is not None and not where(row)):
            continue
        value = float(row[name])
        if not math.isfinite(value):
            continue
        key: CellKey = row["key"]
        acc[(key.setting, str(row["attack"]))][key.seed].append(value)
    return {k: {seed: float(np.mean(v)) for seed, v in seeds.items()} for k, seeds in acc.items()}


def privacy_table(rows: Sequence[Mapping[str, Any]], names: Sequence[str] | None = None, *,
                  where: Callable[[Mapping[str, Any]], bool] | None = None
                  ) -> dict[tuple[Setting, str], dict[str, Interval]]:
    """Per (setting, attack): each score's mean over seeds with its 95% interval."""
    names = list(names) if names is not None else scored_names(rows)
    table: dict[tuple[Setting, str], dict[str, Interval]] = defaultdict(dict)
    for name in names:
        for cell, per_seed in seed_means(rows, name, where=where).items():
            table[cell][name] = mean_ci(per_seed.values())
    return dict(table)


def privacy_differences(rows: Sequence[Mapping[str, Any]], reference: str,
                        names: Sequence[str] = ("psnr", "psnr_affine", "ssim", "ssim_affine",
                                                "lpips")
                        ) -> dict[tuple[Setting, str], dict[str, Interval]]:
    """Per (setting, attack): each score minus the reference defense's (same attack, same grid
    point), paired by seed. Negative PSNR/SSIM (positive LPIPS) = less leaked."""
    out: dict[tuple[Setting, str], dict[str, Interval]] = defaultdict(dict)
    for name in names:
        means = seed_means(rows, name)
        refs = {(setting[2], attack): per_seed for (setting, attack), per_seed in means.items()
                if setting[0] == reference}
        for (setting, attack), per_seed in means.items():
            ref = refs.get((setting[2], attack))
            if setting[0] == reference or ref is None or not set(per_seed) & set(ref):
                continue
            out[(setting, attack)][name] = paired_difference(per_seed, ref)
    return dict(out)


# ---- utility and time ------------------------------------------------------------------------
def utility_values(federation_records: Iterable[Mapping[str, Any]]
                   ) -> dict[Setting, dict[str, dict[int, float]]]:
    """Per setting: final ``accuracy``, ``macro_f1``, ``loss`` and mean client ``fit_seconds``,
    per seed.

    For a defense with a private model (FedKL's key-lock) the clients' own evaluation of the
    final global model (``client_accuracy``, ``client_macro_f1``) is its utility: the model a
    hospital uses is the keyed one, not the server's.
    """
    out: dict[Setting, dict[str, dict[int, float]]] = defaultdict(lambda: defaultdict(dict))
    for record in federation_records:
        key = CellKey.from_json(record["key"])
        final = max(record["utility"], key=lambda r: r["round"])
        for name in ("accuracy", "macro_f1", "loss"):
            value = float(final.get(f"client_{name}", final[name]))
            if math.isfinite(value):  # an exploded run has no loss; its warning says so
                out[key.setting][name][key.seed] = value
        seconds = [float(r["fit_seconds"]) for r in record.get("fit", [])
                   if "fit_seconds" in r]
        if seconds:
            out[key.setting]["fit_seconds"][key.seed] = float(np.mean(seconds))
    return out


def utility_table(federation_records: Sequence[Mapping[str, Any]], reference: str
                  ) -> dict[Setting, dict[str, Interval]]:
    """Per setting: accuracy, macro-F1, loss (mean ± CI over seeds), their differences to the
    reference (``d_*``, paired by seed), and the client round-time ratio to it (``time_ratio``,
    per seed the mean fit seconds over the reference's)."""
    values = utility_values(federation_records)
    refs = {setting[2]: v for setting, v in values.items() if setting[0] == reference}
    table: dict[Setting, dict[str, Interval]] = {}
    for setting, per_name in values.items():
        row = {name: mean_ci(per_seed.values()) for name, per_seed in per_name.items()}
        ref = refs.get(setting[2])
        if ref is not None:
            for name in ("accuracy", "macro_f1", "loss"):
                if set(per_name.get(name, {})) & set(ref.get(name, {})):
                    row[f"d_{name}"] = paired_difference(per_name[name], ref[name])
            seconds, ref_seconds = per_name.get("fit_seconds", {}), ref.get("fit_seconds", {})
            common = sorted(set(seconds) & set(ref_seconds))
            if common:
                row["time_ratio"] = mean_ci(seconds[s] / ref_seconds[s] for s in common
                                            if ref_seconds[s] > 0)
        table[setting] = row
    return table


def settings_of(records: Iterable[Mapping[str, Any]]) -> list[Setting]:
    """The distinct settings of the records, in first-seen order."""
    seen: dict[Setting, None] = {}
    for record in records:
        seen.setdefault(CellKey.from_json(record["key"]).setting, None)
    return list(seen)


def pareto_front(points: Mapping[Any, tuple[float, float]]) -> list[Any]:
    """The settings no other setting beats on both axes: ``points`` maps a setting to
    ``(utility cost, leakage)``, both lower-is-better (e.g. FedAvg's macro-F1 minus the
    setting's, and the worst case's SSIM b/c). A setting is dominated when another is at most
    as costly *and* leaks at most as much, and is strictly better on one. Returns the front
    ordered by cost (ties by leakage); non-finite points are never on it."""
    finite = {k: v for k, v in points.items() if all(math.isfinite(x) for x in v)}
    front = [k for k, (cost, leak) in finite.items()
             if not any(c <= cost and l <= leak and (c < cost or l < leak)
                        for other, (c, l) in finite.items() if other != k)]
    return sorted(front, key=lambda k: finite[k])


def lower_is_more_leaked(name: str) -> bool:
    """Whether a lower value of ``name`` means more leaked: distances (LPIPS, also inside the
    foreground and for the baselines); never ``leak_*``, which are signed the other way."""
    if name.startswith("leak_"):
        return False
    base = name.removeprefix("prior_").removeprefix("nearest_").removeprefix("fg_")
    return base in LOWER_MEANS_MORE_LEAKED


__all__ = [
    "BASELINE_PREFIXES",
    "EXTRA_SCORES",
    "WORST_CASE",
    "CellKey",
    "Setting",
    "image_rows",
    "lower_is_more_leaked",
    "most_exposed",
    "pareto_front",
    "privacy_differences",
    "privacy_table",
    "scored_names",
    "seed_means",
    "settings_of",
    "strength_text",
    "utility_table",
    "utility_values",
    "with_worst_case",
]
