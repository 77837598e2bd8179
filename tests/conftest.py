"""Shared test setup."""

import os
import signal
from pathlib import Path

import pytest
from processes import free_port, process_tree, processes_mentioning, signal_all, wait_gone

# Before anything loads torch: OMP_WAIT_POLICY=PASSIVE (fl_shadow.threads).
from fl_shadow.threads import set_torch_threads

# Small tensors gain nothing from intra-op threads, and when anything else runs on the machine
# (a second pytest, a federation) spinning thread pools make such tests up to 100x slower: the
# project's rule, FL_SHADOW_THREADS (default 1).
set_torch_threads()


@pytest.fixture()
def flower_env(tmp_path: Path):  # type: ignore[no-untyped-def]
    """Environment for `flwr run`/`fl-shadow run` subprocesses: a private Flower home and
    SuperLink ports, no telemetry, no runtime dependency installation; the local SuperLink the
    runs start (and everything under it) is killed afterwards."""
    http_port, control_port = free_port(), free_port()
    env = {**os.environ, "FLWR_HOME": str(tmp_path / "flwr-home"),
           "FLWR_LOCAL_SUPERLINK_HTTP_API_PORT": str(http_port),
           "FLWR_LOCAL_CONTROL_API_PORT": str(control_port), "FLWR_TELEMETRY_ENABLED": "0",
           "RAY_USAGE_STATS_ENABLED": "0", "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1"}
    yield env
    killed = [p for pid in processes_mentioning(f"127.0.0.1:{control_port}")
              for p in process_tree(pid)]
    signal_all(killed, signal.SIGKILL)
    left = wait_gone(killed)
    assert not left, f"processes of this test's SuperLink still run after SIGKILL: {left}"
