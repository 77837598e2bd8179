"""A Flower app folder for tests that need the project's apps with something added.

``flwr run`` loads a ServerApp and a ClientApp from an app folder's ``pyproject.toml``. A test
writes one (:func:`write_app`) whose components come from a module it supplies: the module
imports the project's apps (``fl_shadow`` is installed, so the folder holds the module only)
and adds what the test needs (a defense that fails on the client, a server that holds after a
round), and ``flwr run <folder>`` runs it on the real simulation engine. The run config keys
are the project's own, so ``fl-shadow``'s run config works unchanged.
"""

from __future__ import annotations

import json
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MODULE = "extended_app"  # not test_*.py: Flower leaves test files out of the FAB


def _toml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return json.dumps(value)  # strings and numbers: JSON literals are TOML literals


def write_app(folder: Path, module_source: str) -> Path:
    """Write ``folder/pyproject.toml`` and ``folder/extended_app.py``; returns ``folder``.

    ``module_source`` must define ``serverapp`` and ``clientapp`` by assignment (``flwr run``
    checks the names statically before it starts).
    """
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    run_config = project["tool"]["flwr"]["app"]["config"]
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "pyproject.toml").write_text(
        '[build-system]\nrequires = ["setuptools>=68"]\nbuild-backend = "setuptools.build_meta"\n'
        '\n[project]\nname = "fl-shadow-test-app"\nversion = "0.1.0"\ndependencies = []\n'
        '\n[tool.flwr.app]\npublisher = "fl-shadow-tests"\n'
        f'\n[tool.flwr.app.components]\nserverapp = "{MODULE}:serverapp"\n'
        f'clientapp = "{MODULE}:clientapp"\n'
        "\n[tool.flwr.app.config]\n"
        + "".join(f"{key} = {_toml_value(value)}\n" for key, value in run_config.items()))
    (folder / f"{MODULE}.py").write_text(module_source)
    return folder


#: The project's apps, with a server that holds once round 1's checkpoint is written: a test
#: that kills or stops the run "after round 1" then does so at a known point, not in a race
#: with round 2.
HOLD_AFTER_ROUND_1 = '''\
"""The project's apps; the server holds after writing round 1's checkpoint."""
import time

import strategies.curious as curious
from fl_shadow.apps import client_app, server_app

_save_checkpoint = curious.save_checkpoint


def save_then_hold(run_dir, checkpoint):
    path = _save_checkpoint(run_dir, checkpoint)
    if checkpoint.server_round == 1:
        time.sleep(3600)  # until the test kills or stops the run
    return path


curious.save_checkpoint = save_then_hold
serverapp = server_app.app
clientapp = client_app.app
'''

__all__ = ["HOLD_AFTER_ROUND_1", "write_app"]
