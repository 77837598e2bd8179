"""A run's results folder: its warnings (``warnings.jsonl`` and the summary's "Warnings") and
the summary's privacy table (raw, up to brightness and contrast, leakage above the prior)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from fl_shadow.diagnostics import WHERE_ATTACK, WHERE_LOAD, WHERE_TRAINING, RunWarning
from fl_shadow.report import (
    PRIVACY_TABLE,
    WARNINGS_FILE,
    RunRecorder,
    read_jsonl,
    read_warnings,
    summary_markdown,
)
from fl_shadow.scoring import Scores, score_reconstruction
from fl_shadow.threat_model import AttackOutcome, Reconstruction

LOAD_WARNING = "data: the test split holds fewer than 5 images of 1 of 2 classes (b: 3)"
DIVERGED = ("training diverged: the clients' mean train loss (weighted by their images) rose "
            "from 1 (round 1) to 2 (round 2)")
WRONG_LABELS = "dlg recovered 1 of 2 labels wrongly (round 2, client 0)"


def scored_attack(server_round: int, client: int) -> tuple[AttackOutcome, Scores]:
    """Two 1 x 16 x 16 images, reconstructed at half contrast with the second label wrong,
    scored against a public split of three (so the row carries ``leak_*``)."""
    g = torch.Generator().manual_seed(3)
    truth, public = torch.rand(2, 1, 16, 16, generator=g), torch.rand(3, 1, 16, 16, generator=g)
    recon = 0.5 * truth + 0.25
    labels = torch.tensor([0, 1])
    scores = score_reconstruction(recon, torch.tensor([0, 0]), truth, labels, public=public)
    rec = Reconstruction(images=recon, labels=torch.tensor([0, 0]), loss=0.1, iterations=4,
                         seconds=0.5)
    return AttackOutcome(server_round, client, rec, audit=None), scores


def record_a_run(run_dir: Path, *, load_warnings: list[str]) -> RunRecorder:
    """Two rounds whose clients' mean train loss doubles, one attack with a wrong label."""
    recorder = RunRecorder(run_dir, "name: t\n", 2, load_warnings=load_warnings,
                           attack_name="dlg")
    for server_round, loss in ((1, 1.0), (2, 2.0)):
        recorder.log_fit(server_round, 0, 4, {"train_loss": loss, "fit_seconds": 0.1})
        recorder.log_utility(server_round, 0.7, {"accuracy": 0.5, "macro_f1": 0.4})
    recorder.log_attack(*scored_attack(2, 0))
    return recorder


def test_load_and_end_of_run_warnings_land_in_the_folder_once_each(tmp_path: Path) -> None:
    recorder = record_a_run(tmp_path, load_warnings=[LOAD_WARNING, LOAD_WARNING])
    # At the start: the checks' warnings only, written at once.
    assert read_warnings(tmp_path) == [RunWarning(WHERE_LOAD, LOAD_WARNING)]
    text = recorder.finish()
    expected = [RunWarning(WHERE_LOAD, LOAD_WARNING), RunWarning(WHERE_TRAINING, DIVERGED),
                RunWarning(WHERE_ATTACK, WRONG_LABELS)]
    assert read_warnings(tmp_path) == expected
    rows = [json.loads(line) for line in (tmp_path / WARNINGS_FILE).read_text().splitlines()]
    assert rows[0] == {"where": "load", "message": LOAD_WARNING}
    assert (tmp_path / "summary.md").read_text() == text
    warnings_section = text.split("## Warnings\n")[1]
    assert warnings_section == (f"\n- load: {LOAD_WARNING}\n- training: {DIVERGED}\n"
                                f"- attack: {WRONG_LABELS}\n")


def test_a_failed_run_records_its_diagnostics_too(tmp_path: Path) -> None:
    recorder = record_a_run(tmp_path, load_warnings=[])
    recorder.fail(RuntimeError("round 3: not enough replies"))
    assert [w.where for w in read_warnings(tmp_path)] == [WHERE_TRAINING, WHERE_ATTACK]
    assert not (tmp_path / "summary.md").exists()


def test_a_resumed_run_keeps_the_load_warnings_and_computes_the_rest_again(
        tmp_path: Path) -> None:
    first = RunRecorder(tmp_path, "name: t\n", 3, load_warnings=[LOAD_WARNING])
    for server_round, loss in ((1, 1.0), (2, 2.0)):
        first.log_fit(server_round, 0, 4, {"train_loss": loss})
        first.log_utility(server_round, 0.7, {})
    first.fail(RuntimeError("killed"))
    assert [w.where for w in read_warnings(tmp_path)] == [WHERE_LOAD, WHERE_TRAINING]
    resumed = RunRecorder(tmp_path, "name: t\n", 3, resume_after=2,
                          load_warnings=[LOAD_WARNING, "data: another"])
    resumed.log_fit(3, 0, 4, {"train_loss": 0.5})  # back down: no longer diverged
    resumed.log_utility(3, 0.7, {})
    resumed.finish()
    assert read_warnings(tmp_path) == [RunWarning(WHERE_LOAD, LOAD_WARNING),
                                       RunWarning(WHERE_LOAD, "data: another")]


def test_a_folder_without_warnings_reads_as_none_and_the_summary_says_so(
        tmp_path: Path) -> None:
    assert read_warnings(tmp_path) == []
    assert summary_markdown([], [], []).endswith("## Warnings\n\n(none)\n")


def test_the_privacy_table_shows_the_rows_invariant_and_leakage_scores(tmp_path: Path) -> None:
    recorder = record_a_run(tmp_path, load_warnings=[])
    recorder.log_skipped_attack(2, 1, "batch of 32 above the attack's 8")
    text = recorder.finish()
    row = read_jsonl(tmp_path / "privacy.jsonl")[0]
    lines = text.splitlines()
    header = next(line for line in lines if line.startswith("| round | client | images |"))
    columns = [c.strip() for c in header.strip("|").split("|")]
    assert columns == ["round", "client", "images", "PSNR (dB)", "PSNR a·x+b (dB)", "SSIM",
                       "SSIM a·x+b", "NCC", "LPIPS", "leak PSNR a·x+b (dB)", "leak SSIM a·x+b",
                       "label acc.", "attack s"]
    cells = [c.strip() for c in next(line for line in lines
                                     if line.startswith("| 2 | 0 | 2 |")).strip("|").split("|")]
    shown = dict(zip(columns, cells, strict=True))
    for key, name, digits in PRIVACY_TABLE:
        assert shown[name] == f"{row[key]:.{digits}f}", name
    # Half contrast: the raw PSNR is low, up to a·x+b the picture is exact (PSNR's 100 dB cap).
    assert row["psnr"] < 20 and row["psnr_affine"] == 100.0 and row["ncc"] == pytest.approx(1.0)
    assert shown["PSNR a·x+b (dB)"] == "100.00" and shown["SSIM a·x+b"] == "1.0000"
    assert row["leak_psnr_affine"] == pytest.approx(row["psnr_affine"]
                                                    - row["prior_psnr_affine"])
    assert shown["label acc."] == "0.50" and shown["attack s"] == "0.5"
    skipped = next(line for line in lines if line.startswith("| 2 | 1 |"))
    assert skipped.count("|") == len(columns) + 1 and "not attacked: batch of 32" in skipped
    legend = lines[lines.index(skipped) + 2]
    assert legend.startswith("a·x+b: scored after the best brightness/contrast map")
    assert "leak: the score minus that of the public split's mean image" in legend


def test_a_score_the_row_lacks_is_a_dash() -> None:
    row = {"round": 1, "client": 0, "num_images": 1, "attack_seconds": 2.0, "psnr": 12.0}
    line = next(line for line in summary_markdown([], [row], []).splitlines()
                if line.startswith("| 1 | 0 | 1 |"))
    assert line == "| 1 | 0 | 1 | 12.00 | - | - | - | - | - | - | - | - | 2.0 |"
