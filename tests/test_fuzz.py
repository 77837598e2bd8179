"""The fuzz corpus (tests/fuzz_corpus.py): every bad input refused in one clean line with no file
lost, every damaged cache rebuilt, every bad results row tolerated, every valid edge accepted.

Most cases run in-process (``fl-shadow validate``/``resume`` through ``cli.main``, the dataset
loaders); a few go through the command line as a user would type them. The machine's free
memory is taken as :data:`fuzz_corpus.AVAILABLE_MEMORY`, so that refusals by size do not
depend on the machine the suite runs on.
"""

from __future__ import annotations

import subprocess
import sys
import warnings
from pathlib import Path

import pytest

import fl_shadow.apps.experiment as experiment
from fuzz_corpus import AVAILABLE_MEMORY, CASES, TINY, Case, message_matches, run_case, verdict
from fuzz_corpus import folder_config, image_folder, results_folder, write_yaml

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _fixed_free_memory(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(experiment, "available_memory_bytes", lambda: AVAILABLE_MEMORY)


def test_the_corpus_is_large_and_mixed() -> None:
    verbs = {c.verb for c in CASES}
    assert len(CASES) >= 150 and verbs == {"validate", "load", "cache", "resume", "rows"}
    assert sum(c.expect == "accepted" for c in CASES) >= 20  # valid edge cases too


@pytest.mark.parametrize("case", CASES, ids=[c.label for c in CASES])
def test_a_case_is_refused_cleanly_or_handled(case: Case, tmp_path: Path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        outcome = run_case(case, tmp_path)
    result = verdict(case, outcome)
    expected = "clean" if case.expect == "refused" else "ok"
    assert result == expected, (result, outcome)
    assert message_matches(case, outcome), outcome.message


# ---- through the command line, as typed ---------------------------------------------------------
def _fl_shadow(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "fl_shadow.apps.cli", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=300, check=False)


def _assert_one_clean_line(proc: subprocess.CompletedProcess[str], pattern: str) -> None:
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert lines[0].startswith("fl-shadow: ") and pattern in lines[0], lines[0]


def test_the_command_line_refuses_them_in_one_line(tmp_path: Path) -> None:
    alias = tmp_path / "alias.yaml"
    alias.write_text("train: &t {rounds: 2}\nstrategy: *t\n")
    _assert_one_clean_line(_fl_shadow("validate", str(alias)), "YAML aliases are not accepted")
    config = write_yaml(tmp_path / "tiny.yaml", TINY)
    _assert_one_clean_line(_fl_shadow("run", str(config), "--set", "train.lr=.inf"),
                           "train.lr: expected a finite number, got inf")
    (tmp_path / "resumed").mkdir()
    run_dir = results_folder(tmp_path / "resumed")
    (run_dir / "checkpoint.npz").write_bytes(b"PK\x03\x04 not a zip")
    before = sorted(p.name for p in run_dir.iterdir())
    _assert_one_clean_line(_fl_shadow("resume", str(run_dir)), "unreadable checkpoint")
    assert sorted(p.name for p in run_dir.iterdir()) == before
    one_each = image_folder(tmp_path / "one-each", per_class=1)
    sparse = write_yaml(tmp_path / "sparse.yaml", folder_config(tmp_path, one_each))
    _assert_one_clean_line(_fl_shadow("run", str(sparse)), "has an empty test split")
    taken = tmp_path / "taken"
    taken.write_text("a file")
    _assert_one_clean_line(_fl_shadow("run", str(config), "--run-dir", str(taken / "run")),
                           f"--run-dir: {taken} is a file, not a folder")
