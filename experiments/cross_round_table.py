"""The cross-round attacker over every round of a sweep (issue 15, item 6): per setting, hospital
and round, Inverting Gradients alone against the attacker that combines its reconstructions of
the same hospital over the rounds so far (``combine_rounds``; :mod:`fl_shadow.cross_round`),
and the settings against each other, paired by seed.

    python experiments/cross_round_table.py experiments/results/sweeps/shadow-cross-round \\
        --versus input-noise-fg
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from compare_settings import text

from fl_shadow.metrics import mean_ci, paired_difference
from fl_shadow.threads import set_torch_threads
from fl_shadow.verdict import image_rows, seed_means
from fl_shadow.verdict_report import read_sweep

PLAIN, CROSS = "inverting-gradients", "inverting-gradients-cross-round"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("sweep", type=Path)
    parser.add_argument("--reference", default="fedavg")
    parser.add_argument("--versus", default=None, help="a setting's label to pair against")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    set_torch_threads()
    rows = image_rows(read_sweep(args.sweep).attacks)
    settings = {r["key"].setting[0]: r["key"].setting for r in rows}
    rounds = sorted({int(r["round"]) for r in rows})
    clients = sorted({int(r["client"]) for r in rows})
    lines = [f"Sweep `{args.sweep}`: Inverting Gradients alone -> the cross-round attacker "
             "(its reconstructions of the hospital in rounds 1..r combined), mean ± 95% "
             "interval over seeds; Δ paired by seed, * = the interval excludes 0.", ""]
    for score, digits in (("ssim_affine", 3), ("psnr_affine", 2)):
        others = [s for s in settings if s != args.reference]
        header = ["hospital", "round", *[f"{s}: alone -> combined" for s in settings],
                  *[f"Δ combined {s} - {args.reference}" for s in others]]
        if args.versus:
            header += [f"Δ combined {s} - {args.versus}" for s in others if s != args.versus]
        lines += [f"### {score}", "", "| " + " | ".join(header) + " |",
                  "|---|---|" + "---:|" * (len(header) - 2)]
        for client in clients:
            for rnd in rounds:
                m = seed_means(rows, score, where=lambda r, rnd=rnd, client=client:
                               int(r["round"]) == rnd and int(r["client"]) == client)
                cells = [f"h{client}", str(rnd)]
                combined = {}
                for name, setting in settings.items():
                    alone, both = m.get((setting, PLAIN)), m.get((setting, CROSS))
                    if not alone or not both:
                        cells.append("—")
                        continue
                    combined[name] = both
                    cells.append(f"{mean_ci(alone.values()).mean:.{digits}f} -> "
                                 f"{mean_ci(both.values()).mean:.{digits}f}")
                pairs = [(s, args.reference) for s in others]
                if args.versus:
                    pairs += [(s, args.versus) for s in others if s != args.versus]
                for a, b in pairs:
                    cells.append(text(paired_difference(combined[a], combined[b]), digits,
                                      delta=True) if a in combined and b in combined else "—")
                lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    table = "\n".join(lines)
    if args.out:
        args.out.write_text(table)
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
