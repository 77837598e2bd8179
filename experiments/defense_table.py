"""Privacy-utility table: every defense against Inverting Gradients on the offline default.

One federation per row, all from ``fl_shadow/configs/default.yaml`` (same data, partition,
seed, 10 rounds, attack on the 1-image and 4-image hospitals in rounds 1 and 10), each with one
defense at its default parameters (the Shadow Defense from ``shadow_paper.yaml``, which only sets its
training rounds to fit a 10-round run). For each row: attack PSNR / SSIM / LPIPS / MSE and the
reference classifier's accuracy on the reconstructions (mean over the attacked updates, and
per attacked round), final test accuracy and macro-F1 of the global model (and of the clients'
own models for FedKL), and the mean client round time.

A run whose folder already says ``completed`` is reused, so a crash loses nothing.

Usage::

    python experiments/defense_table.py [--out-dir results/defense_table]
        [--report experiments/results/defense_table_cpu.md] [--only dp,fedkl]

``--only`` takes results-folder names; rows already run are still tabled.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import statistics
import sys
from pathlib import Path
from typing import Any

# First, before anything loads torch: OMP_WAIT_POLICY=PASSIVE (fl_shadow.threads).
from fl_shadow.threads import set_torch_threads  # isort: skip

import torch
from runs import ROOT, load_run, mean_fit_seconds, run_once

from fl_shadow.config import SHIPPED_CONFIGS

DEFAULT = SHIPPED_CONFIGS / "default.yaml"
# (row label, results folder, config, overrides): the defaults, plus DP at a noise level that
# keeps the model trainable (at its default sigma = 1 the model does not learn at all here).
ROWS: list[tuple[str, str, Path, list[str]]] = [
    ("none (FedAvg)", "none", DEFAULT, []),
    ("dp", "dp", DEFAULT, ["defense.name=dp"]),
    ("dp, noise_multiplier 0.01", "dp-0.01", DEFAULT,
     ["defense.name=dp", "defense.params.noise_multiplier=0.01"]),
    ("clipping", "clipping", DEFAULT, ["defense.name=clipping"]),
    ("sparsification", "sparsification", DEFAULT, ["defense.name=sparsification"]),
    ("outpost", "outpost", DEFAULT, ["defense.name=outpost"]),
    ("censor", "censor", DEFAULT, ["defense.name=censor"]),
    ("fedkl", "fedkl", DEFAULT, ["defense.name=fedkl"]),
    ("fedkl, sigmoid lock", "fedkl-sigmoid", DEFAULT,
     ["defense.name=fedkl", "defense.params.activation=sigmoid"]),
    ("latent_minimax", "latent_minimax", DEFAULT, ["defense.name=latent_minimax"]),
    ("shadow", "shadow", SHIPPED_CONFIGS / "shadow_paper.yaml", []),
    ("soteria", "soteria", DEFAULT, ["defense.name=soteria"]),  # last: ~5 s per local step
]
PRIVACY = ("psnr", "ssim", "lpips", "mse", "ref_accuracy", "label_accuracy")


def _completed(run_dir: Path) -> bool:
    status = run_dir / "status.json"
    return status.exists() and json.loads(status.read_text()).get("state") == "completed"


def _mean(rows: list[dict[str, Any]], key: str) -> float:
    values = [float(r[key]) for r in rows if key in r]
    return statistics.fmean(values) if values else math.nan


def summarize(run: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    privacy = run["privacy"]
    final = run["utility"][-1]
    rounds = sorted({r["round"] for r in privacy})
    out: dict[str, Any] = {m: _mean(privacy, m) for m in PRIVACY}
    out["by_round"] = {str(rnd): {m: _mean([r for r in privacy if r["round"] == rnd], m)
                                  for m in PRIVACY} for rnd in rounds}
    out["ref_accuracy_truth"] = _mean(privacy, "ref_accuracy_truth")
    out["accuracy"], out["macro_f1"] = final["accuracy"], final["macro_f1"]
    last = max((r["round"] for r in run["client_utility"]), default=None)
    if last is not None:
        rows = [r for r in run["client_utility"] if r["round"] == last]
        total = sum(r["num_examples"] for r in rows)
        out["client_accuracy"] = sum(r["accuracy"] * r["num_examples"] for r in rows) / total
        out["client_macro_f1"] = sum(r["macro_f1"] * r["num_examples"] for r in rows) / total
    num_rounds = max(r["round"] for r in run["utility"])
    out["fit_seconds"] = mean_fit_seconds(run["fit"], set(range(1, num_rounds + 1)))
    epsilons = [float(r["defense_epsilon"]) for r in run["fit"] if "defense_epsilon" in r]
    if epsilons:
        out["epsilon"] = max(epsilons)
    return out


def markdown(table: dict[str, dict[str, Any]], machine: str, note: str = "") -> str:
    base = table.get("none (FedAvg)", {})
    lines = ["# Every defense against Inverting Gradients (offline default)", "",
             f"Machine: {machine}. Config: `fl_shadow/configs/default.yaml` with one defense at "
             "its default parameters per row (Shadow: `shadow_paper.yaml`); seed 0, 10 rounds; the "
             "attack targets the 1-image and 4-image hospitals in rounds 1 and 10. Produced by "
             "`experiments/defense_table.py`.", "",
             "Privacy columns are means over the four attacked updates (higher PSNR/SSIM, lower "
             "LPIPS/MSE and higher ref. accuracy = more leakage). Ref. acc.: share of "
             "reconstructions that a classifier trained on public data labels as the true "
             "image's class (on the true images themselves it scores "
             f"{base.get('ref_accuracy_truth', math.nan):.2f}). Utility: the final global model "
             "on the test split; FedKL's clients' own (keyed) models in brackets.", "",
             "| defense | PSNR | SSIM | LPIPS | MSE | ref. acc. | label acc. | "
             "PSNR r1 / r10 | accuracy | macro-F1 | F1 vs FedAvg | client s/round | "
             "time vs FedAvg |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for name, r in table.items():
        rounds = list(r["by_round"].values())
        by_round = " / ".join(f"{v['psnr']:.2f}" for v in rounds)
        acc, f1 = f"{r['accuracy']:.4f}", f"{r['macro_f1']:.4f}"
        if "client_accuracy" in r:
            acc += f" ({r['client_accuracy']:.4f})"
            f1 += f" ({r['client_macro_f1']:.4f})"
        d_f1 = r["macro_f1"] - base.get("macro_f1", math.nan)
        ratio = r["fit_seconds"] / base.get("fit_seconds", math.nan)
        label = name + (f" (ε={r['epsilon']:.1f})" if "epsilon" in r else "")
        lines.append(f"| {label} | {r['psnr']:.2f} | {r['ssim']:.3f} | {r['lpips']:.4f} | "
                     f"{r['mse']:.4f} | {r['ref_accuracy']:.2f} | {r['label_accuracy']:.2f} | "
                     f"{by_round} | {acc} | {f1} | {d_f1:+.4f} | {r['fit_seconds']:.3f} | "
                     f"{ratio:.1f}x |")
    if note:
        lines += ["", note]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out-dir", type=Path, default=ROOT / "results/defense_table")
    parser.add_argument("--report", type=Path,
                        default=ROOT / "experiments/results/defense_table_cpu.md")
    parser.add_argument("--note", default="", help="a paragraph appended to the report")
    parser.add_argument("--only", default="", help="comma-separated rows to run (default all)")
    args = parser.parse_args(argv)
    set_torch_threads()  # FL_SHADOW_THREADS, default 1
    wanted = {w.strip() for w in args.only.split(",") if w.strip()}
    table: dict[str, dict[str, Any]] = {}
    for name, folder, config, overrides in ROWS:
        run_dir = args.out_dir / folder
        if not wanted or folder in wanted:
            run_once(config, run_dir, overrides, name)
        elif not _completed(run_dir):
            continue
        table[name] = summarize(load_run(run_dir))
    machine = (f"{platform.machine()}, {torch.get_num_threads()} torch threads, "
               f"{'CUDA' if torch.cuda.is_available() else 'CPU'}")
    args.report.parent.mkdir(parents=True, exist_ok=True)
    args.report.write_text(markdown(table, machine, args.note))
    args.report.with_suffix(".json").write_text(
        json.dumps({"machine": machine, "rows": table}, indent=2, default=float))
    print(args.report.read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
