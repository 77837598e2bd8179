"""experiments/compare_settings.py on the report tests' synthetic sweep: the same worst case
as the report, and differences to a control paired by seed, by hand."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from test_verdict_report import build_sweep

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "experiments"))
import compare_settings as cs  # noqa: E402

from fl_shadow import verdict_report as vr  # noqa: E402


def row_of(table: str, label: str) -> list[str]:
    for line in table.splitlines():
        cells = [c.strip() for c in line.strip("|").split("|")]
        if cells[0] == label:
            return cells
    raise AssertionError(f"no row {label!r} in\n{table}")


def test_the_worst_case_is_the_reports_and_deltas_pair_by_seed(tmp_path: Path) -> None:
    folder = build_sweep(tmp_path / "sweep")
    table = cs.compare(folder, "fedavg", "dp", "a1")
    verdict = vr.build_verdict(vr.read_sweep(folder), "fedavg")
    for setting, label in ((("fedavg", None, ()), "fedavg"), (("dp", 0.1, ()), "dp 0.1")):
        worst = verdict.worst(setting, "psnr_affine")
        assert worst is not None
        assert row_of(table, label)[1] == f"{worst.mean:.2f} ± {worst.half_width:.2f}"
    # macro-F1 of dp 0.5 minus fedavg per seed: 0.20-0.70, 0.17-0.72, 0.14-0.74 -> -0.55 mean
    cells = row_of(table, "dp 0.5")
    assert cells[8].startswith("-0.550 ± ") and cells[8].endswith("*")
    # the control at the same strength is the setting itself: no difference shown
    assert row_of(table, "dp 0.1")[9:12] == ["—", "—", "—"]


def test_a_missing_reference_is_one_line(tmp_path: Path) -> None:
    with pytest.raises(SystemExit, match="no setting of the reference defense 'nope'"):
        cs.compare(build_sweep(tmp_path / "sweep"), "nope", None)


def test_a_control_with_one_setting_pairs_with_every_strength(tmp_path: Path) -> None:
    folder = build_sweep(tmp_path / "sweep")
    against_reference = cs.compare(folder, "fedavg", None, "a1")
    against_control = cs.compare(folder, "dp", "fedavg", "a1")  # fedavg: one setting
    for label in ("dp 0.1", "dp 0.5"):
        # the same paired differences, whether fedavg is the reference or the control
        assert row_of(against_control, label)[9:12] == row_of(against_reference, label)[6:9]
