"""FedAvg vs. the Shadow Defense under Inverting Gradients (run by hand; results into the repo).

Runs two federations with ``fl-shadow run`` -- ``fl_shadow/configs/default.yaml`` (no defense)
and ``fl_shadow/configs/shadow_paper.yaml`` (the same federation with the Shadow Defense) -- then
compares, from their results folders:

* privacy: PSNR / SSIM / LPIPS of the attacker's reconstructions, whole image and inside the
  Grad-CAM++ foreground, per attacked round and client, and the drop Shadow vs. FedAvg;
* utility: test accuracy and macro-F1 of the final global model;
* client round time: mean ``fit`` seconds per client, Shadow / FedAvg, in round 1 (latent fit
  + shadow training), the other shadow-training rounds, and the rounds after.

A run whose folder already says ``completed`` is reused, so a crash loses nothing.

Usage::

    python experiments/shadow_vs_fedavg.py [--out-dir results/shadow_vs_fedavg]
        [--report experiments/results/shadow_vs_fedavg_cpu.md] [--set key=value ...]
        [--shadow-set key=value ... --shadow-name shadow-w0.5]

``--shadow-set`` changes only the defended run (e.g. ``defense.params.noise_rescale=0.5``);
give such a variant its own ``--shadow-name`` so it does not reuse another variant's folder.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
from pathlib import Path
from typing import Any

import torch
from runs import ROOT, load_run, mean_fit_seconds, run_once

from fl_shadow.config import SHIPPED_CONFIGS, load_config

CONFIGS = {"fedavg": SHIPPED_CONFIGS / "default.yaml",
           "shadow": SHIPPED_CONFIGS / "shadow_paper.yaml"}
METRICS = ("psnr", "ssim", "lpips", "fg_psnr", "fg_ssim", "fg_lpips")


def compare(fedavg: dict[str, list[dict[str, Any]]], shadow: dict[str, list[dict[str, Any]]],
            final_round: int, num_rounds: int) -> dict[str, Any]:
    privacy = []
    keyed = {(r["round"], r["client"]): r for r in shadow["privacy"]}
    for base in fedavg["privacy"]:
        other = keyed.get((base["round"], base["client"]))
        if other is None:
            continue
        row: dict[str, Any] = {"round": base["round"], "client": base["client"],
                               "images": base["num_images"]}
        for m in METRICS:
            row[f"fedavg_{m}"] = base.get(m, float("nan"))
            row[f"shadow_{m}"] = other.get(m, float("nan"))
        privacy.append(row)
    final = lambda run: run["utility"][-1]  # noqa: E731
    phases = {"round 1 (latent fit + shadow training)": {1},
              f"rounds 2-{final_round} (shadow training)": set(range(2, final_round + 1)),
              f"rounds {final_round + 1}-{num_rounds} (frozen noise map)":
                  set(range(final_round + 1, num_rounds + 1))}
    timing = {}
    for phase, rounds in phases.items():
        a, b = mean_fit_seconds(fedavg["fit"], rounds), mean_fit_seconds(shadow["fit"], rounds)
        timing[phase] = {"fedavg_s": a, "shadow_s": b, "ratio": b / a if a else float("nan")}
    return {
        "privacy": privacy,
        "utility": {"fedavg": {k: final(fedavg)[k] for k in ("round", "accuracy", "macro_f1")},
                    "shadow": {k: final(shadow)[k] for k in ("round", "accuracy", "macro_f1")}},
        "client_round_seconds": timing,
    }


def markdown(result: dict[str, Any], machine: str, overrides: list[str]) -> str:
    changed = f" with {', '.join(f'`{o}`' for o in overrides)}" if overrides else ""
    lines = ["# FedAvg vs. Shadow Defense under Inverting Gradients (offline default)", "",
             f"Machine: {machine}. Configs: `fl_shadow/configs/default.yaml` vs. "
             f"`fl_shadow/configs/shadow_paper.yaml`{changed}; produced by "
             "`experiments/shadow_vs_fedavg.py`.",
             "", "## Privacy (higher PSNR/SSIM and lower LPIPS = more leakage)", "",
             "| round | client | images | PSNR FedAvg | PSNR Shadow | drop | SSIM FedAvg | "
             "SSIM Shadow | drop | LPIPS FedAvg | LPIPS Shadow | FG PSNR FedAvg | "
             "FG PSNR Shadow | FG SSIM FedAvg | FG SSIM Shadow | FG LPIPS FedAvg | "
             "FG LPIPS Shadow |", "|" + "---:|" * 17]
    for r in result["privacy"]:
        lines.append(
            f"| {r['round']} | {r['client']} | {r['images']} | {r['fedavg_psnr']:.2f} | "
            f"{r['shadow_psnr']:.2f} | {r['fedavg_psnr'] - r['shadow_psnr']:+.2f} | "
            f"{r['fedavg_ssim']:.3f} | {r['shadow_ssim']:.3f} | "
            f"{r['fedavg_ssim'] - r['shadow_ssim']:+.3f} | {r['fedavg_lpips']:.4f} | "
            f"{r['shadow_lpips']:.4f} | {r['fedavg_fg_psnr']:.2f} | {r['shadow_fg_psnr']:.2f} | "
            f"{r['fedavg_fg_ssim']:.3f} | {r['shadow_fg_ssim']:.3f} | "
            f"{r['fedavg_fg_lpips']:.4f} | {r['shadow_fg_lpips']:.4f} |")
    u = result["utility"]
    lines += ["", "## Utility (final global model, test split)", "",
              "| | accuracy | macro-F1 |", "|---|---:|---:|",
              f"| FedAvg | {u['fedavg']['accuracy']:.4f} | {u['fedavg']['macro_f1']:.4f} |",
              f"| Shadow | {u['shadow']['accuracy']:.4f} | {u['shadow']['macro_f1']:.4f} |",
              f"| difference | {u['shadow']['accuracy'] - u['fedavg']['accuracy']:+.4f} | "
              f"{u['shadow']['macro_f1'] - u['fedavg']['macro_f1']:+.4f} |",
              "", "## Client round time (mean fit seconds per client)", "",
              "| rounds | FedAvg s | Shadow s | Shadow / FedAvg |", "|---|---:|---:|---:|"]
    for phase, t in result["client_round_seconds"].items():
        lines.append(f"| {phase} | {t['fedavg_s']:.3f} | {t['shadow_s']:.3f} | "
                     f"{t['ratio']:.1f}x |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out-dir", type=Path, default=ROOT / "results/shadow_vs_fedavg")
    parser.add_argument("--report", type=Path,
                        default=ROOT / "experiments/results/shadow_vs_fedavg_cpu.md")
    parser.add_argument("--set", action="append", default=[],
                        help="override for both runs, e.g. train.rounds=4")
    parser.add_argument("--shadow-set", action="append", default=[],
                        help="override for the defended run only")
    parser.add_argument("--shadow-name", default="shadow",
                        help="folder name of the defended run under --out-dir")
    args = parser.parse_args(argv)
    runs = {}
    for name, folder, extra in (("fedavg", "fedavg", []),
                                ("shadow", args.shadow_name, args.shadow_set)):
        run_dir = args.out_dir / folder
        run_once(CONFIGS[name], run_dir, args.set + extra, name)
        runs[name] = load_run(run_dir)
    config = load_config(CONFIGS["shadow"], args.set + args.shadow_set)
    result = compare(runs["fedavg"], runs["shadow"],
                     int(config.defense.params.get("shadow_final_round", 20)), config.train.rounds)
    machine = (f"{platform.machine()}, {torch.get_num_threads()} torch threads, "
               f"{'CUDA' if torch.cuda.is_available() else 'CPU'}")
    result["machine"] = machine
    result["overrides"] = {"both": args.set, "shadow": args.shadow_set}
    args.report.parent.mkdir(parents=True, exist_ok=True)
    args.report.write_text(markdown(result, machine, args.set + args.shadow_set))
    args.report.with_suffix(".json").write_text(json.dumps(result, indent=2, default=float))
    print(args.report.read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
