"""Process helpers for the tests that start real Flower processes (simulation, deployment,
resume): free ports, and finding and ending a test's own process trees through /proc."""

from __future__ import annotations

import os
import re
import socket
import time
from pathlib import Path


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _children_map() -> dict[int, list[int]]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry.name))
    return children


def process_tree(pid: int) -> list[int]:
    """``pid`` and all its descendants (read from /proc), parents first."""
    children, tree, queue = _children_map(), [], [pid]
    while queue:
        p = queue.pop(0)
        tree.append(p)
        queue += children.get(p, [])
    return tree


def processes_mentioning(marker: str, *also: str) -> list[int]:
    """Processes whose command line holds ``marker`` as a whole (``:4123`` is not ``:41234``)
    and every string of ``also``."""
    pattern = re.compile(re.escape(marker) + r"(?![0-9A-Za-z_])")
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if pattern.search(cmdline) and all(a in cmdline for a in also):
            found.append(int(entry.name))
    return found


def signal_all(pids: list[int], sig: int) -> int:
    """Send ``sig`` to each of ``pids``; returns how many were still there to receive it."""
    sent = 0
    for pid in pids:
        try:
            os.kill(pid, sig)
            sent += 1
        except OSError:
            pass
    return sent


def alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie, waiting for a parent that may never reap it, does not)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")


def wait_gone(pids: list[int], timeout: float = 30.0) -> list[int]:
    """Wait until none of ``pids`` runs; returns those still running after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    left = [pid for pid in pids if alive(pid)]
    while left and time.monotonic() < deadline:
        time.sleep(0.05)
        left = [pid for pid in left if alive(pid)]
    return left
