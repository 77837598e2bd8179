"""The sweep report: numbers equal to hand computation, every warning shown, one self-contained
page, images that decode, a CSV that parses.

The records are synthetic (the folder layout of :mod:`fl_shadow.apps.sweep`): FedAvg and DP at
two strengths, attacks ``a1`` and ``a2``, seeds 0-2, hospital 0 (one image, batch 1) and
hospital 1 (two images, batch 2), rounds 1 and 3 with the same scores. ``a2`` lists hospital
1's images in the reverse order, as a real attack's matching may.
"""

from __future__ import annotations

import base64
import csv
import io
import json
import math
import re
import statistics
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from fl_shadow import verdict_report as vr
from fl_shadow.apps import cli
from fl_shadow.metrics import Interval

T_975_2 = 4.302652729911275  # Student-t, 97.5% quantile, 2 degrees of freedom
SEEDS = (0, 1, 2)
ROUNDS = (1, 3)
SETTINGS = (("fedavg", None), ("dp", 0.1), ("dp", 0.5))
#: Final macro-F1 per setting and seed.
MACRO_F1 = {("fedavg", None): (0.70, 0.72, 0.74), ("dp", 0.1): (0.69, 0.73, 0.72),
            ("dp", 0.5): (0.20, 0.17, 0.14)}
FIT_SECONDS = {("fedavg", None): 1.0, ("dp", 0.1): 1.5, ("dp", 0.5): 2.0}
PRIOR_PSNR_AFFINE, PRIOR_SSIM_AFFINE = 18.0, 0.5

WARNING_DIVERGED = ("training diverged: the clients' mean train loss (weighted by their images) "
                    "rose from 1.2 (round 1) to 9.9 (round 3)")
WARNING_LABELS = "a2 recovered 1 of 2 labels wrongly (round 1, client 1)"
WARNING_ESCAPED = "loss < 1e-3 & <b>rising</b>"
SKIP_REASON = "defense dp has no attacker model (not modelled adaptively)"
UPDATE_SKIPPED = "the update was empty"


def image_indices(seed: int, client: int) -> list[int]:
    return [10 + 100 * seed] if client == 0 else [20 + 100 * seed, 21 + 100 * seed]


def psnr_affine(defense: str, strength: float | None, attack: str, seed: int,
                position: int) -> float:
    """``position``: the image's place in its hospital's batch (not in the attack's pairs)."""
    if defense == "fedavg":
        return 20.0 + seed if attack == "a1" else 19.0 + 2 * position
    return 17.0 - 10 * strength + seed if attack == "a1" else 16.0 + position


def ssim_affine(defense: str, attack: str, client: int, position: int) -> float:
    if defense == "fedavg":
        return 0.4 if attack == "a1" else (0.75 if (client, position) == (1, 1) else 0.45)
    return 0.3


def pairs_for(defense: str, strength: float | None, attack: str, seed: int,
              client: int) -> dict[str, list[float]]:
    indices = image_indices(seed, client)
    order = list(range(len(indices)))
    if attack == "a2":
        order.reverse()
    out: dict[str, list[float]] = {}
    for position in order:
        pa = psnr_affine(defense, strength, attack, seed, position)
        sa = ssim_affine(defense, attack, client, position)
        values = {"psnr": pa - 2, "psnr_affine": pa, "ssim": sa - 0.1, "ssim_affine": sa,
                  "lpips": 0.5 - 0.01 * pa, "ncc": sa, "fg_psnr": pa + 1,
                  "label_correct": 0.0 if (attack, position) == ("a2", 1) else 1.0,
                  "prior_psnr": 17.0, "prior_psnr_affine": PRIOR_PSNR_AFFINE,
                  "prior_ssim": 0.4, "prior_ssim_affine": PRIOR_SSIM_AFFINE,
                  "prior_lpips": 0.2, "prior_ncc": 0.8, "nearest_psnr_affine": 25.0,
                  "leak_psnr_affine": pa - PRIOR_PSNR_AFFINE,
                  "leak_ssim_affine": sa - PRIOR_SSIM_AFFINE,
                  "image_index": float(indices[position])}
        for name, value in values.items():
            out.setdefault(name, []).append(value)
    return out


def truth_value(image_index: int) -> float:
    return (image_index % 97) / 100


def write_json(path: Path, record: dict[str, Any]) -> None:
    path.write_text(json.dumps(record))


def build_sweep(root: Path, *, seeds: tuple[int, ...] = SEEDS,
                rounds: tuple[int, ...] = ROUNDS) -> Path:
    """The folder of a finished sweep, plus one planned cell that never ran."""
    cells, planned = root / "cells", []
    for defense, strength in SETTINGS:
        for seed in seeds:
            key = {"defense": defense, "strength": strength, "grid": [], "seed": seed}
            name = f"{defense}-{strength}-seed{seed}"
            folder = cells / name
            folder.mkdir(parents=True)
            f1 = MACRO_F1[(defense, strength)][seed]
            skipped = [["a3", SKIP_REASON]] if (strength, seed) == (0.1, 2) else []
            warnings = [WARNING_DIVERGED, WARNING_ESCAPED] if (strength, seed) == (0.5, 1) else []
            write_json(folder / "federation.json", {
                "key": key, "config": {"data": {"dataset": "synthetic", "image_size": 8},
                                       "train": {"rounds": 3, "lr": 0.05}},
                "utility": [{"round": r, "loss": 1.0, "accuracy": f1 + 0.1, "macro_f1": f1}
                            for r in (0, 1, 2, 3)],
                "fit": [{"round": r, "client": c, "num_examples": (1, 2, 8)[c],
                         "train_loss": 1.0, "fit_seconds": FIT_SECONDS[(defense, strength)]}
                        for r in (1, 2, 3) for c in (0, 1, 2)],
                "seconds": 2.0, "state": "completed", "skipped_attacks": skipped,
                "warnings": warnings})
            for attack in ("a1", "a2"):
                updates, pictures = [], {}
                for server_round in rounds:
                    for client in (0, 1):
                        entry: dict[str, Any] = {"round": server_round, "client": client,
                                                 "batch_size": client + 1}
                        if (strength, seed, attack, server_round, client) == (0.5, 2, "a2", 3,
                                                                              0):
                            updates.append({**entry, "num_images": 0,
                                            "skipped": UPDATE_SKIPPED})
                            continue
                        pairs = pairs_for(defense, strength, attack, seed, client)
                        updates.append({**entry, "num_images": len(pairs["psnr"]),
                                        "pairs": pairs, "summary": {}, "seconds": 0.1})
                        truth = np.stack([np.full((1, 8, 8), truth_value(int(i)), np.float32)
                                          for i in pairs["image_index"]])
                        pictures[f"r{server_round}c{client}_truth"] = truth
                        pictures[f"r{server_round}c{client}_recon"] = 1.0 - truth
                np.savez_compressed(folder / f"recon-{attack}.npz", **pictures)
                labels_warning = [WARNING_LABELS] if (defense, seed, attack) == (
                    "fedavg", 0, "a2") else []
                write_json(folder / f"attack-{attack}.json", {
                    "key": key, "attack": attack, "name": f"attack_{attack}", "params": {},
                    "adaptive": False, "updates": updates, "seconds": 1.0,
                    "warnings": labels_warning})
            planned.append({"name": name, "key": key, "attacks": ["a1", "a2"],
                            "skipped": skipped})
    planned.append({"name": "fedavg-None-seed3", "key": {"defense": "fedavg", "strength": None,
                                                         "grid": [], "seed": 3},
                    "attacks": ["a1", "a2"], "skipped": []})
    write_json(root / "sweep.json", {"spec": {
        "name": "synthetic", "reference": "fedavg", "seeds": [0, 1, 2, 3], "rounds": [1, -1],
        "clients": [0, 1],
        "defenses": [{"label": "fedavg", "name": "none", "strength": None, "values": [],
                      "params": {}},
                     {"label": "dp", "name": "dp", "strength": "noise_multiplier",
                      "values": [0.1, 0.5], "params": {"clip_norm": 1.0}}],
        "attacks": [{"label": "a1", "name": "attack_a1", "params": {}, "adaptive": False},
                    {"label": "a2", "name": "attack_a2", "params": {}, "adaptive": False}]},
        "cells": planned})
    return root


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> vr.ReportFiles:
    return vr.write_report(build_sweep(tmp_path_factory.mktemp("sweep")))


def ci(values: list[float]) -> tuple[float, float]:
    """Mean and 95% half-width, by the textbook formula."""
    return statistics.mean(values), T_975_2 * statistics.stdev(values) / math.sqrt(len(values))


def csv_rows(report: vr.ReportFiles) -> list[dict[str, str]]:
    with report.table_csv.open(newline="") as f:
        return list(csv.DictReader(f))


def row_of(rows: list[dict[str, str]], defense: str, strength: str, attack: str
           ) -> dict[str, str]:
    found = [r for r in rows if (r["defense"], r["strength"], r["attack"]) ==
             (defense, strength, attack)]
    if len(found) != 1:
        raise LookupError(f"expected one row for {defense} {strength} {attack}, got {found}")
    return found[0]


# Hand computation. FedAvg's worst case per image is max(a1, a2) = max(20 + seed,
# 19 + 2 * position): per seed, over its three images (both rounds alike),
# seed 0: (20 + 20 + 21) / 3, seed 1: 21, seed 2: 22.
FEDAVG_WORST_PSNR_AFFINE = ci([61 / 3, 21.0, 22.0])
# DP at 0.5 loses 0.50, 0.55, 0.60 of macro-F1; at 0.1, -0.01, +0.01, -0.02 (crosses 0).
D_MACRO_F1_STRONG = ci([0.20 - 0.70, 0.17 - 0.72, 0.14 - 0.74])
D_MACRO_F1_WEAK = ci([0.69 - 0.70, 0.73 - 0.72, 0.72 - 0.74])
# DP at 0.1: a1 = 16 + seed, a2 = 16 + position; worst per seed (16 + 16 + 17) / 3, 17, 18.
DP_WEAK_WORST_PSNR_AFFINE = ci([49 / 3, 17.0, 18.0])
D_WORST_PSNR_AFFINE_WEAK = ci([49 / 3 - 61 / 3, 17.0 - 21.0, 18.0 - 22.0])


def test_the_hand_computed_values_are_what_they_say() -> None:
    assert FEDAVG_WORST_PSNR_AFFINE[0] == pytest.approx(21.1111111, abs=1e-6)
    assert FEDAVG_WORST_PSNR_AFFINE[1] == pytest.approx(2.08387, abs=1e-5)
    assert D_MACRO_F1_STRONG == pytest.approx((-0.55, T_975_2 * 0.05 / math.sqrt(3)))


def test_csv_has_a_row_per_setting_and_attack_with_the_hand_computed_numbers(
        report: vr.ReportFiles) -> None:
    rows = csv_rows(report)
    results = [r for r in rows if r["kind"] == "result"]
    assert [(r["defense"], r["strength"], r["attack"]) for r in results] == [
        (d, "" if s is None else repr(s), a) for d, s in SETTINGS
        for a in ("a1", "a2", "worst case")]
    assert {r["seeds"] for r in results} == {"3"}
    worst = row_of(rows, "fedavg", "", "worst case")
    assert float(worst["psnr_affine_mean"]) == pytest.approx(FEDAVG_WORST_PSNR_AFFINE[0])
    assert float(worst["psnr_affine_half_width"]) == pytest.approx(FEDAVG_WORST_PSNR_AFFINE[1])
    # The worst case's label accuracy is the best any attack did: a1 got every label.
    assert float(worst["label_accuracy_mean"]) == 1.0
    # a2 alone: 2 of 3 images' labels per seed.
    assert float(row_of(rows, "fedavg", "", "a2")["label_accuracy_mean"]) == pytest.approx(2 / 3)
    strong = row_of(rows, "dp", "0.5", "a1")
    assert float(strong["d_macro_f1_mean"]) == pytest.approx(D_MACRO_F1_STRONG[0])
    assert float(strong["d_macro_f1_half_width"]) == pytest.approx(D_MACRO_F1_STRONG[1])
    assert strong["d_macro_f1_significant"] == "true"
    weak = row_of(rows, "dp", "0.1", "worst case")
    assert weak["d_macro_f1_significant"] == "false"
    assert float(weak["d_psnr_affine_mean"]) == pytest.approx(D_WORST_PSNR_AFFINE_WEAK[0])
    assert float(weak["d_psnr_affine_half_width"]) == pytest.approx(D_WORST_PSNR_AFFINE_WEAK[1])
    assert float(weak["time_ratio_mean"]) == 1.5 and float(weak["time_ratio_half_width"]) == 0
    # The reference has no difference to itself worth a column, but its figures are there.
    assert worst["d_psnr_affine_mean"] == ""
    baselines = [r for r in rows if r["kind"] == "baseline"]
    assert [r["defense"].split(":")[0] for r in baselines] == ["prior", "nearest"]
    assert float(baselines[0]["psnr_affine_mean"]) == PRIOR_PSNR_AFFINE
    assert float(baselines[0]["psnr_affine_half_width"]) == 0.0
    assert baselines[1]["ssim_affine_mean"] == ""  # not recorded for the nearest image


def expected_texts() -> dict[str, str]:
    fedavg, weak = FEDAVG_WORST_PSNR_AFFINE, D_MACRO_F1_WEAK
    return {"fedavg worst": f"{fedavg[0]:.2f} ± {fedavg[1]:.2f}",
            "dp 0.5 d_f1": f"{D_MACRO_F1_STRONG[0]:.3f} ± {D_MACRO_F1_STRONG[1]:.3f} *",
            "dp 0.1 d_f1": f"{weak[0]:.3f} ± {weak[1]:.3f}",
            "dp 0.1 worst": f"{DP_WEAK_WORST_PSNR_AFFINE[0]:.2f} ± "
                            f"{DP_WEAK_WORST_PSNR_AFFINE[1]:.2f}"}


def test_markdown_table_shows_the_same_numbers(report: vr.ReportFiles) -> None:
    text = report.table_md.read_text()
    texts = expected_texts()
    assert texts["fedavg worst"] == "21.11 ± 2.08"  # by hand, to the digits shown
    for value in texts.values():
        assert value in text, value
    assert texts["dp 0.1 d_f1"] + " *" not in text  # the interval crosses 0: no mark
    assert "public mean image" in text and "18.00 ± 0.00" in text


def test_headlines_hold_one_worst_case_row_per_setting(report: vr.ReportFiles) -> None:
    lines = [line for line in report.headlines_md.read_text().splitlines()
             if line.startswith("| ") and not line.startswith(("| defense", "| ---"))]
    assert [line.split(" | ")[0].removeprefix("| ") for line in lines] == ["fedavg", "dp", "dp"]
    fedavg, weak = (next(line for line in lines if marker in line)
                    for marker in ("| fedavg |", "noise_multiplier = 0.1 |"))
    texts = expected_texts()
    assert f"| {texts['fedavg worst']} | ref. |" in fedavg
    d_psnr = D_WORST_PSNR_AFFINE_WEAK
    assert f"| {texts['dp 0.1 worst']} | {d_psnr[0]:.2f} ± {d_psnr[1]:.2f} * |" in weak
    assert f"| {texts['dp 0.1 d_f1']} |" in weak  # not significant: no mark
    assert "—" not in weak  # raw PSNR/SSIM changes too (the synthetic records hold them)
    assert weak.endswith("| 1.50 ± 0.00 | 3 |")


def test_html_shows_the_numbers_the_verdicts_and_every_warning(report: vr.ReportFiles) -> None:
    # As displayed: the table keeps "± 2.08" together with a no-break space.
    page = report.html.read_text(encoding="utf-8").replace("\xa0", " ")
    for value in expected_texts().values():
        assert value in page, value
    weak_f1 = D_MACRO_F1_WEAK
    assert (f"dp, noise_multiplier = 0.1: worst-case leakage vs fedavg fell by "
            f"{abs(D_WORST_PSNR_AFFINE_WEAK[0]):.2f} ± {D_WORST_PSNR_AFFINE_WEAK[1]:.2f} dB in "
            "PSNR b/c") in page
    assert f"at a macro-F1 cost of {abs(weak_f1[0]):.3f} ± {weak_f1[1]:.3f} (not significant)" \
        in page
    strong = D_MACRO_F1_STRONG
    assert f"at a macro-F1 cost of {abs(strong[0]):.3f} ± {strong[1]:.3f};" in page
    for warning in (WARNING_DIVERGED, WARNING_LABELS, SKIP_REASON, UPDATE_SKIPPED,
                    "planned cell has no federation record"):
        assert warning in page.replace("&#x27;", "'"), warning
    assert "loss &lt; 1e-3 &amp; &lt;b&gt;rising&lt;/b&gt;" in page
    assert WARNING_ESCAPED not in page
    assert "Hospital 1: 2 images, batch size 2" in page
    assert vr.RECOGNISABLE in page


def test_html_is_self_contained(report: vr.ReportFiles) -> None:
    page = report.html.read_text(encoding="utf-8")
    assert "http" not in page.lower()
    assert "<link" not in page and "<script" not in page and "@import" not in page
    sources = re.findall(r'src="([^"]*)"', page)
    assert len(sources) == page.count("<img") >= 4  # pareto, rounds, mosaic, 2 hospitals
    assert all(s.startswith("data:image/png;base64,") for s in sources)
    for source in sources:
        with Image.open(io.BytesIO(base64.b64decode(source.split(",", 1)[1]))) as image:
            image.verify()
            assert image.format == "PNG"


def test_every_image_file_decodes(report: vr.ReportFiles) -> None:
    paths = [report.pareto_png, report.mosaic_png, report.rounds_png,
             *report.hospital_pngs.values()]
    assert sorted(report.hospital_pngs) == [0, 1]
    for path in paths:
        assert path is not None and path.parent == report.folder
        with Image.open(path) as image:
            assert image.format == "PNG" and min(image.size) > 100


def test_risk_report_counts_images_by_the_rule(report: vr.ReportFiles) -> None:
    text = report.risk_md.read_text()
    assert vr.RISK_RULE in text
    assert "## Hospital 0: 1 image, batch size 1" in text
    # FedAvg, hospital 1, per seed: image 1 recognisable (SSIM b/c 0.75, 0.25 above the
    # prior), image 0 partly (PSNR b/c 2-4 dB above the prior); 3 seeds, each counted once
    # although attacked in two rounds.
    assert (f"Under fedavg: of its 6 attacked images over 3 seeds, 3 {vr.RECOGNISABLE} "
            f"(50%), 3 {vr.PARTLY} (50%), 0 {vr.NOT_BEYOND_PRIOR} (0%).") in text
    # DP at 0.1: PSNR b/c at most 0 dB above the prior, SSIM b/c below it.
    assert ("Under dp, noise_multiplier = 0.1: none of its 6 attacked images over 3 seeds was "
            "rebuilt beyond what public data shows.") in text
    # Hospital 0, FedAvg: its one image per seed is partly rebuilt (PSNR b/c 2-4 dB above).
    hospital0 = text[text.index("## Hospital 0"):text.index("## Hospital 1")]
    assert (f"Under fedavg: of its 3 attacked images over 3 seeds, 0 {vr.RECOGNISABLE} "
            f"(0%), 3 {vr.PARTLY} (100%)") in hospital0


@pytest.mark.parametrize(("ssim_affine", "leak_ssim", "leak_psnr", "expected"), [
    (0.6, 0.1, -5.0, vr.RECOGNISABLE),      # both thresholds met exactly
    (0.59, 0.3, 5.0, vr.PARTLY),            # similar to the prior, not recognisable
    (0.9, 0.05, 0.0, vr.PARTLY),            # high SSIM, but the prior is nearly as good
    (0.3, -0.1, 1.01, vr.PARTLY),           # more than 1 dB above the prior
    (0.3, 0.0, 1.0, vr.NOT_BEYOND_PRIOR),   # at the prior exactly
    (0.7, math.nan, 3.0, vr.UNJUDGED),
])
def test_risk_category_thresholds(ssim_affine: float, leak_ssim: float, leak_psnr: float,
                                  expected: str) -> None:
    assert vr.risk_category(ssim_affine=ssim_affine, leak_ssim_affine=leak_ssim,
                            leak_psnr_affine=leak_psnr) == expected


def test_pictures_follow_each_attacks_pair_order(tmp_path: Path) -> None:
    root = build_sweep(tmp_path)
    records = vr.read_sweep(root)
    pairs = vr.pairs_of(records.attacks)
    pictures = vr.Pictures(records.folders)
    # a2 lists hospital 1's images reversed: image 21 is its first pair.
    pair = next(p for p in pairs if p.key.defense == "fedavg" and p.attack == "a2"
                and p.key.seed == 0 and p.round == 1
                and p.client == 1 and p.image == 21)
    assert pair.position == 0
    assert pair.psnr_affine == 21.0  # fedavg, a2, position 1 in the batch: 19 + 2
    truth = pictures.get(pair, "truth")
    assert truth is not None and truth.shape == (8, 8)
    assert np.allclose(truth, truth_value(21))


def test_invalid_folders_and_references_are_named(tmp_path: Path) -> None:
    with pytest.raises(vr.NotASweepFolder, match="not a sweep folder"):
        vr.write_report(tmp_path)
    (tmp_path / "cells").mkdir()
    with pytest.raises(vr.NotASweepFolder, match="no federation record under"):
        vr.write_report(tmp_path)
    root = build_sweep(tmp_path / "sweep")
    with pytest.raises(ValueError, match=r"reference: expected one of the sweep's defenses "
                                         r"\['dp', 'fedavg'\], got 'fedprox'"):
        vr.write_report(root, reference="fedprox")


def test_report_only_on_a_folder_without_records_is_one_line(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    spec = Path(__file__).resolve().parents[1] / "experiments" / "configs" / "sweeps" / "cpu.yaml"
    code = cli.main(["sweep", str(spec), "--out", str(tmp_path / "nothing"), "--report-only"])
    assert code == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        f"fl-shadow: --out: not a sweep folder: {tmp_path / 'nothing' / 'cells'} does not exist"]


def test_interval_text_marks_only_significant_differences() -> None:
    assert vr.interval_text(Interval(-0.5, 0.1, 3), 2, paired=True) == "-0.50 ± 0.10 *"
    assert vr.interval_text(Interval(-0.5, 0.6, 3), 2, paired=True) == "-0.50 ± 0.60"
    assert vr.interval_text(Interval(-0.5, math.nan, 1), 2, paired=True) == "-0.50"
    assert vr.interval_text(Interval(-0.5, 0.1, 3), 2) == "-0.50 ± 0.10"
    assert vr.interval_text(None, 2) == "—"


def test_one_seed_and_one_round_give_no_interval_and_no_rounds_plot(tmp_path: Path) -> None:
    report = vr.write_report(build_sweep(tmp_path, seeds=(0,), rounds=(1,)))
    assert report.rounds_png is None
    worst = row_of(csv_rows(report), "fedavg", "", "worst case")
    assert float(worst["psnr_affine_mean"]) == pytest.approx(61 / 3)
    assert math.isnan(float(worst["psnr_affine_half_width"])) and worst["seeds"] == "1"
    page = report.html.read_text(encoding="utf-8")
    assert "20.33" in page and "20.33 ±" not in page.replace("\xa0", " ")
    assert "only 1 seed(s): a verdict needs at least 3" in page
    assert "(one seed: no interval)" in page


def test_shares_print_their_interval_clipped_to_0_100() -> None:
    # Three seeds with shares 0, 1, 1: t-interval 67 ± 143%, shown as what a share can be.
    assert vr.share_text(Interval(2 / 3, 1.434, 3)) == "67% [0–100%]"
    assert vr.share_text(Interval(0.25, 0.1, 3)) == "25% [15–35%]"
    assert vr.share_text(Interval(0.5, 0.0, 3)) == "50%"
    assert vr.share_text(Interval(1.0, math.nan, 1)) == "100%"
