"""A sweep's report: the table, the plots, the mosaic, the per-hospital risk, one HTML page.

:func:`write_report` reads a sweep's folder (the layout :mod:`fl_shadow.apps.sweep` writes:
``sweep.json``, ``cells/<cell>/federation.json``, ``attack-<label>.json``,
``recon-<label>.npz``) and writes into ``<out_dir>/report/``:

* ``table.md``, ``table.csv``: one row per defense x strength x attack (the sweep's attacks and
  :data:`~fl_shadow.verdict.WORST_CASE`), every figure as mean ± 95% interval over seeds
  (:mod:`fl_shadow.verdict`), and the no-information baselines (the public mean image, the
  closest public image);
* ``headlines.md``: one row per defense setting: the worst case, its paired change against
  the reference (also raw PSNR/SSIM, the scale papers report), macro-F1 and its change;
* ``pareto.png``: worst-case leakage against macro-F1, one curve per defense over its strengths;
* ``mosaic.png``: the first seed's attacked images and, per defense, the reconstruction of the
  attack that leaked most on each (worst case by PSNR up to brightness and contrast);
* ``rounds.png``: worst-case leakage per attacked round (only when more than one was attacked);
* ``risk.md`` and ``risk-hospital<k>.png``: per attacked hospital, how many of its images were
  rebuilt, by the rule :data:`RISK_RULE` (:func:`risk_category`);
* ``report.html``: one self-contained page (images embedded as base64 PNG, no external
  reference) with what was run, a verdict per defense, every warning of the records, and all of
  the above.

Every number comes from :mod:`fl_shadow.verdict` (the seed is the replicate; differences to
the reference defense are paired by seed and called significant only when their interval
excludes 0), so the report can be rebuilt from the folder at any time.
"""

from __future__ import annotations

import base64
import csv
import html
import json
import logging
import math
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from fl_shadow.metrics import Interval, mean_ci
from fl_shadow.verdict import (
    WORST_CASE,
    CellKey,
    Setting,
    image_rows,
    most_exposed,
    privacy_differences,
    privacy_table,
    settings_of,
    strength_text,
    utility_table,
    with_worst_case,
)

if TYPE_CHECKING:
    from matplotlib.figure import Figure

log = logging.getLogger(__name__)

REPORT_FOLDER = "report"
#: A reconstruction is *recognisable* from this SSIM up to brightness/contrast on ...
RECOGNISABLE_SSIM_AFFINE = 0.6
#: ... when it is also this much above the public mean image's SSIM up to brightness/contrast.
RECOGNISABLE_LEAK_SSIM_AFFINE = 0.1
#: *Partly* rebuilt: above the prior in SSIM b/c, or by more than this in PSNR b/c (dB).
PARTLY_LEAK_PSNR_AFFINE_DB = 1.0

RECOGNISABLE = "rebuilt — recognisable"
PARTLY = "partly rebuilt"
NOT_BEYOND_PRIOR = "not rebuilt beyond what public data shows"
UNJUDGED = "not judged (no prior baseline recorded)"
#: The categories, most exposed first.
RISK_CATEGORIES = (RECOGNISABLE, PARTLY, NOT_BEYOND_PRIOR, UNJUDGED)

#: The risk report's per-image scores: the most any attack leaked in any round.
EXPOSED = "most exposed"

RISK_RULE = (
    "Each attacked image is judged at its most exposed: per score, the most any attack leaked "
    "in any round that attacked it (an image protected in round 1 but rebuilt in round 10 is "
    "exposed), against the prior, the public split's mean image (what an attacker can show "
    "without the hospital's update). "
    f"'{RECOGNISABLE}': SSIM up to brightness/contrast at least {RECOGNISABLE_SSIM_AFFINE:g} "
    f"and at least {RECOGNISABLE_LEAK_SSIM_AFFINE:g} above the prior's. "
    f"'{PARTLY}': otherwise, SSIM up to brightness/contrast above the prior's, or PSNR up to "
    f"brightness/contrast more than {PARTLY_LEAK_PSNR_AFFINE_DB:g} dB above the prior's. "
    f"'{NOT_BEYOND_PRIOR}': neither. Each image counts once per seed. Shares: per seed, then "
    "their mean over seeds with its 95% interval in brackets (clipped to 0-100%).")

#: More settings than this in the mosaic: each defense only at its most private strength.
MAX_MOSAIC_ROWS = 8
#: At most this many attacked images (columns) in the mosaic.
MAX_MOSAIC_COLUMNS = 40
#: Fewer seeds than this: the report warns that intervals are wide or undefined.
MIN_SEEDS_FOR_VERDICT = 3
DPI = 110
MISSING = "—"
NBSP = "\u00a0"


# ---- the records -----------------------------------------------------------------------------
@dataclass(frozen=True)
class SweepRecords:
    """What a sweep's folder holds.

    Attributes:
        spec: ``sweep.json``'s ``spec`` ({} when the file is missing).
        planned: ``sweep.json``'s planned cells (``name``, ``key``, ``attacks``, ``skipped``).
        federations: one federation record per finished cell, in folder-name order.
        attacks: every attack record, in folder-name then attack-label order.
        folders: each cell's folder (where its ``recon-<label>.npz`` lie).
    """

    spec: dict[str, Any]
    planned: list[dict[str, Any]]
    federations: list[dict[str, Any]]
    attacks: list[dict[str, Any]]
    folders: dict[CellKey, Path]


class NotASweepFolder(ValueError):
    """The folder holds no sweep records (a wrong ``--out``, or a sweep not run yet)."""


def read_sweep(out_dir: Path) -> SweepRecords:
    """Read a sweep's folder (see the module docstring).

    Raises:
        NotASweepFolder: ``out_dir/cells`` does not exist, or no cell holds a federation
            record.
    """
    cells = Path(out_dir) / "cells"
    if not cells.is_dir():
        raise NotASweepFolder(f"not a sweep folder: {cells} does not exist")
    sweep_file = Path(out_dir) / "sweep.json"
    sweep = json.loads(sweep_file.read_text()) if sweep_file.is_file() else {}
    federations, attacks, folders = [], [], {}
    for folder in sorted(p for p in cells.iterdir() if p.is_dir()):
        if (folder / "federation.json").is_file():
            record = json.loads((folder / "federation.json").read_text())
            federations.append(record)
            folders[CellKey.from_json(record["key"])] = folder
        for path in sorted(folder.glob("attack-*.json")):
            record = json.loads(path.read_text())
            attacks.append(record)
            folders.setdefault(CellKey.from_json(record["key"]), folder)
    if not federations:
        raise NotASweepFolder(f"no federation record under {cells} (has the sweep run?)")
    return SweepRecords(spec=dict(sweep.get("spec", {})), planned=list(sweep.get("cells", [])),
                        federations=federations, attacks=attacks, folders=folders)


# ---- the risk rule ---------------------------------------------------------------------------
def risk_category(*, ssim_affine: float, leak_ssim_affine: float,
                  leak_psnr_affine: float) -> str:
    """How far an image was rebuilt, in words (the rule :data:`RISK_RULE`).

    Args:
        ssim_affine: the worst attack's SSIM up to brightness/contrast, in [-1, 1].
        leak_ssim_affine: that minus the public mean image's (positive = leaked).
        leak_psnr_affine: the worst attack's PSNR up to brightness/contrast minus the public
            mean image's, in dB.

    Returns:
        One of :data:`RISK_CATEGORIES` (:data:`UNJUDGED` when a value is NaN).
    """
    values = (ssim_affine, leak_ssim_affine, leak_psnr_affine)
    if not all(math.isfinite(v) for v in values):
        return UNJUDGED
    if (ssim_affine >= RECOGNISABLE_SSIM_AFFINE
            and leak_ssim_affine >= RECOGNISABLE_LEAK_SSIM_AFFINE):
        return RECOGNISABLE
    if leak_ssim_affine > 0 or leak_psnr_affine > PARTLY_LEAK_PSNR_AFFINE_DB:
        return PARTLY
    return NOT_BEYOND_PRIOR


# ---- the table's columns ---------------------------------------------------------------------
@dataclass(frozen=True)
class Column:
    """One figure of the table.

    Attributes:
        key: the CSV name (``<key>_mean``, ``<key>_half_width``).
        title: the Markdown/HTML header.
        source: ``privacy`` (per attack), ``privacy_delta`` (per attack, paired vs the
            reference) or ``utility`` (per setting, the same on every attack's row).
        score: the name in :mod:`fl_shadow.verdict`'s tables.
        digits: decimals shown.
    """

    key: str
    title: str
    source: str
    score: str
    digits: int

    @property
    def paired(self) -> bool:
        """A difference to the reference: marked when its interval excludes 0."""
        return self.source == "privacy_delta" or self.score.startswith("d_")


COLUMNS = (
    Column("psnr", "PSNR (dB)", "privacy", "psnr", 2),
    Column("psnr_affine", "PSNR up to b/c (dB)", "privacy", "psnr_affine", 2),
    Column("ssim", "SSIM", "privacy", "ssim", 3),
    Column("ssim_affine", "SSIM up to b/c", "privacy", "ssim_affine", 3),
    Column("lpips", "LPIPS (lower = more leaked)", "privacy", "lpips", 3),
    Column("ncc", "NCC", "privacy", "ncc", 3),
    Column("fg_psnr", "FG PSNR (dB)", "privacy", "fg_psnr", 2),
    Column("leak_psnr_affine", "PSNR b/c above prior (dB)", "privacy", "leak_psnr_affine", 2),
    Column("leak_ssim_affine", "SSIM b/c above prior", "privacy", "leak_ssim_affine", 3),
    Column("label_accuracy", "label accuracy", "privacy", "label_correct", 2),
    Column("accuracy", "test accuracy", "utility", "accuracy", 3),
    Column("macro_f1", "macro-F1", "utility", "macro_f1", 3),
    Column("d_macro_f1", "Δ macro-F1 vs ref.", "utility", "d_macro_f1", 3),
    Column("d_psnr_affine", "Δ PSNR b/c vs ref. (dB)", "privacy_delta", "psnr_affine", 2),
    Column("time_ratio", "client round time vs ref. (×)", "utility", "time_ratio", 2),
)
#: The baselines' scores (``prior_*``/``nearest_*``) go under these columns.
BASELINE_COLUMNS = ("psnr", "psnr_affine", "ssim", "ssim_affine", "lpips", "ncc")
BASELINES = (("prior", "public mean image (the prior; no information)"),
             ("nearest", "closest public image (oracle: chosen with the truth)"))
SIGNIFICANT_MARK = " *"


@dataclass(frozen=True)
class TableRow:
    """One row of the table: a setting under one attack (or the worst case).

    Attributes:
        setting: defense, strength, grid point.
        attack: the attack's label or :data:`~fl_shadow.verdict.WORST_CASE`.
        seeds: the seeds with attacked images in this row.
        values: per :attr:`Column.key`, the figure (absent: not measured).
    """

    setting: Setting
    attack: str
    seeds: int
    values: dict[str, Interval]


# ---- everything the report says, computed once ----------------------------------------------
@dataclass
class Verdict:
    """The numbers of a sweep, from :mod:`fl_shadow.verdict` (built by :func:`build_verdict`).

    Attributes:
        records: the folder's records.
        reference: the reference defense's label.
        rows: per attacked image and attack, plus the worst-case rows.
        settings: every setting, in the spec's defense order, then by strength.
        attacks: the attack labels, in the spec's order, then the worst case.
        privacy: per (setting, attack), each score's mean ± interval over seeds.
        deltas: per (setting, attack), paired differences to the reference.
        utility: per setting, utility and time figures.
        table: the table's rows.
        warnings: ``(message, where)`` to show, deduplicated.
    """

    records: SweepRecords
    reference: str
    rows: list[dict[str, Any]]
    settings: list[Setting]
    attacks: list[str]
    privacy: dict[tuple[Setting, str], dict[str, Interval]]
    deltas: dict[tuple[Setting, str], dict[str, Interval]]
    utility: dict[Setting, dict[str, Interval]]
    table: list[TableRow] = field(default_factory=list)
    warnings: list[tuple[str, str]] = field(default_factory=list)

    def worst(self, setting: Setting, score: str) -> Interval | None:
        """The worst case's ``score`` under ``setting`` (None: not measured)."""
        return self.privacy.get((setting, WORST_CASE), {}).get(score)

    @property
    def seeds(self) -> list[int]:
        return sorted({CellKey.from_json(r["key"]).seed for r in self.records.federations})

    @property
    def rounds(self) -> list[int]:
        return sorted({int(r["round"]) for r in self.rows})

    @property
    def clients(self) -> list[int]:
        return sorted({int(r["client"]) for r in self.rows})

    def label(self, setting: Setting) -> str:
        """See :func:`setting_label`."""
        return setting_label(setting, self.records.spec)


def strength_key(defense: str, spec: Mapping[str, Any]) -> str:
    """The ``defense.params`` key a defense row varies (``strength`` when the spec is
    missing)."""
    keys = {d.get("label"): d.get("strength") for d in spec.get("defenses", [])}
    return keys.get(defense) or "strength"


def setting_label(setting: Setting, spec: Mapping[str, Any]) -> str:
    """``"dp, noise_multiplier = 0.1"``: the defense, its strength key and value, the grid."""
    defense, strength, grid = setting
    text = defense
    if strength is not None:
        text += f", {strength_key(defense, spec)} = {strength_text(strength)}"
    for key, value in grid:
        text += f", {key} = {value}"
    return text


def build_verdict(records: SweepRecords, reference: str) -> Verdict:
    """Every number of the report (see :class:`Verdict`)."""
    warnings_: list[tuple[str, str]] = []
    defenses = {CellKey.from_json(r["key"]).defense for r in records.federations}
    if reference not in defenses:
        raise ValueError(f"reference: expected one of the sweep's defenses "
                         f"{sorted(defenses)}, got {reference!r}")
    rows = with_worst_case(image_rows(records.attacks))
    if any("image_index" not in r for r in rows if r["attack"] != WORST_CASE):
        warnings_.append((("some attacked images carry no image_index: the worst case over "
                           "attacks cannot pair their images and is wrong for them"), "records"))
    settings = _ordered_settings(records)
    attacks = _ordered_attacks(records)
    usable = _usable_federations(records.federations, warnings_)
    verdict = Verdict(records=records, reference=reference, rows=rows, settings=settings,
                      attacks=attacks, privacy=privacy_table(rows),
                      deltas=privacy_differences(rows, reference,
                                                 names=("psnr_affine", "ssim_affine", "psnr",
                                                        "ssim")),
                      utility=utility_table(usable, reference) if usable else {},
                      warnings=warnings_)
    verdict.table = _table_rows(verdict)
    verdict.warnings.extend(_record_warnings(verdict))
    return verdict


def _ordered_settings(records: SweepRecords) -> list[Setting]:
    seen = settings_of([*records.federations, *records.attacks])
    defense_order = {d.get("label"): i for i, d in enumerate(records.spec.get("defenses", []))}
    first_seen = {s: i for i, s in enumerate(seen)}
    return sorted(seen, key=lambda s: (defense_order.get(s[0], len(defense_order)),
                                       s[1] is not None, s[1] or 0.0, first_seen[s]))


def _ordered_attacks(records: SweepRecords) -> list[str]:
    labels = [a.get("label") for a in records.spec.get("attacks", [])]
    seen = list(dict.fromkeys(str(r["attack"]) for r in records.attacks))
    present = [a for a in labels if a in seen] + [a for a in seen if a not in labels]
    return [*present, WORST_CASE] if present else []


def _usable_federations(federations: Sequence[Mapping[str, Any]],
                        warnings_: list[tuple[str, str]]) -> list[Mapping[str, Any]]:
    """The records whose final evaluation is finite: :func:`fl_shadow.verdict.utility_table`
    cannot average a NaN (an exploded training), so such a seed is left out of the utility
    figures, visibly."""
    usable = []
    for record in federations:
        if not record.get("utility"):
            warnings_.append((("no central evaluation recorded: left out of the utility "
                               "figures"), _cell_text(record["key"])))
            continue
        final = max(record["utility"], key=lambda r: r["round"])
        bad = [n for n in ("accuracy", "macro_f1", "loss")
               if not math.isfinite(float(final.get(n, math.nan)))]
        if bad:
            warnings_.append(((f"final {', '.join(bad)} not finite: this seed is left out of "
                               "the utility figures"), _cell_text(record["key"])))
            continue
        usable.append(record)
    return usable


def _table_rows(verdict: Verdict) -> list[TableRow]:
    """Per setting, a row per attack it was attacked by (one row of utility alone when none
    was)."""
    out = []
    for setting in verdict.settings:
        utility = verdict.utility.get(setting, {})
        if not any((setting, attack) in verdict.privacy for attack in verdict.attacks):
            values = {c.key: utility[c.score] for c in COLUMNS
                      if c.source == "utility" and c.score in utility}
            out.append(TableRow(setting, MISSING, 0, values))
            verdict.warnings.append(("no attacked image recorded: privacy not measured",
                                     verdict.label(setting)))
            continue
        for attack in verdict.attacks:
            privacy = verdict.privacy.get((setting, attack))
            if privacy is None:
                continue
            deltas = verdict.deltas.get((setting, attack), {})
            values: dict[str, Interval] = {}
            for column in COLUMNS:
                source = {"privacy": privacy, "privacy_delta": deltas,
                          "utility": utility}[column.source]
                if column.score in source:
                    values[column.key] = source[column.score]
            seeds = max((i.n for i in privacy.values()), default=0)
            out.append(TableRow(setting, attack, seeds, values))
    return out


def _cell_text(raw_key: Mapping[str, Any]) -> str:
    key = CellKey.from_json(raw_key)
    strength = "" if key.strength is None else f" {strength_text(key.strength)}"
    grid = "".join(f", {k} = {v}" for k, v in key.grid)
    return f"{key.defense}{strength}{grid}, seed {key.seed}"


def _record_warnings(verdict: Verdict) -> list[tuple[str, str]]:
    """Every warning the records hold, the skipped attacks and updates, missing records, and
    what the report itself finds weak; the ones about the whole sweep first, the attacks'
    own (many, per update) last."""
    sweep: list[tuple[str, str]] = []
    records = verdict.records
    seeds = verdict.seeds
    if len(seeds) < MIN_SEEDS_FOR_VERDICT:
        sweep.append(((f"only {len(seeds)} seed(s): a verdict needs at least "
                       f"{MIN_SEEDS_FOR_VERDICT}; intervals are wide or undefined"), "sweep"))
    sweep += _worst_case_warnings(verdict)
    done = {CellKey.from_json(r["key"]) for r in records.federations}
    attacked = {(CellKey.from_json(r["key"]), str(r["attack"])) for r in records.attacks}
    for cell in records.planned:
        key = CellKey.from_json(cell["key"])
        if key not in done:
            sweep.append(("planned cell has no federation record (not run, or still running)",
                          _cell_text(cell["key"])))
            continue
        sweep += [(f"planned attack {label} has no record", _cell_text(cell["key"]))
                  for label in cell.get("attacks", []) if (key, label) not in attacked]
    federation: list[tuple[str, str]] = []
    for record in records.federations:
        where = _cell_text(record["key"])
        if record.get("state", "completed") != "completed":
            federation.append((f"federation ended {record['state']}", where))
        federation += [(f"federation: {w}", where) for w in record.get("warnings", [])]
        federation += [(f"attack {label} skipped: {reason}", where)
                       for label, reason in record.get("skipped_attacks", [])]
    attack: list[tuple[str, str]] = []
    for record in records.attacks:
        where = _cell_text(record["key"])
        for update in record["updates"]:
            if "skipped" in update:
                federation.append(((f"attack {record['attack']} skipped round "
                                    f"{update['round']}, client {update['client']}: "
                                    f"{update['skipped']}"), where))
        attack += [(f"attack {record['attack']}: {w}", where) for w in record.get("warnings", [])]
    return sweep + federation + attack


def _worst_case_warnings(verdict: Verdict) -> list[tuple[str, str]]:
    """A worst case over fewer attacks than the reference's is not comparable to it."""
    by_setting: dict[Setting, set[str]] = defaultdict(set)
    for row in verdict.rows:
        if row["attack"] != WORST_CASE:
            by_setting[row["key"].setting].add(str(row["attack"]))
    out = []
    for setting, attacks in by_setting.items():
        ref = by_setting.get((verdict.reference, None, setting[2]))
        if ref is not None and setting[0] != verdict.reference and attacks != ref:
            out.append(((f"the worst case is over attacks {sorted(attacks)} here but over "
                         f"{sorted(ref)} for {verdict.reference}: the differences compare "
                         "different attack sets"), verdict.label(setting)))
    return out


def grouped_warnings(warnings_: Iterable[tuple[str, str]]) -> list[tuple[str, list[str]]]:
    """Each distinct message once, with where it occurred (first-seen order)."""
    groups: dict[str, list[str]] = {}
    for message, where in warnings_:
        places = groups.setdefault(message, [])
        if where not in places:
            places.append(where)
    return list(groups.items())


# ---- text helpers ----------------------------------------------------------------------------
def interval_text(interval: Interval | None, digits: int, *, paired: bool = False) -> str:
    """``Interval.text``; a paired difference whose interval excludes 0 gets ``" *"``."""
    if interval is None:
        return MISSING
    text = interval.text(digits)
    return text + SIGNIFICANT_MARK if paired and interval.excludes_zero else text


def _magnitude_text(interval: Interval, digits: int) -> str:
    """``"2.10 ± 1.00"``: the size of a change (its direction is said in words)."""
    return Interval(abs(interval.mean), interval.half_width, interval.n).text(digits)


def _significance_note(interval: Interval) -> str:
    if not math.isfinite(interval.half_width):
        return " (one seed: no interval)"
    return "" if interval.excludes_zero else " (not significant)"


def _is_reference(verdict: Verdict, setting: Setting) -> bool:
    return setting[0] == verdict.reference


def headline(verdict: Verdict, setting: Setting) -> str:
    """One sentence: the privacy a defense gained against the reference, at what macro-F1 cost,
    with intervals ("not significant" where an interval contains 0)."""
    label, ref = verdict.label(setting), verdict.reference
    if _is_reference(verdict, setting):
        psnr, ssim = verdict.worst(setting, "psnr_affine"), verdict.worst(setting, "ssim_affine")
        f1 = verdict.utility.get(setting, {}).get("macro_f1")
        return (f"{label} (the reference): worst-case PSNR up to brightness/contrast "
                f"{interval_text(psnr, 2)} dB, SSIM up to brightness/contrast "
                f"{interval_text(ssim, 3)}, macro-F1 {interval_text(f1, 3)}.")
    deltas = verdict.deltas.get((setting, WORST_CASE), {})
    parts = []
    for score, unit, digits, name in (("psnr_affine", " dB", 2, "PSNR b/c"),
                                      ("ssim_affine", "", 3, "SSIM b/c")):
        if score in deltas:
            d = deltas[score]
            verb = "fell" if d.mean < 0 else "rose" if d.mean > 0 else "did not change"
            parts.append(f"{verb} by {_magnitude_text(d, digits)}{unit} in {name}"
                         f"{_significance_note(d)}")
    privacy = (f"worst-case leakage vs {ref} " + " and ".join(parts)) if parts else (
        f"no paired privacy comparison with {ref} (no common seed or attack)")
    d_f1 = verdict.utility.get(setting, {}).get("d_macro_f1")
    if d_f1 is None:
        utility = f"no paired macro-F1 comparison with {ref}"
    else:
        what = "cost" if d_f1.mean < 0 else "gain" if d_f1.mean > 0 else "change"
        utility = (f"at a macro-F1 {what} of {_magnitude_text(d_f1, 3)}"
                   f"{_significance_note(d_f1)}")
    ratio = verdict.utility.get(setting, {}).get("time_ratio")
    time = f"; client round time ×{interval_text(ratio, 2)}" if ratio is not None else ""
    return f"{label}: {privacy}, {utility}{time}."


# ---- table.md / table.csv ---------------------------------------------------------------------
def _cell_value(verdict: Verdict, row: TableRow, column: Column) -> str:
    if column.paired and _is_reference(verdict, row.setting):
        return "ref."
    return interval_text(row.values.get(column.key), column.digits, paired=column.paired)


def table_header() -> list[str]:
    """The table's column titles (:func:`table_cells`)."""
    return ["defense", "strength", "attack", *(c.title for c in COLUMNS), "seeds"]


def table_cells(verdict: Verdict) -> list[list[str]]:
    """The table's rows as text (the Markdown and HTML tables)."""
    out = []
    for row in verdict.table:
        defense = verdict.label((row.setting[0], None, row.setting[2]))
        strength = ("" if row.setting[1] is None else
                    f"{strength_key(row.setting[0], verdict.records.spec)} = "
                    f"{strength_text(row.setting[1])}")
        out.append([defense, strength, row.attack,
                    *(_cell_value(verdict, row, c) for c in COLUMNS), str(row.seeds)])
    return out


def baseline_header() -> list[str]:
    return ["baseline", *(c.title for c in COLUMNS if c.key in BASELINE_COLUMNS), "seeds"]


def baseline_cells(verdict: Verdict) -> list[list[str]]:
    """The baselines' rows (:func:`baseline_header`): their scores on the privacy columns."""
    out = []
    for prefix, name in BASELINES:
        table = _baseline_intervals(verdict, prefix)
        if table:
            out.append([name, *(interval_text(table.get(c.score), c.digits) for c in COLUMNS
                                if c.key in BASELINE_COLUMNS),
                        str(max(i.n for i in table.values()))])
    return out


def _baseline_intervals(verdict: Verdict, prefix: str) -> dict[str, Interval]:
    """A baseline's scores on the reference's attacked images (worst-case rows carry them
    once per image); per seed the mean over the images, then mean ± interval over seeds."""
    setting = next((s for s in verdict.settings if _is_reference(verdict, s) and
                    (s, WORST_CASE) in verdict.privacy), None)
    if setting is None:
        return {}
    cell = verdict.privacy[(setting, WORST_CASE)]
    return {name: cell[f"{prefix}_{name}"] for name in BASELINE_COLUMNS
            if f"{prefix}_{name}" in cell}


def _markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    def line(cells: Sequence[str]) -> str:
        return "| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |"
    return "\n".join([line(header), line(["---"] * len(header)), *map(line, rows)])


TABLE_NOTE = (
    "Mean ± 95% Student-t interval over seeds (per seed: the mean over every attacked image, "
    "round and client). 'up to b/c' = after the best per-image brightness/contrast map; "
    "'above prior' = minus the public mean image's score (positive = leaked). "
    f"'{WORST_CASE}' = per image, the most any attack leaked, over the images every attack "
    "attacked (an attack that alone attacked other rounds has those only in its own row). "
    "Δ = paired by seed against the "
    "reference; on the worst-case row it is the worst case's. * = the interval excludes 0 "
    "(significant). Utility columns are the final round's and repeat on every attack's row.")


#: The headline table: per setting, the worst case and its paired change against the
#: reference. ``(title, source, key, digits, paired)``; source ``worst``: the worst-case row's
#: score, ``delta``: its paired difference, ``utility``: the utility table.
HEADLINE_COLUMNS: tuple[tuple[str, str, str, int, bool], ...] = (
    ("worst PSNR b/c (dB)", "worst", "psnr_affine", 2, False),
    ("Δ PSNR b/c (dB)", "delta", "psnr_affine", 2, True),
    ("worst SSIM b/c", "worst", "ssim_affine", 3, False),
    ("Δ SSIM b/c", "delta", "ssim_affine", 3, True),
    ("Δ PSNR raw (dB)", "delta", "psnr", 2, True),
    ("Δ SSIM raw", "delta", "ssim", 3, True),
    ("SSIM b/c above prior", "worst", "leak_ssim_affine", 3, False),
    ("macro-F1", "utility", "macro_f1", 3, False),
    ("Δ macro-F1", "utility", "d_macro_f1", 3, True),
    ("round time (×)", "utility", "time_ratio", 2, False))
HEADLINE_NOTE = (
    "One row per defense setting, judged by the worst case (per image, the most any attack "
    "leaked). Δ = paired by seed against the reference (negative PSNR/SSIM = less leaked); "
    "* = the 95% interval excludes 0. 'raw' = without the brightness/contrast map (the scale "
    "papers report); 'above prior' = minus the public mean image's score.")


def headline_header() -> list[str]:
    return ["defense", "strength", *(c[0] for c in HEADLINE_COLUMNS), "seeds"]


def headline_cells(verdict: Verdict) -> list[list[str]]:
    """:data:`HEADLINE_COLUMNS` per setting, in the report's order."""
    out = []
    for setting in verdict.settings:
        reference = _is_reference(verdict, setting)
        strength = ("" if setting[1] is None else
                    f"{strength_key(setting[0], verdict.records.spec)} = "
                    f"{strength_text(setting[1])}")
        row = [verdict.label((setting[0], None, setting[2])), strength]
        for _, source, key, digits, paired in HEADLINE_COLUMNS:
            if paired and reference:
                row.append("ref.")
                continue
            if source == "worst":
                value = verdict.worst(setting, key)
            elif source == "delta":
                value = verdict.deltas.get((setting, WORST_CASE), {}).get(key)
            else:
                value = verdict.utility.get(setting, {}).get(key)
            row.append(interval_text(value, digits, paired=paired))
        seeds = verdict.privacy.get((setting, WORST_CASE), {}).get("psnr_affine")
        row.append(str(seeds.n) if seeds is not None else MISSING)
        out.append(row)
    return out


def write_headlines_markdown(verdict: Verdict, path: Path) -> None:
    path.write_text("\n".join([f"# Headlines (reference: {verdict.reference})", "",
                               HEADLINE_NOTE, "",
                               _markdown_table(headline_header(), headline_cells(verdict)),
                               ""]))


def write_table_markdown(verdict: Verdict, path: Path) -> None:
    lines = [f"# Privacy and utility (reference: {verdict.reference})", "", TABLE_NOTE, "",
             _markdown_table(table_header(), table_cells(verdict)), ""]
    baselines = baseline_cells(verdict)
    if baselines:
        lines += ["## No-information baselines (on the reference's attacked images)", "",
                  _markdown_table(baseline_header(), baselines), ""]
    path.write_text("\n".join(lines))


def write_table_csv(verdict: Verdict, path: Path) -> None:
    """Machine-readable: ``<key>_mean``/``<key>_half_width`` (``nan`` with one seed, empty
    when not measured), ``<key>_significant`` for differences; ``kind`` is ``result`` or
    ``baseline``."""
    fields = ["kind", "defense", "strength", "grid", "attack", "seeds"]
    for column in COLUMNS:
        fields += [f"{column.key}_mean", f"{column.key}_half_width"]
        if column.paired:
            fields.append(f"{column.key}_significant")
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        for row in verdict.table:
            out: dict[str, Any] = {"kind": "result", "defense": row.setting[0],
                                   "strength": _strength_csv(row.setting[1]),
                                   "grid": json.dumps([list(kv) for kv in row.setting[2]]),
                                   "attack": row.attack, "seeds": row.seeds}
            for column in COLUMNS:
                _csv_interval(out, column, row.values.get(column.key))
            writer.writerow(out)
        for prefix, name in BASELINES:
            table = _baseline_intervals(verdict, prefix)
            if not table:
                continue
            out = {"kind": "baseline", "defense": f"{prefix}: {name}", "strength": "",
                   "grid": "[]", "attack": "", "seeds": max(i.n for i in table.values())}
            for column in COLUMNS:
                value = table.get(column.score) if column.key in BASELINE_COLUMNS else None
                _csv_interval(out, column, value)
            writer.writerow(out)


def _csv_interval(out: dict[str, Any], column: Column, value: Interval | None) -> None:
    if value is None:
        return
    out[f"{column.key}_mean"] = repr(value.mean)
    out[f"{column.key}_half_width"] = repr(value.half_width)
    if column.paired:
        out[f"{column.key}_significant"] = str(value.excludes_zero).lower()


# ---- plots -----------------------------------------------------------------------------------
def _half(interval: Interval) -> float:
    """An error bar's half-length (0 where the interval is undefined, one seed)."""
    return interval.half_width if math.isfinite(interval.half_width) else 0.0


def _strength_csv(strength: Any) -> str:
    """Exact in the CSV: ``repr`` of a number, JSON of a list (CENSOR's rounds)."""
    if strength is None:
        return ""
    if isinstance(strength, (list, tuple)):
        return json.dumps(list(strength))
    return repr(float(strength))


def _curves(verdict: Verdict) -> dict[tuple[str, tuple[tuple[str, Any], ...]], list[Setting]]:
    """Per (defense, grid point), its settings in order of strength."""
    curves: dict[tuple[str, tuple[tuple[str, Any], ...]], list[Setting]] = {}
    for setting in verdict.settings:
        curves.setdefault((setting[0], setting[2]), []).append(setting)
    return curves


PARETO_CAPTION = (
    "Lower-right is better: less leaked (down) at a higher macro-F1 (right). Each point is a "
    "defense at one strength (labelled), mean ± 95% interval over seeds on both axes; the "
    "star is the reference; the dashed line is the public mean image, what an attacker shows "
    "with no information (below it, the worst attack shows less than public data).")


def _clip_axis(set_lim: Callable[..., Any], limits: tuple[float, float], low: float | None,
               high: float | None) -> None:
    """Keep an axis within the score's range (plus a 2% margin of it)."""
    margin = 0.02 * ((high if high is not None else limits[1])
                     - (low if low is not None else limits[0]))
    left = limits[0] if low is None else max(limits[0], low - margin)
    right = limits[1] if high is None else min(limits[1], high + margin)
    set_lim(left, right)


def plot_pareto(verdict: Verdict, path: Path) -> None:
    """Two panels: worst-case PSNR b/c and SSIM b/c (y) against macro-F1 (x)."""
    # Imported here: matplotlib costs ~0.3 s at import in the CLI, which loads this module
    # for `fl-shadow sweep` and draws only when a report is written.
    from matplotlib.figure import Figure

    fig = Figure(figsize=(14, 5.2), dpi=DPI)
    axes = fig.subplots(1, 2)
    prior = _baseline_intervals(verdict, "prior")
    for ax, score, name in ((axes[0], "psnr_affine", "PSNR up to brightness/contrast (dB)"),
                            (axes[1], "ssim_affine", "SSIM up to brightness/contrast")):
        for (defense, grid), settings in _curves(verdict).items():
            points = [(s, verdict.utility.get(s, {}).get("macro_f1"), verdict.worst(s, score))
                      for s in settings]
            points = [(s, x, y) for s, x, y in points if x is not None and y is not None]
            if not points:
                continue
            reference = defense == verdict.reference
            label = verdict.label((defense, None, grid)) + (" (reference)" if reference
                                                             else "")
            ax.errorbar([x.mean for _, x, _ in points], [y.mean for _, _, y in points],
                        xerr=[_half(x) for _, x, _ in points],
                        yerr=[_half(y) for _, _, y in points],
                        marker="*" if reference else "o", markersize=14 if reference else 6,
                        color="black" if reference else None, capsize=3, linewidth=1.2,
                        label=label)
            for s, x, y in points:
                if s[1] is not None:
                    ax.annotate(strength_text(s[1]), (x.mean, y.mean),
                                textcoords="offset points", xytext=(6, 5), fontsize=8)
        if score in prior:
            ax.axhline(prior[score].mean, color="grey", linestyle="--", linewidth=1,
                       label="public mean image (prior)")
        # an interval of 2-3 seeds can reach past [0, 1]; the score cannot
        _clip_axis(ax.set_xlim, ax.get_xlim(), 0.0, 1.0)
        if score.startswith("ssim"):
            _clip_axis(ax.set_ylim, ax.get_ylim(), None, 1.0)
        ax.set_xlabel("macro-F1 (test set, final round)")
        ax.set_ylabel(f"worst-case {name}")
        ax.set_title(f"worst-case {name.split(' (')[0]} vs macro-F1", fontsize=10)
        ax.grid(alpha=0.3)
    _figure_legend(fig, axes[0])
    fig.text(0.5, 0.01, _wrap(PARETO_CAPTION, 190), ha="center", va="bottom", fontsize=8)
    fig.subplots_adjust(bottom=0.2, wspace=0.25, left=0.06, right=0.79, top=0.93)
    fig.savefig(path)


def _figure_legend(fig: Figure, ax: Any) -> None:
    """One legend right of the panels (inside them it hides points)."""
    handles, labels = ax.get_legend_handles_labels()
    if handles:
        fig.legend(handles, [_wrap(label, 30) for label in labels], loc="center left",
                   bbox_to_anchor=(0.8, 0.55), fontsize=8, frameon=False)


def plot_rounds(verdict: Verdict, path: Path) -> None:
    """Worst-case PSNR b/c and SSIM b/c per attacked round, one line per setting."""
    from matplotlib.figure import Figure  # imported here: see plot_pareto

    fig = Figure(figsize=(14, 4.6), dpi=DPI)
    axes = fig.subplots(1, 2)
    rounds = verdict.rounds
    worst_rows = [r for r in verdict.rows if r["attack"] == WORST_CASE]
    per_round = {k: privacy_table(worst_rows, ["psnr_affine", "ssim_affine"],
                                  where=_in_round(k)) for k in rounds}
    prior = _baseline_intervals(verdict, "prior")
    for ax, score, name in ((axes[0], "psnr_affine", "PSNR up to b/c (dB)"),
                            (axes[1], "ssim_affine", "SSIM up to b/c")):
        if score in prior:
            ax.axhline(prior[score].mean, color="grey", linestyle="--", linewidth=1,
                       label="public mean image (prior)")
        # Each setting a little to the side, so that the error bars do not hide each other.
        spread = 0.25 * min(np.diff(rounds), default=1) / max(1, len(verdict.settings))
        for n, setting in enumerate(verdict.settings):
            xs, ys, errs = [], [], []
            shift = (n - (len(verdict.settings) - 1) / 2) * spread
            for server_round in rounds:
                cell = per_round[server_round].get((setting, WORST_CASE))
                if cell and score in cell:
                    xs.append(server_round + shift)
                    ys.append(cell[score].mean)
                    errs.append(_half(cell[score]))
            if xs:
                reference = _is_reference(verdict, setting)
                ax.errorbar(xs, ys, yerr=errs, marker="*" if reference else "o", capsize=3,
                            color="black" if reference else None, label=verdict.label(setting))
        ax.set_xticks(rounds)
        ax.set_xlabel("attacked round")
        ax.set_ylabel(f"worst-case {name}")
        ax.grid(alpha=0.3)
    _figure_legend(fig, axes[0])
    fig.text(0.5, 0.01, "Per round: mean ± 95% interval over seeds of the worst case over "
             "attacks (every attacked client's images). Lower is more private.", ha="center",
             fontsize=8)
    fig.subplots_adjust(bottom=0.18, wspace=0.25, left=0.06, right=0.79, top=0.95)
    fig.savefig(path)


def _in_round(server_round: int) -> Callable[[Mapping[str, Any]], bool]:
    return lambda row: int(row["round"]) == server_round


# ---- pictures --------------------------------------------------------------------------------
@dataclass(frozen=True)
class Pair:
    """One matched (reconstruction, truth) pair of one attack on one update.

    Attributes:
        key: the cell.
        attack: the attack's label.
        round, client: the attacked update.
        position: the pair's index in the update's ``pairs`` lists and in the npz arrays.
        image: the image's index in the train split (the position when not recorded).
        psnr_affine, ssim_affine: its scores.
    """

    key: CellKey
    attack: str
    round: int
    client: int
    position: int
    image: int
    psnr_affine: float
    ssim_affine: float


def pairs_of(attack_records: Iterable[Mapping[str, Any]]) -> list[Pair]:
    """Every matched pair of the attack records, with its place in the npz arrays."""
    out = []
    for record in attack_records:
        key = CellKey.from_json(record["key"])
        for update in record["updates"]:
            pairs = update.get("pairs")
            if not pairs:
                continue
            indices = pairs.get("image_index", list(range(len(pairs["psnr"]))))
            for i, image in enumerate(indices):
                out.append(Pair(key, str(record["attack"]), int(update["round"]),
                                int(update["client"]), i, int(image),
                                float(pairs.get("psnr_affine", [math.nan] * (i + 1))[i]),
                                float(pairs.get("ssim_affine", [math.nan] * (i + 1))[i])))
    return out


class Pictures:
    """The ``recon-<label>.npz`` arrays of a sweep, loaded once per file."""

    def __init__(self, folders: Mapping[CellKey, Path]) -> None:
        self.folders = folders
        self._cache: dict[tuple[CellKey, str], dict[str, np.ndarray] | None] = {}

    def _arrays(self, key: CellKey, attack: str) -> dict[str, np.ndarray] | None:
        if (key, attack) not in self._cache:
            path = self.folders.get(key, Path("/nonexistent")) / f"recon-{attack}.npz"
            if path.is_file():
                with np.load(path, allow_pickle=False) as data:
                    self._cache[(key, attack)] = {k: data[k] for k in data.files}
            else:
                self._cache[(key, attack)] = None
        return self._cache[(key, attack)]

    def get(self, pair: Pair, which: str) -> np.ndarray | None:
        """``(H, W)`` or ``(H, W, C)`` in [0, 1]: the pair's ``truth`` or ``recon``, or None
        when the file or the array is missing."""
        arrays = self._arrays(pair.key, pair.attack)
        name = f"r{pair.round}c{pair.client}_{which}"
        if arrays is None or name not in arrays or pair.position >= len(arrays[name]):
            return None
        image = np.clip(np.asarray(arrays[name][pair.position], dtype=np.float64), 0.0, 1.0)
        return image[0] if image.shape[0] == 1 else np.transpose(image, (1, 2, 0))


def draw_tiles(path: Path, tiles: Sequence[Sequence[np.ndarray | None]], *,
               column_titles: Sequence[str], row_labels: Sequence[str],
               captions: Sequence[Sequence[str]], tile_inches: float = 1.0,
               label_inches: float = 1.7) -> None:
    """A grid of pictures as ONE image with text around it (fast for hundreds of tiles: one
    axes, not one per tile).

    Args:
        path: the PNG to write.
        tiles: ``tiles[row][column]``: ``(H, W)`` gray or ``(H, W, 3)`` in [0, 1], every tile
            the same ``H, W``; None draws a grey tile.
        column_titles: one per column, above the first row.
        row_labels: one per row, left of it.
        captions: ``captions[row][column]``, under each tile ('' for none).
        tile_inches: a tile's side.
        label_inches: the row labels' margin.
    """
    from matplotlib.figure import Figure  # imported here: see plot_pareto

    shape = next((t.shape[:2] for row in tiles for t in row if t is not None), (8, 8))
    h, w = int(shape[0]), int(shape[1])
    rows, cols = len(tiles), max(len(row) for row in tiles)
    # Gaps in tile pixels: between columns, under each row (its captions), above (the titles).
    gap_x = max(1, round(0.08 * w))
    gap_y = max(1, round((0.34 if any(any(c) for c in captions) else 0.08) * h))
    top = max(1, round(0.36 * h))
    width, height = cols * w + (cols - 1) * gap_x, top + rows * (h + gap_y)
    canvas = np.ones((height, width, 3))
    for i, row in enumerate(tiles):
        for j, image in enumerate(row):
            y, x = top + i * (h + gap_y), j * (w + gap_x)
            if image is None:
                canvas[y:y + h, x:x + w] = 0.88
                continue
            rgb = image[..., None] if image.ndim == 2 else image
            canvas[y:y + h, x:x + w] = np.clip(rgb, 0.0, 1.0)
    inches_per_px = tile_inches / w
    fig_w, fig_h = label_inches + width * inches_per_px + 0.1, height * tile_inches / h
    fig = Figure(figsize=(fig_w, fig_h), dpi=DPI)
    ax = fig.add_axes((label_inches / fig_w, 0.0, width * inches_per_px / fig_w, 1.0))
    ax.imshow(canvas, extent=(0, width, height, 0), aspect="auto", interpolation="nearest")
    ax.set_axis_off()
    chars = max(8, int(18 * tile_inches))
    for j, title in enumerate(column_titles):
        ax.text(j * (w + gap_x) + w / 2, top - 0.04 * h, _wrap(title, chars), ha="center",
                va="bottom", fontsize=7, clip_on=False)
    for i, label in enumerate(row_labels):
        ax.text(-gap_x * 2, top + i * (h + gap_y) + h / 2, _wrap(label, 18), ha="right",
                va="center", fontsize=8, clip_on=False)
        for j, text in enumerate(captions[i] if i < len(captions) else []):
            if text:
                ax.text(j * (w + gap_x) + w / 2, top + i * (h + gap_y) + h + 0.03 * h, text,
                        ha="center", va="top", fontsize=6 if tile_inches < 1.3 else 7,
                        clip_on=False)
    fig.savefig(path)


def _most_leaked(candidates: Iterable[Pair]) -> Pair | None:
    """The worst case by PSNR up to brightness/contrast (NaN counts as least leaked)."""
    best = None
    for pair in candidates:
        value = pair.psnr_affine if math.isfinite(pair.psnr_affine) else -math.inf
        if best is None or value > (best.psnr_affine if math.isfinite(best.psnr_affine)
                                    else -math.inf):
            best = pair
    return best


def mosaic_settings(verdict: Verdict) -> tuple[list[Setting], bool]:
    """The mosaic's rows: every setting, or, beyond :data:`MAX_MOSAIC_ROWS`, each defense at
    the strength that leaked least (lowest worst-case PSNR b/c); and whether it was cut."""
    if len(verdict.settings) <= MAX_MOSAIC_ROWS:
        return list(verdict.settings), False

    def leaked(setting: Setting) -> float:
        worst = verdict.worst(setting, "psnr_affine")
        return worst.mean if worst is not None else math.inf

    return [min(settings, key=leaked) for settings in _curves(verdict).values()], True


def plot_mosaic(verdict: Verdict, pairs: Sequence[Pair], pictures: Pictures,
                path: Path) -> str | None:
    """The first seed's attacked images (top row) and, per setting, the most-leaked
    reconstruction of each; returns the caption, or None when there is no pair to show."""
    if not pairs:
        return None
    seed = min(p.key.seed for p in pairs)
    settings, cut = mosaic_settings(verdict)
    order = sorted(settings, key=lambda s: not _is_reference(verdict, s))
    columns: list[tuple[int, int, int]] = []
    for setting in order:
        for pair in pairs:
            column = (pair.round, pair.client, pair.image)
            if pair.key.setting == setting and pair.key.seed == seed and column not in columns:
                columns.append(column)
    columns.sort(key=lambda c: (c[0], c[1]))
    dropped = max(0, len(columns) - MAX_MOSAIC_COLUMNS)
    columns = columns[:MAX_MOSAIC_COLUMNS]
    at: dict[tuple[Setting, tuple[int, int, int]], list[Pair]] = defaultdict(list)
    for pair in pairs:
        if pair.key.seed == seed:
            at[(pair.key.setting, (pair.round, pair.client, pair.image))].append(pair)
    truths, recons, captions = [], [], []
    for column in columns:
        any_pair = next((p for s in order for p in at.get((s, column), [])), None)
        truths.append(pictures.get(any_pair, "truth") if any_pair else None)
    for setting in settings:
        row, text = [], []
        for column in columns:
            best = _most_leaked(at.get((setting, column), []))
            row.append(pictures.get(best, "recon") if best else None)
            text.append("not attacked" if best is None else
                        f"{best.attack}\n{best.psnr_affine:.1f} dB / {best.ssim_affine:.2f}")
        recons.append(row)
        captions.append(text)
    draw_tiles(path, [truths, *recons],
               column_titles=[f"r{c[0]} h{c[1]}\n#{c[2]}" for c in columns],
               row_labels=["original", *(verdict.label(s) for s in settings)],
               captions=[[""] * len(columns), *captions])
    caption = (f"Seed {seed}: every attacked image (r = round, h = hospital, # = index in the "
               "train split), originals on top; each tile is the reconstruction of the attack "
               "that leaked most on that image (by PSNR up to brightness/contrast), captioned "
               "attack, PSNR b/c (dB) / SSIM b/c.")
    if cut:
        caption += (f" More than {MAX_MOSAIC_ROWS} settings: each defense at its most private "
                    "strength only.")
    if dropped:
        caption += f" {dropped} further attacked image(s) not shown."
    return caption


def _wrap(text: str, width: int) -> str:
    words, lines, line = text.split(), [], ""
    for word in words:
        if line and len(line) + 1 + len(word) > width:
            lines.append(line)
            line = word
        else:
            line = f"{line} {word}".strip()
    return "\n".join([*lines, line])


# ---- per-hospital risk -----------------------------------------------------------------------
@dataclass(frozen=True)
class HospitalRisk:
    """One attacked hospital under one setting.

    Attributes:
        setting: defense, strength, grid point.
        counts: per category of :data:`RISK_CATEGORIES`, the attacked images (pooled over
            seeds; an image once, at its most exposed round).
        shares: per category, the share of the images per seed, mean ± interval over seeds.
        scores: ``ssim_affine``, ``psnr_affine``, ``leak_*`` and ``prior_ssim_affine`` of this
            hospital's images, each at its most exposed (every attack and round), mean ±
            interval over seeds.
    """

    setting: Setting
    counts: dict[str, int]
    shares: dict[str, Interval]
    scores: dict[str, Interval]

    @property
    def total(self) -> int:
        return sum(self.counts.values())


@dataclass(frozen=True)
class Hospital:
    """An attacked client and what the records say about it."""

    client: int
    dataset_sizes: list[int]
    batch_sizes: list[int]
    images_per_update: list[int]
    rounds: list[int]
    risks: list[HospitalRisk]

    def title(self) -> str:
        sizes = _range_text(self.dataset_sizes)
        return (f"Hospital {self.client}: {sizes} image{'' if sizes == '1' else 's'}, "
                f"batch size {_range_text(self.batch_sizes)}")

    def context(self) -> str:
        rounds = ", ".join(map(str, self.rounds))
        images = _range_text(self.images_per_update)
        return (f"Attacked in round{'' if len(self.rounds) == 1 else 's'} {rounds}; {images} "
                f"image{'' if images == '1' else 's'} reconstructed per attacked update.")


def _range_text(values: Sequence[int]) -> str:
    if not values:
        return "?"
    low, high = min(values), max(values)
    return str(low) if low == high else f"{low}-{high} (by seed)"


def _rank(category: str) -> int:
    return RISK_CATEGORIES.index(category)


def hospital_risks(verdict: Verdict) -> list[Hospital]:
    """Per attacked hospital, per setting, its images by :func:`risk_category`, each image at
    its most exposed (:func:`~fl_shadow.verdict.most_exposed`: every attack, every round)."""
    exposed_rows = most_exposed(verdict.rows)
    sizes: dict[int, set[int]] = defaultdict(set)
    for record in verdict.records.federations:
        for fit in record.get("fit", []):
            sizes[int(fit["client"])].add(int(fit["num_examples"]))
    names = ["ssim_affine", "psnr_affine", "leak_ssim_affine", "leak_psnr_affine",
             "prior_ssim_affine"]
    attack_rows = [r for r in verdict.rows if r["attack"] != WORST_CASE]
    out = []
    for client in verdict.clients:
        mine = [r for r in exposed_rows if int(r["client"]) == client]
        # One (setting, "exposed") cell per setting: per seed the mean over the images.
        scores = privacy_table([{**r, "attack": EXPOSED} for r in mine], names)
        risks = []
        for setting in verdict.settings:
            per_seed: dict[int, list[str]] = defaultdict(list)
            for row in mine:
                if row["key"].setting == setting:
                    per_seed[row["key"].seed].append(risk_category(
                        ssim_affine=float(row.get("ssim_affine", math.nan)),
                        leak_ssim_affine=float(row.get("leak_ssim_affine", math.nan)),
                        leak_psnr_affine=float(row.get("leak_psnr_affine", math.nan))))
            if not per_seed:
                continue
            counts = {c: sum(v.count(c) for v in per_seed.values()) for c in RISK_CATEGORIES}
            shares = {c: mean_ci(v.count(c) / len(v) for v in per_seed.values())
                      for c in RISK_CATEGORIES}
            risks.append(HospitalRisk(setting, counts, shares,
                                      scores.get((setting, EXPOSED), {})))
        attacked = [r for r in attack_rows if int(r["client"]) == client]
        out.append(Hospital(
            client=client, dataset_sizes=sorted(sizes.get(client, set())),
            batch_sizes=sorted({int(r["batch_size"]) for r in attacked}),
            images_per_update=sorted({int(r["num_images"]) for r in attacked}),
            rounds=sorted({int(r["round"]) for r in attacked}), risks=risks))
    return out


def share_text(interval: Interval) -> str:
    """A share as ``"67% [0-100%]"``: the mean, then its 95% interval clipped to [0, 100]
    (a Student-t interval over a few seeds can reach past either end)."""
    mean = f"{100 * interval.mean:.0f}%"
    if not math.isfinite(interval.half_width) or interval.half_width == 0:
        return mean
    low, high = (min(100.0, max(0.0, 100 * v)) for v in (interval.low, interval.high))
    return f"{mean} [{low:.0f}–{high:.0f}%]"


def risk_sentence(verdict: Verdict, risk: HospitalRisk) -> str:
    """Plain words for a data protection officer, with the numbers: how many of the hospital's
    attacked images fall in each category (share per seed, mean ± interval), and the worst
    attack's SSIM b/c next to what public data alone reaches."""
    seeds = max((i.n for i in risk.shares.values()), default=0)
    images = f"{_count(risk.total, 'attacked image')} over {_count(seeds, 'seed')}"
    label = verdict.label(risk.setting)
    if risk.counts[NOT_BEYOND_PRIOR] == risk.total:
        text = f"Under {label}: none of its {images} was rebuilt beyond what public data shows."
    else:
        parts = [f"{risk.counts[c]} {c} ({share_text(risk.shares[c])})" for c in RISK_CATEGORIES
                 if c != UNJUDGED or risk.counts[c]]
        text = f"Under {label}: of its {images}, " + ", ".join(parts) + "."
    s = risk.scores
    if "ssim_affine" in s and "prior_ssim_affine" in s:
        text += (f" Worst attack's SSIM up to brightness/contrast (any round) {s['ssim_affine'].text(3)}, "
                 f"public data alone {s['prior_ssim_affine'].text(3)}.")
    return text


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def risk_header() -> list[str]:
    """The per-hospital table's column titles (:func:`risk_cells`)."""
    return ["defense", *RISK_CATEGORIES[:3], "SSIM b/c (worst attack, any round)", "prior SSIM b/c",
            "PSNR b/c above prior (dB)", "SSIM b/c above prior"]


def risk_cells(verdict: Verdict, risk: HospitalRisk) -> list[str]:
    """A setting's row of the per-hospital table: counts (shares) and the scores."""
    s = risk.scores
    return [verdict.label(risk.setting),
            *(f"{risk.counts[c]} ({share_text(risk.shares[c])})" for c in RISK_CATEGORIES[:3]),
            interval_text(s.get("ssim_affine"), 3), interval_text(s.get("prior_ssim_affine"), 3),
            interval_text(s.get("leak_psnr_affine"), 2),
            interval_text(s.get("leak_ssim_affine"), 3)]


def plot_hospital(verdict: Verdict, hospital: Hospital, pairs: Sequence[Pair],
                  pictures: Pictures, path: Path) -> bool:
    """Per setting, the hospital's most recognisable reconstruction (highest SSIM b/c of any
    attack, seed and round) under its original; False when there is none to show."""
    shown = []
    for risk in hospital.risks:
        candidates = [p for p in pairs if p.client == hospital.client
                      and p.key.setting == risk.setting and math.isfinite(p.ssim_affine)]
        if candidates:
            shown.append((risk.setting, max(candidates, key=lambda p: p.ssim_affine)))
    if not shown:
        return False
    draw_tiles(path, [[pictures.get(p, "truth") for _, p in shown],
                      [pictures.get(p, "recon") for _, p in shown]],
               column_titles=[verdict.label(setting) for setting, _ in shown],
               row_labels=["original", "worst reconstruction"],
               captions=[[""] * len(shown),
                         [f"{p.attack}, seed {p.key.seed}, r{p.round}\n"
                          f"{p.psnr_affine:.1f} dB / {p.ssim_affine:.2f}" for _, p in shown]],
               tile_inches=1.5, label_inches=1.2)
    return True


HOSPITAL_CAPTION = ("Top: the original; bottom: its most recognisable reconstruction under "
                    "each defense (highest SSIM up to brightness/contrast over every attack, "
                    "seed and round), captioned attack, seed, round, PSNR b/c (dB) / SSIM b/c.")


def write_risk_markdown(verdict: Verdict, hospitals: Sequence[Hospital],
                        pictures_of: Mapping[int, str], path: Path) -> None:
    lines = ["# Per-hospital risk", "", f"Rule: {RISK_RULE}", ""]
    for hospital in hospitals:
        lines += [f"## {hospital.title()}", "", hospital.context(), ""]
        lines += [f"- {risk_sentence(verdict, r)}" for r in hospital.risks]
        lines += ["", _markdown_table(risk_header(),
                                      [risk_cells(verdict, r) for r in hospital.risks]), ""]
        if hospital.client in pictures_of:
            lines += [f"![original vs worst reconstruction]({pictures_of[hospital.client]})",
                      "", HOSPITAL_CAPTION, ""]
    path.write_text("\n".join(lines))


# ---- what was run ----------------------------------------------------------------------------
def run_summary(verdict: Verdict) -> list[tuple[str, str]]:
    """``(what, value)`` lines: the axes of the sweep, the base config, the time it took."""
    records, spec = verdict.records, verdict.records.spec
    defenses = []
    for setting_group in _curves(verdict).values():
        defense, grid = setting_group[0][0], setting_group[0][2]
        axis = next((d for d in spec.get("defenses", []) if d.get("label") == defense), {})
        text = defense + (f" ({axis['name']})" if axis.get("name") else "")
        if setting_group[0][1] is not None:
            text += (f": {axis.get('strength') or 'strength'} = "
                     + ", ".join(strength_text(s[1]) for s in setting_group))
        if axis.get("params"):
            text += f"; {json.dumps(axis['params'])}"
        if grid:
            text += "; " + ", ".join(f"{k} = {v}" for k, v in grid)
        defenses.append(text)
    attacks = []
    for label in verdict.attacks:
        if label == WORST_CASE:
            continue
        record = next((r for r in records.attacks if r["attack"] == label), {})
        text = label + (f" ({record['name']})" if record.get("name") else "")
        text += " adaptive" if record.get("adaptive") else ""
        if record.get("params"):
            text += f"; {json.dumps(record['params'])}"
        attacks.append(text)
    lines = [("sweep", str(spec.get("name", "?"))), ("reference", verdict.reference),
             ("defenses", " | ".join(defenses)), ("attacks", " | ".join(attacks)),
             ("seeds", ", ".join(map(str, verdict.seeds))),
             ("attacked rounds", ", ".join(map(str, verdict.rounds)) +
              (f" (spec: {spec['rounds']})" if "rounds" in spec else "")),
             ("attacked clients", ", ".join(map(str, verdict.clients))),
             ("cells", (f"{len(records.federations)} federation(s), {len(records.attacks)} "
                        f"attack record(s), {len(records.planned)} planned"))]
    if spec.get("overrides"):
        lines.append(("overrides", ", ".join(map(str, spec["overrides"]))))
    lines += _config_summary(records.federations)
    compute = sum(float(r.get("seconds", 0.0)) for r in records.federations) + sum(
        float(r.get("seconds", 0.0)) for r in records.attacks)
    lines.append(("compute time", (f"{compute / 60:.1f} min (sum over cells of the replay and "
                                   "the attacks; with parallel jobs the wall time is less)")))
    return lines


def _config_summary(federations: Sequence[Mapping[str, Any]]) -> list[tuple[str, str]]:
    config = federations[0].get("config") or {}
    if not config:
        return []

    def part(section: str, keys: Sequence[str]) -> str:
        values = config.get(section, {})
        return ", ".join(f"{k} = {values[k]}" for k in keys if values.get(k) is not None)

    return [("data", part("data", ("dataset", "image_size", "channels", "test_fraction"))),
            ("partition", part("partition", ("scheme", "num_clients", "alpha", "sizes",
                                             "batch_sizes"))),
            ("model", part("model", ("name", "width", "norm"))),
            ("training", part("train", ("rounds", "local_epochs", "local_steps", "optimizer",
                                        "lr", "momentum"))),
            ("strategy", part("strategy", ("name", "fraction_fit"))),
            ("threat model", part("attack", ("labels", "bn_statistics", "max_images")))]


# ---- report.html -----------------------------------------------------------------------------
CSS = """
body{font-family:-apple-system,"Segoe UI",Helvetica,Arial,sans-serif;margin:24px auto;
max-width:1320px;color:#222;line-height:1.45;padding:0 16px}
h1{font-size:26px;margin-bottom:4px}h2{margin-top:34px;border-bottom:2px solid #ddd;
padding-bottom:4px}h3{margin-top:22px}
table{border-collapse:collapse;font-size:12px;margin:8px 0}
th,td{border:1px solid #ccc;padding:3px 5px;text-align:right}
th{background:#f1f3f5;vertical-align:bottom;font-weight:600;min-width:44px}
td.t,th.t{text-align:left}td.t{white-space:nowrap}
tr.wc td{background:#fff7e0;font-weight:600}tr.base td{background:#eef5ff;font-style:italic}
.scroll{overflow-x:auto;max-width:100%}
.banner{background:#fff3cd;border:1px solid #e0c060;padding:8px 12px;border-radius:4px}
.ok{background:#e6f4ea;border-color:#9bc8a6}
ul.warn li{margin:3px 0}.where{color:#666;font-size:12px}
img{max-width:100%;border:1px solid #ddd}figure{margin:12px 0}
figcaption{font-size:13px;color:#444;max-width:1100px}
dl{display:grid;grid-template-columns:160px 1fr;gap:3px 12px}dt{font-weight:600}dd{margin:0}
.rule{background:#f6f6f6;padding:8px 12px;border-left:4px solid #888}
"""


def _e(text: Any) -> str:
    return html.escape(str(text), quote=True)


def _html_table(header: Sequence[str], rows: Sequence[Sequence[str]], *, text_columns: int,
                row_classes: Sequence[str] = ()) -> str:
    def cells(values: Sequence[str], tag: str) -> str:
        # A figure may wrap before its ± and its significance mark only (narrow columns).
        return "".join(f"<{tag}{' class=t' if i < text_columns else ''}>"
                       f"{_e(v).replace(' ± ', ' ±' + NBSP).replace(' *', NBSP + '*')}</{tag}>"
                       for i, v in enumerate(values))
    body = "".join(f"<tr class='{row_classes[i] if i < len(row_classes) else ''}'>"
                   f"{cells(r, 'td')}</tr>" for i, r in enumerate(rows))
    return (f"<div class=scroll><table><thead><tr>{cells(header, 'th')}</tr></thead>"
            f"<tbody>{body}</tbody></table></div>")


def _img(path: Path, alt: str) -> str:
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return f'<img alt="{_e(alt)}" src="data:image/png;base64,{data}">'


def _figure(path: Path | None, alt: str, caption: str) -> str:
    """An embedded picture; its caption (none when the picture carries its own)."""
    if path is None:
        return f"<p><em>{_e(caption)}</em></p>"
    below = f"<figcaption>{_e(caption)}</figcaption>" if caption else ""
    return f"<figure>{_img(path, alt)}{below}</figure>"


def render_html(verdict: Verdict, files: ReportFiles, *, mosaic_caption: str | None,
                hospitals: Sequence[Hospital], hospital_pictures: Mapping[int, Path]) -> str:
    """The page (see the module docstring); every text escaped."""
    name = verdict.records.spec.get("name", "sweep")
    groups = grouped_warnings(verdict.warnings)
    out = ["<!DOCTYPE html><html lang=en><head><meta charset=utf-8>",
           f"<title>Privacy verdict: {_e(name)}</title><style>{CSS}</style></head><body>",
           f"<h1>Privacy verdict: sweep {_e(name)}</h1>",
           (f"<p>Reference defense: <b>{_e(verdict.reference)}</b>. Every figure is the mean "
            "± 95% interval over seeds.</p>")]
    if groups:
        out.append(f"<p class=banner><b>{len(groups)} warning(s)</b>: "
                   "see <a href='#warnings'>Warnings</a> below.</p>")
    else:
        out.append("<p class='banner ok'>No warnings in the records.</p>")
    out.append("<h2>What was run</h2><dl>")
    out += [f"<dt>{_e(k)}</dt><dd>{_e(v)}</dd>" for k, v in run_summary(verdict)]
    out.append("</dl>")
    out.append("<h2>Verdict per defense</h2><ul>")
    out += [f"<li>{_e(headline(verdict, s))}</li>" for s in verdict.settings]
    out.append(f"</ul><p>{_e(HEADLINE_NOTE)}</p>")
    out.append(_html_table(headline_header(), headline_cells(verdict), text_columns=2))
    out.append("<h2 id=warnings>Warnings</h2>")
    if groups:
        out.append("<ul class=warn>")
        out += [f"<li>{_e(message)} <span class=where>({_e('; '.join(where))})</span></li>"
                for message, where in groups]
        out.append("</ul>")
    else:
        out.append("<p>None.</p>")
    out.append(f"<h2>Table</h2><p>{_e(TABLE_NOTE)}</p>")
    classes = ["wc" if row.attack == WORST_CASE else "" for row in verdict.table]
    out.append(_html_table(table_header(), table_cells(verdict), text_columns=3,
                           row_classes=classes))
    baselines = baseline_cells(verdict)
    if baselines:
        out.append("<h3>No-information baselines (on the reference's attacked images)</h3>")
        out.append(_html_table(baseline_header(), baselines, text_columns=1,
                               row_classes=["base"] * len(baselines)))
    out.append("<h2>Privacy against utility</h2>")
    out.append(_figure(files.pareto_png, PARETO_CAPTION, ""))
    if files.rounds_png is not None:
        out.append("<h2>Privacy across rounds</h2>")
        out.append(_figure(files.rounds_png, "worst-case leakage per attacked round", ""))
    out.append("<h2>Reconstructions</h2>")
    out.append(_figure(files.mosaic_png, "mosaic",
                       mosaic_caption or "No reconstruction was recorded."))
    out.append(f"<h2>Per-hospital risk</h2><p class=rule>{_e(RISK_RULE)}</p>")
    for hospital in hospitals:
        out.append(f"<h3>{_e(hospital.title())}</h3><p>{_e(hospital.context())}</p><ul>")
        out += [f"<li>{_e(risk_sentence(verdict, r))}</li>" for r in hospital.risks]
        out.append("</ul>")
        out.append(_html_table(risk_header(), [risk_cells(verdict, r) for r in hospital.risks],
                               text_columns=1))
        if hospital.client in hospital_pictures:
            out.append(_figure(hospital_pictures[hospital.client],
                               f"hospital {hospital.client}", HOSPITAL_CAPTION))
    out.append("</body></html>")
    return "\n".join(out)


# ---- the entry point -------------------------------------------------------------------------
@dataclass(frozen=True)
class ReportFiles:
    """The files :func:`write_report` wrote (under ``<out_dir>/report/``).

    Attributes:
        folder: the report's folder.
        html: the self-contained page.
        table_md, table_csv: the table.
        headlines_md: one row per defense setting: the worst case, its change, the cost.
        risk_md: the per-hospital risk.
        pareto_png: privacy against utility.
        mosaic_png: the reconstructions (None: the sweep recorded none).
        rounds_png: privacy per attacked round (None: one round was attacked).
        hospital_pngs: per attacked client, its originals vs worst reconstructions.
    """

    folder: Path
    html: Path
    table_md: Path
    table_csv: Path
    headlines_md: Path
    risk_md: Path
    pareto_png: Path
    mosaic_png: Path | None
    rounds_png: Path | None
    hospital_pngs: dict[int, Path]


def write_report(out_dir: Path, *, reference: str | None = None) -> ReportFiles:
    """Write a sweep's report into ``<out_dir>/report/`` (see the module docstring).

    Args:
        out_dir: the sweep's folder (``sweep.json`` and ``cells/``).
        reference: the defense differences are taken against; None: the spec's ``reference``
            (``fedavg`` when ``sweep.json`` is missing).

    Returns:
        The files written.

    Raises:
        NotASweepFolder: ``out_dir`` is not a sweep folder or holds no federation record.
        ValueError: ``reference`` is not a defense of the sweep.
    """
    records = read_sweep(Path(out_dir))
    reference = reference if reference is not None else str(
        records.spec.get("reference", "fedavg"))
    verdict = build_verdict(records, reference)
    folder = Path(out_dir) / REPORT_FOLDER
    folder.mkdir(parents=True, exist_ok=True)
    pairs = pairs_of(records.attacks)
    pictures = Pictures(records.folders)

    write_table_markdown(verdict, folder / "table.md")
    write_headlines_markdown(verdict, folder / "headlines.md")
    write_table_csv(verdict, folder / "table.csv")
    plot_pareto(verdict, folder / "pareto.png")
    rounds_png = None
    if len(verdict.rounds) > 1:
        rounds_png = folder / "rounds.png"
        plot_rounds(verdict, rounds_png)
    mosaic_caption = plot_mosaic(verdict, pairs, pictures, folder / "mosaic.png")
    hospitals = hospital_risks(verdict)
    hospital_pngs = {}
    for hospital in hospitals:
        path = folder / f"risk-hospital{hospital.client}.png"
        if plot_hospital(verdict, hospital, pairs, pictures, path):
            hospital_pngs[hospital.client] = path
    write_risk_markdown(verdict, hospitals, {k: p.name for k, p in hospital_pngs.items()},
                        folder / "risk.md")
    files = ReportFiles(folder=folder, html=folder / "report.html",
                        table_md=folder / "table.md", table_csv=folder / "table.csv",
                        headlines_md=folder / "headlines.md",
                        risk_md=folder / "risk.md", pareto_png=folder / "pareto.png",
                        mosaic_png=folder / "mosaic.png" if mosaic_caption else None,
                        rounds_png=rounds_png, hospital_pngs=hospital_pngs)
    files.html.write_text(render_html(verdict, files, mosaic_caption=mosaic_caption,
                                      hospitals=hospitals, hospital_pictures=hospital_pngs),
                          encoding="utf-8")
    for message, where in grouped_warnings(verdict.warnings):
        log.warning("%s (%s)", message, "; ".join(where))
    log.info("report of %d setting(s) written to %s", len(verdict.settings), files.html)
    return files


__all__ = ["BASELINES", "COLUMNS", "MAX_MOSAIC_COLUMNS", "MAX_MOSAIC_ROWS", "NOT_BEYOND_PRIOR",
           "PARTLY", "RECOGNISABLE", "RISK_CATEGORIES", "RISK_RULE", "UNJUDGED", "Column",
           "Hospital", "HospitalRisk", "Pair", "Pictures", "ReportFiles", "SweepRecords",
           "TableRow", "Verdict", "build_verdict", "draw_tiles", "grouped_warnings",
           "headline", "hospital_risks", "interval_text", "pairs_of", "read_sweep",
           "risk_category", "risk_sentence", "setting_label", "share_text", "write_report"]
