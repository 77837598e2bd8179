"""``fl-shadow validate`` refuses every bad config of the corpus, at load, in one line."""

from __future__ import annotations

import subprocess
import sys
import warnings
from pathlib import Path

import pytest

from bad_configs import CASES, make_files, resolve
from fl_shadow.apps.experiment import load_experiment
from fl_shadow.errors import ConfigError


@pytest.mark.parametrize(("label", "overrides", "expected"), CASES, ids=[c[0] for c in CASES])
def test_every_bad_config_is_refused_at_load(tmp_path: Path, label: str, overrides: list[str],
                                             expected: str) -> None:
    make_files(tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(ConfigError, match=expected) as info:
            load_experiment(None, resolve(overrides, tmp_path))
    assert "\n" not in str(info.value)


def test_the_command_line_refuses_them_with_exit_2(tmp_path: Path) -> None:
    make_files(tmp_path)
    cases = [c for c in CASES if c[0] in ("unknown defense", "sizes larger than the data",
                                          "inf shadow w0", "image limit above the attack's")]
    for label, overrides, expected in cases:
        args = [arg for o in resolve(overrides, tmp_path) for arg in ("--set", o)]
        proc = subprocess.run([sys.executable, "-m", "fl_shadow.apps.cli", "validate", *args],
                              capture_output=True, text=True, timeout=120, check=False)
        assert proc.returncode == 2, (label, proc.stdout, proc.stderr)
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and "Traceback" not in proc.stderr, (label, proc.stderr)
        assert lines[0].startswith("fl-shadow: ")


def test_the_shipped_default_validates(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "fl_shadow.apps.cli", "validate"],
                          capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("default: ok (strategy FedAvg")
