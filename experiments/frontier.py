"""The privacy-utility frontier of every defense, variant and control measured on one
federation (issue 15, item 6): which settings no other setting beats on both axes.

Reads several sweep folders of the same base federation (their committed records under
``experiments/results/sweeps/`` suffice), and per setting computes, paired by seed against the
reference (FedAvg) of its own sweep:

* the **utility cost**: the reference's final macro-F1 minus the setting's (lower is better);
* the **leakage**: per seed the larger of two SSIMs up to brightness/contrast: the worst case
  over the round-1 images every attack saw, and Inverting Gradients' mean in the last round
  (the only attack every sweep runs there; without it a defense active in round 1 only, such
  as CENSOR with ``rounds: 1``, would look perfect). The attacks are restricted to those
  *every* sweep ran, so every setting faces the same attacker (a sweep with an extra attack,
  the cross-round one, would otherwise look leakier);

then the settings on the Pareto front (:func:`fl_shadow.verdict.pareto_front`: no other is at
most as costly and at most as leaky, and better on one), on the means over seeds. A setting in
two sweeps (a copied cell) counts once. Writes a markdown table (every setting, the front
marked, with 95% intervals) and a scatter plot.

    python experiments/frontier.py experiments/results/sweeps/{cpu,shadow-controls,shadow-cost,\\
        shadow-controls-2,shadow-size} --name default
    python experiments/frontier.py experiments/results/sweeps/{shadow-ct-head,\\
        shadow-size-ct-head} --name ct_head
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from compare_settings import label, text
from matplotlib.figure import Figure

from fl_shadow.metrics import Interval, mean_ci, paired_difference
from fl_shadow.threads import set_torch_threads
from fl_shadow.verdict import (
    WORST_CASE,
    image_rows,
    pareto_front,
    seed_means,
    utility_values,
    with_worst_case,
)
from fl_shadow.verdict_report import read_sweep

RESULTS = Path(__file__).resolve().parent / "results"
LAST_ROUND_ATTACK = "inverting-gradients"


def common_attacks(folders: list[Path]) -> set[str]:
    sets = [{str(r["attack"]) for r in read_sweep(f).attacks} for f in folders]
    return set.intersection(*sets)


def measure(folder: Path, attacks: set[str], reference: str) -> dict[str, dict[str, Any]]:
    """Per setting label: its sweep, cost and leakage intervals."""
    records = read_sweep(folder)
    rows = with_worst_case([r for r in image_rows(records.attacks)
                            if str(r["attack"]) in attacks])
    # the worst case covers the images every attack saw: round 1 (GradInversion and GIAS
    # attack round 1 only), as in the sweep report and compare_settings.py
    worst = {name: {k[0]: v for k, v in seed_means(rows, name).items() if k[1] == WORST_CASE}
             for name in ("ssim_affine", "psnr_affine")}
    # the last round: Inverting Gradients is the attack every sweep runs there
    last = max(int(r["round"]) for r in rows)
    late = {k[0]: v for k, v in seed_means(
        rows, "ssim_affine", where=lambda r: int(r["round"]) == last).items()
        if k[1] == LAST_ROUND_ATTACK}
    f1 = {s: v["macro_f1"] for s, v in utility_values(records.federations).items()}
    refs = [s for s in f1 if s[0] == reference]
    if not refs:
        raise SystemExit(f"{folder}: no setting of the reference defense {reference!r}")
    out = {}
    for setting, per_seed in f1.items():
        if setting not in worst["ssim_affine"]:
            continue
        cost = (paired_difference(f1[refs[0]], per_seed) if setting != refs[0]
                else Interval(0.0, 0.0, len(per_seed)))
        first, final = worst["ssim_affine"][setting], late.get(setting, {})
        both = {seed: max(v, final.get(seed, v)) for seed, v in first.items()}
        out[label(setting)] = {
            "sweep": folder.name, "cost": cost, "round": last,
            "ssim": mean_ci(first.values()), "late": mean_ci(final.values()),
            "leak": mean_ci(both.values()),
            "psnr": mean_ci(worst["psnr_affine"][setting].values())}
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("sweeps", type=Path, nargs="+")
    parser.add_argument("--reference", default="fedavg")
    parser.add_argument("--name", default="default")
    args = parser.parse_args(argv)
    set_torch_threads()
    attacks = common_attacks(args.sweeps)
    settings: dict[str, dict[str, Any]] = {}
    for folder in args.sweeps:
        for name, values in measure(folder, attacks, args.reference).items():
            settings.setdefault(name, values)  # a copied cell counts once
    points = {n: (v["cost"].mean, v["leak"].mean) for n, v in settings.items()}
    front = pareto_front(points)
    order = sorted(settings, key=lambda n: points[n])
    lines = [f"# Privacy-utility frontier: `{args.name}`", "",
             f"`python experiments/frontier.py {' '.join(str(f) for f in args.sweeps)} "
             f"--name {args.name}`. Cost: {args.reference}'s final macro-F1 minus the "
             "setting's, paired by seed. Leakage (SSIM b/c): per seed the larger of the worst "
             "case over the round-1 images every attack saw and "
             f"{LAST_ROUND_ATTACK}'s mean in the last round; attacks {sorted(attacks)} (those "
             "every sweep ran). Mean ± 95% interval over seeds. **front**: no other setting is "
             "at most as costly and at most as leaky, on the means (with intervals of "
             "±0.05-0.5 on the cost, the front is a ranking of means, not a proof).", "",
             "| setting | sweep | macro-F1 cost | leakage SSIM b/c | round 1 worst SSIM b/c | "
             "last round IG SSIM b/c | round 1 worst PSNR b/c | front |",
             "|---|---|---:|---:|---:|---:|---:|:---:|"]
    for n in order:
        v = settings[n]
        late = text(v["late"], 3) if v["late"].n else "—"
        lines.append(f"| {n} | {v['sweep']} | {text(v['cost'], 3)} | {text(v['leak'], 3)} | "
                     f"{text(v['ssim'], 3)} | {late} | {text(v['psnr'], 2)} | "
                     f"{'**front**' if n in front else ''} |")
    out_md = RESULTS / f"frontier_{args.name}.md"
    out_md.write_text("\n".join(lines) + "\n")
    fig = Figure(figsize=(9, 6.5), dpi=110)
    ax = fig.subplots()
    for n in order:
        x, y = points[n]
        on = n in front
        ax.scatter([x], [y], s=40 if on else 18, color="C3" if on else "0.55", zorder=3)
        ax.annotate(n, (x, y), fontsize=6.5, xytext=(3, 2), textcoords="offset points",
                    color="black" if on else "0.4")
    ax.plot([points[n][0] for n in front], [points[n][1] for n in front], color="C3", lw=1)
    ax.set_xlabel(f"macro-F1 cost vs {args.reference} (lower is better)")
    ax.set_ylabel("leakage: SSIM b/c, worse of round 1 and the last round (lower is better)")
    ax.set_title(f"Privacy-utility frontier ({args.name}); red: the front")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(RESULTS / f"frontier_{args.name}.png")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
