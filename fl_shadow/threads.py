"""Threads: OpenMP's wait policy and torch's intra-op thread count, set in this one place.

Two rules hold in every process the project starts: the ``fl-shadow`` CLI, the ServerApp and
the ClientApp (in Flower's simulation, Ray actors that import those modules; in deployment,
the SuperLink's and the SuperNodes' processes), the sweep's worker processes, the Ray tasks of
``attack.parallel``, the scripts under ``experiments/`` and the test process.

* **OMP_WAIT_POLICY=PASSIVE**, unless the environment already sets it (an explicit choice
  wins). With the default (active) policy an idle OpenMP thread spins, so two torch processes
  of two threads each on two cores run 30-75x slower. The OpenMP runtime reads the variable
  once, when torch loads it, so it must be in ``os.environ`` before ``import torch``: importing
  any module of this package does it first (``fl_shadow/__init__.py`` calls
  :func:`passive_wait` before anything imports torch), and child processes inherit it
  (:func:`child_env` for the Ray tasks, which start from Ray's environment).
* **Torch intra-op threads: FL_SHADOW_THREADS** (a whole number >= 1; default
  :data:`DEFAULT_THREADS` = 1 per process), applied by :func:`set_torch_threads` at the start
  of each process: by the ServerApp and ClientApp modules when they are imported, by the CLI's
  ``main``, by each sweep worker, by each experiment script; an attack task gets its caller's
  count explicitly. The thread count is part of what makes a number reproducible: torch's CPU
  kernels reduce in an order that depends on it, so the same config and seed give different
  attack numbers at 1 and at 2 threads (README: "Threads and reproducibility").

``FL_SHADOW_THREADS`` is read from each process's own environment. Flower's local SuperLink
(``flwr run``, ``fl-shadow run``) keeps running in the background between runs, and the
ServerApp and the client actors inherit the environment it was started with: a changed value
reaches them after that SuperLink restarts. ``status.json`` records the server's count
(``server_torch_threads``).

This module imports nothing that loads torch at import time (``fl_shadow/__init__.py`` imports
it before anything else); torch is imported by :func:`set_torch_threads` and
:func:`torch_threads` when they run.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator, Mapping

from fl_shadow.errors import ConfigError

log = logging.getLogger(__name__)

#: The environment variable that sets torch's intra-op threads per process.
THREADS_ENV = "FL_SHADOW_THREADS"
#: Torch threads per process when ``FL_SHADOW_THREADS`` is unset or empty.
DEFAULT_THREADS = 1
#: OpenMP's wait policy variable, and the value the project sets unless one is set already.
WAIT_POLICY_ENV = "OMP_WAIT_POLICY"
WAIT_POLICY = "PASSIVE"


def passive_wait() -> str:
    """Set ``OMP_WAIT_POLICY=PASSIVE`` in ``os.environ`` unless it is set; the value in effect.

    Takes effect in this process only if torch has not been imported yet (the OpenMP runtime
    reads it when torch loads it); child processes started afterwards inherit it either way.
    """
    return os.environ.setdefault(WAIT_POLICY_ENV, WAIT_POLICY)


def child_env() -> dict[str, str]:
    """The thread-related variables a child process must start with: the wait policy in
    effect here (``PASSIVE`` unless the environment chose another) and ``FL_SHADOW_THREADS``
    when it is set. For children that do not inherit this environment (Ray's workers)."""
    env = {WAIT_POLICY_ENV: os.environ.get(WAIT_POLICY_ENV, WAIT_POLICY)}
    if os.environ.get(THREADS_ENV, "").strip():
        env[THREADS_ENV] = os.environ[THREADS_ENV]
    return env


def configured_threads(environ: Mapping[str, str] | None = None) -> int:
    """Torch intra-op threads per process: ``FL_SHADOW_THREADS``, else :data:`DEFAULT_THREADS`.

    Raises:
        ConfigError: the variable is set to anything but a whole number >= 1 (one line naming
            the variable).
    """
    raw = (os.environ if environ is None else environ).get(THREADS_ENV, "").strip()
    if not raw:
        return DEFAULT_THREADS
    try:
        value = int(raw)
    except ValueError:
        value = 0
    if value < 1:
        raise ConfigError(f"{THREADS_ENV}: expected a whole number of torch threads per "
                          f"process, at least 1, got {raw!r}")
    return value


def set_torch_threads(n: int | None = None) -> int:
    """Set torch's intra-op thread count of this process (the calling thread and every thread
    started afterwards); returns the count now in effect.

    Args:
        n: the count; None = :func:`configured_threads` (``FL_SHADOW_THREADS``, default 1).

    Raises:
        ConfigError: ``FL_SHADOW_THREADS`` is malformed (when ``n`` is None).
        ValueError: ``n`` is not a whole number >= 1.
    """
    passive_wait()
    if n is None:
        n = configured_threads()
    elif isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"torch threads: expected a whole number >= 1, got {n!r}")
    import torch

    torch.set_num_threads(n)
    threads = torch.get_num_threads()
    log.debug("torch: %d intra-op thread(s), %s=%s", threads, WAIT_POLICY_ENV,
              os.environ.get(WAIT_POLICY_ENV))
    return threads


@contextlib.contextmanager
def torch_threads(n: int | None) -> Iterator[None]:
    """Run the block on ``n`` intra-op threads (this thread), then restore the count.

    ``None`` leaves the count as it is.
    """
    if n is None:
        yield
        return
    import torch

    before = torch.get_num_threads()
    set_torch_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


__all__ = ["DEFAULT_THREADS", "THREADS_ENV", "WAIT_POLICY", "WAIT_POLICY_ENV", "child_env",
           "configured_threads", "passive_wait", "set_torch_threads", "torch_threads"]
