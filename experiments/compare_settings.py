"""Paired comparisons between any two settings of a sweep, not only against the reference.

The sweep report (``fl-shadow sweep --report-only``) compares every setting with FedAvg. A
control at equal input distortion needs a second comparison: each setting against the control
*at the same strength* (for the noise defenses the strength is the target PSNR of the noised
input, so equal strength is equal distortion), paired by seed. This script prints, per setting:
the worst case over the round-1 images every attack saw (b/c and raw), Inverting Gradients'
SSIM b/c in the last attacked round, macro-F1, the differences to the reference and to the
control, and the per-hospital count of images rebuilt recognisably (each image at its most
exposed over every attack and round, the risk report's rule).

    python experiments/compare_settings.py results/sweeps/shadow-controls --versus input-noise
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from fl_shadow.metrics import Interval, mean_ci, paired_difference
from fl_shadow.threads import set_torch_threads
from fl_shadow.verdict import (
    WORST_CASE,
    Setting,
    image_rows,
    most_exposed,
    seed_means,
    strength_text,
    utility_values,
    with_worst_case,
)
from fl_shadow.verdict_report import RECOGNISABLE, read_sweep, risk_category

SCORES = ("psnr_affine", "ssim_affine", "psnr", "ssim")


def text(interval: Interval | None, digits: int, *, delta: bool = False) -> str:
    if interval is None:
        return "—"
    star = " *" if delta and interval.n > 1 and (interval.low > 0 or interval.high < 0) else ""
    return f"{interval.mean:.{digits}f} ± {interval.half_width:.{digits}f}{star}"


def label(setting: Setting) -> str:
    defense, strength, grid = setting
    extra = "".join(f", {k}={v}" for k, v in grid)
    return defense + ("" if strength is None else f" {strength_text(strength)}") + extra


def recognisable(rows: list[dict[str, Any]], setting: Setting, client: int) -> str:
    mine = [r for r in rows if r["key"].setting == setting and int(r["client"]) == client]
    hit = sum(risk_category(ssim_affine=r.get("ssim_affine", float("nan")),
                            leak_ssim_affine=r.get("leak_ssim_affine", float("nan")),
                            leak_psnr_affine=r.get("leak_psnr_affine", float("nan")))
              == RECOGNISABLE for r in mine)
    return f"{hit}/{len(mine)}" if mine else "—"


def compare(out_dir: Path, reference: str, versus: str | None,
            last_round_attack: str = "inverting-gradients") -> str:
    records = read_sweep(out_dir)
    rows = with_worst_case(image_rows(records.attacks))
    worst = {name: {k[0]: v for k, v in seed_means(rows, name).items() if k[1] == WORST_CASE}
             for name in SCORES}
    last_round = max(int(r["round"]) for r in rows)
    ig = {k[0]: v for k, v in seed_means(
        rows, "ssim_affine", where=lambda r: int(r["round"]) == last_round
        and r["attack"] == last_round_attack).items()}
    f1 = {s: v["macro_f1"] for s, v in utility_values(records.federations).items()}
    exposed = most_exposed(rows)
    clients = sorted({int(r["client"]) for r in exposed})
    settings = list(dict.fromkeys(k.setting for k in records.folders))
    refs = [s for s in settings if s[0] == reference]
    if not refs:
        raise SystemExit(f"{out_dir}: no setting of the reference defense {reference!r}")

    def delta(values: Mapping[Setting, Mapping[int, float]], a: Setting, b: Setting | None,
              digits: int) -> str:
        if b is None or a == b or a not in values or b not in values:
            return "—"
        return text(paired_difference(values[a], values[b]), digits, delta=True)

    header = ["setting", "worst PSNR b/c", "worst SSIM b/c", "worst PSNR raw",
              f"{last_round_attack} r{last_round} SSIM b/c", "macro-F1", f"Δ PSNR b/c vs {reference}",
              f"Δ SSIM b/c vs {reference}", f"Δ F1 vs {reference}"]
    if versus:
        header += [f"Δ PSNR b/c vs {versus}", f"Δ SSIM b/c vs {versus}", f"Δ F1 vs {versus}"]
    header += [f"recognisable h{c}" for c in clients]
    lines = ["| " + " | ".join(header) + " |", "|---|" + "---:|" * (len(header) - 1)]
    controls = [s for s in settings if versus and s[0] == versus]
    for setting in settings:
        ref = refs[0]
        # the control at the same strength (equal distortion); a control with one setting
        # is every setting's (e.g. against MixUp, whose strength is in other units)
        control = next((s for s in controls if s[1] == setting[1] and s[2] == setting[2]),
                       controls[0] if len(controls) == 1 else None)
        cells = [label(setting),
                 text(mean_ci(worst["psnr_affine"].get(setting, {}).values()), 2)
                 if setting in worst["psnr_affine"] else "—",
                 text(mean_ci(worst["ssim_affine"][setting].values()), 3)
                 if setting in worst["ssim_affine"] else "—",
                 text(mean_ci(worst["psnr"][setting].values()), 2)
                 if setting in worst["psnr"] else "—",
                 text(mean_ci(ig[setting].values()), 3) if setting in ig else "—",
                 text(mean_ci(f1[setting].values()), 3) if setting in f1 else "—",
                 delta(worst["psnr_affine"], setting, ref, 2),
                 delta(worst["ssim_affine"], setting, ref, 3), delta(f1, setting, ref, 3)]
        if versus:
            cells += [delta(worst["psnr_affine"], setting, control, 2),
                      delta(worst["ssim_affine"], setting, control, 3),
                      delta(f1, setting, control, 3)]
        cells += [recognisable(exposed, setting, c) for c in clients]
        lines.append("| " + " | ".join(cells) + " |")
    seeds = sorted({k.seed for k in records.folders})
    return (f"Sweep `{out_dir}`, seeds {seeds}; worst case over the round-1 images every attack "
            f"saw; mean ± 95% interval over seeds; Δ paired by seed, * = the interval excludes "
            f"0; the control is `{versus}` at the same strength (target PSNR), or its only "
            f"setting.\n\n"
            + "\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("sweep", type=Path)
    parser.add_argument("--reference", default="fedavg")
    parser.add_argument("--versus", default=None, help="the control's defense label")
    parser.add_argument("--last-round-attack", default="inverting-gradients")
    parser.add_argument("--out", type=Path, default=None, help="also write the table here")
    args = parser.parse_args(argv)
    set_torch_threads()  # FL_SHADOW_THREADS, default 1
    table = compare(args.sweep, args.reference, args.versus, args.last_round_attack)
    if args.out is not None:
        args.out.write_text(table)
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
