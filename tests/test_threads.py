"""Thread hygiene: OMP_WAIT_POLICY before torch loads, torch threads from FL_SHADOW_THREADS,
and both rules in fl_shadow/threads.py only."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from flwr.app import Context, RecordDict

from fl_shadow import threads
from fl_shadow.apps import client_app
from fl_shadow.apps.inprocess import InProcessClientProxy
from fl_shadow.errors import ConfigError
from fl_shadow.threads import (
    THREADS_ENV,
    WAIT_POLICY_ENV,
    child_env,
    configured_threads,
    set_torch_threads,
    torch_threads,
)

ROOT = Path(__file__).resolve().parents[1]

# Imports MODULE in a fresh interpreter, then torch; prints whether MODULE loaded torch, the
# OMP_WAIT_POLICY in os.environ at the moment torch was first imported, and torch's threads.
PROBE = """
import importlib, os, sys
seen = []
class Probe:
    def find_spec(self, name, path=None, target=None):
        if name == "torch" and not seen:
            seen.append(os.environ.get("OMP_WAIT_POLICY"))
sys.meta_path.insert(0, Probe())
importlib.import_module(sys.argv[1])
loaded = "torch" in sys.modules
import torch
print(loaded, seen[0], torch.get_num_threads())
"""


def probe(module: str, **env: str) -> list[str]:
    base = {k: v for k, v in os.environ.items()
            if k not in (WAIT_POLICY_ENV, THREADS_ENV, "OMP_NUM_THREADS")}
    out = subprocess.run([sys.executable, "-c", PROBE, module], env={**base, **env},
                         capture_output=True, text=True, timeout=120, cwd=ROOT, check=True)
    return out.stdout.split()


@pytest.fixture()
def restore_threads():  # type: ignore[no-untyped-def]
    before = torch.get_num_threads()
    yield
    set_torch_threads(before)


# ---- OMP_WAIT_POLICY -------------------------------------------------------------------------
def test_importing_the_package_sets_passive_before_torch_loads() -> None:
    # The package itself does not load torch; the policy is in place when torch comes.
    assert probe("fl_shadow")[:2] == ["False", "PASSIVE"]


def test_a_policy_the_user_chose_wins() -> None:
    assert probe("fl_shadow", OMP_WAIT_POLICY="ACTIVE")[:2] == ["False", "ACTIVE"]


@pytest.mark.parametrize("module", ["attacks", "fl_shadow.apps.client_app",
                                    "fl_shadow.apps.server_app"])
def test_the_processes_entry_modules_set_it_before_torch(module: str) -> None:
    """A Ray attack task imports ``attacks`` first; Flower's actors and the simulation process
    import the ClientApp and ServerApp modules. Importing leaves the thread count alone (the
    app sets it when it builds its client or server, where a bad value is a one-line error)."""
    loaded, policy, count = probe(module, FL_SHADOW_THREADS="2", OMP_NUM_THREADS="1")
    assert (loaded, policy, count) == ("True", "PASSIVE", "1")


def test_the_client_app_applies_the_thread_count_to_each_client(
        monkeypatch: pytest.MonkeyPatch, restore_threads: None) -> None:
    context = Context(run_id=1, node_id=1, node_config={}, state=RecordDict(), run_config={})
    monkeypatch.setenv(THREADS_ENV, "2")
    client_app.client_fn(context)
    assert torch.get_num_threads() == 2
    monkeypatch.setenv(THREADS_ENV, "two")
    with pytest.raises(ConfigError, match=r"^FL_SHADOW_THREADS: expected a whole number"):
        client_app.client_fn(context)


def test_a_bad_thread_count_stops_the_cli_with_one_line() -> None:
    proc = subprocess.run([sys.executable, "-m", "fl_shadow.apps.cli", "show-config"],
                          capture_output=True, text=True, cwd=ROOT, timeout=120,
                          env={**os.environ, THREADS_ENV: "abc"})
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "fl-shadow: FL_SHADOW_THREADS: expected a whole number of torch threads per process, "
        "at least 1, got 'abc'"]


def test_child_env_carries_the_policy_and_the_thread_count(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(WAIT_POLICY_ENV, raising=False)
    monkeypatch.delenv(THREADS_ENV, raising=False)
    assert child_env() == {WAIT_POLICY_ENV: "PASSIVE"}
    monkeypatch.setenv(WAIT_POLICY_ENV, "ACTIVE")
    monkeypatch.setenv(THREADS_ENV, "3")
    assert child_env() == {WAIT_POLICY_ENV: "ACTIVE", THREADS_ENV: "3"}


# ---- torch threads ---------------------------------------------------------------------------
def test_the_thread_count_comes_from_fl_shadow_threads_default_one(
        monkeypatch: pytest.MonkeyPatch, restore_threads: None) -> None:
    monkeypatch.delenv(THREADS_ENV, raising=False)
    assert threads.DEFAULT_THREADS == 1
    assert set_torch_threads() == 1 == torch.get_num_threads()
    monkeypatch.setenv(THREADS_ENV, " 2 ")
    assert set_torch_threads() == 2 == torch.get_num_threads()
    monkeypatch.setenv(THREADS_ENV, "")  # empty = unset
    assert configured_threads() == 1
    assert set_torch_threads(3) == 3 == torch.get_num_threads()  # an explicit count wins


@pytest.mark.parametrize("raw", ["abc", "0", "-2", "1.5", "2 threads"])
def test_a_bad_fl_shadow_threads_is_one_line_naming_the_variable(
        raw: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(THREADS_ENV, raw)
    expected = (r"^FL_SHADOW_THREADS: expected a whole number of torch threads per process, at "
                rf"least 1, got '{raw}'$")
    with pytest.raises(ConfigError, match=expected):
        configured_threads()
    with pytest.raises(ConfigError, match=expected):
        set_torch_threads()


@pytest.mark.parametrize("bad", [0, -1, 1.5, True, "2"])
def test_a_bad_explicit_count_is_refused(bad: object) -> None:
    with pytest.raises(ValueError, match=r"^torch threads: expected a whole number >= 1, got "):
        set_torch_threads(bad)  # type: ignore[arg-type]


def test_torch_threads_restores_the_count(restore_threads: None) -> None:
    set_torch_threads(1)
    with torch_threads(2):
        assert torch.get_num_threads() == 2
    assert torch.get_num_threads() == 1
    with torch_threads(None):
        assert torch.get_num_threads() == 1


def test_in_process_clients_use_the_clientapps_count(monkeypatch: pytest.MonkeyPatch) -> None:
    """The in-process runner's clients train on what the ClientApp sets in a Ray actor."""
    def proxy(**kwargs: int) -> InProcessClientProxy:
        context = Context(run_id=1, node_id=1000, node_config={}, state=RecordDict(),
                          run_config={})
        return InProcessClientProxy(1000, context, **kwargs)

    monkeypatch.delenv(THREADS_ENV, raising=False)
    assert proxy().client_threads == 1
    monkeypatch.setenv(THREADS_ENV, "2")
    assert proxy().client_threads == 2
    assert proxy(client_threads=3).client_threads == 3


# ---- one place -------------------------------------------------------------------------------
RULE_MODULE = "fl_shadow/threads.py"
SCANNED = ("fl_shadow", "attacks", "clients", "strategies", "experiments", "tests", "deploy")
# Files of work in progress elsewhere that still set threads themselves: each must switch to
# fl_shadow.threads.set_torch_threads() and leave this list (the test fails once one is clean).
PENDING: set[str] = set()


def thread_rule_sites(path: Path) -> list[str]:
    """Lines of ``path`` that set torch's thread counts or name an OpenMP variable in code."""
    tree = ast.parse(path.read_text(), filename=str(path))
    sites: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute | ast.Name | ast.alias):
            name = (node.attr if isinstance(node, ast.Attribute) else
                    node.id if isinstance(node, ast.Name) else node.name)
            if name in ("set_num_threads", "set_num_interop_threads"):
                sites.append((node.lineno, name))
        elif (isinstance(node, ast.Constant) and isinstance(node.value, str)
              and node.value in ("OMP_WAIT_POLICY", "OMP_NUM_THREADS")):
            sites.append((node.lineno, repr(node.value)))
    return [f"{line}: {what}" for line, what in sorted(sites)]


def rule_sites(root: Path) -> dict[str, list[str]]:
    found = {}
    for folder in SCANNED:
        for path in sorted((root / folder).rglob("*.py")):
            rel = path.relative_to(root).as_posix()
            if rel in (RULE_MODULE, "tests/test_threads.py"):
                continue
            sites = thread_rule_sites(path)
            if sites:
                found[rel] = sites
    return found


def test_threads_are_set_in_one_place_only() -> None:
    found = rule_sites(ROOT)
    outside = {k: v for k, v in found.items() if k not in PENDING}
    assert outside == {}, ("set threads / OMP variables through fl_shadow.threads "
                           f"(set_torch_threads, torch_threads, child_env): {outside}")
    clean = sorted(p for p in PENDING if (ROOT / p).exists() and p not in found)
    assert clean == [], f"these now follow the rule: drop them from PENDING: {clean}"
    assert thread_rule_sites(ROOT / RULE_MODULE)  # the check does see the rule where it is


def test_the_one_place_check_catches_a_copy(tmp_path: Path) -> None:
    (tmp_path / "experiments").mkdir()
    (tmp_path / "experiments" / "x.py").write_text(
        "import os\nimport torch\nfrom torch import set_num_threads\n"
        "os.environ.setdefault('OMP_WAIT_POLICY', 'PASSIVE')\ntorch.set_num_threads(1)\n")
    assert rule_sites(tmp_path) == {"experiments/x.py": [
        "3: set_num_threads", "4: 'OMP_WAIT_POLICY'", "5: set_num_threads"]}
