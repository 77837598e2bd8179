"""Count how a checkout handles the fuzz corpus (tests/fuzz_corpus.py), one case at a time.

    PYTHONPATH=<checkout> python tests/fuzz_counts.py [--out counts.json]

Run from the checkout's root. Each case runs in a forked child with its address space capped
at what the parent holds plus :data:`fuzz_corpus.AVAILABLE_MEMORY`, and a time limit: a case
that runs out of either is a memory blow-up. Prints the verdicts (:func:`fuzz_corpus.verdict`)
per kind of input, and the cases that were not handled, one line each.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import resource
import select
import signal
import sys
import tempfile
import time
import warnings
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from fuzz_corpus import AVAILABLE_MEMORY, CASES, Case, run_case, verdict  # noqa: E402

TIME_LIMIT_S = 180


def _vm_size() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmSize:"):
            return int(line.split()[1]) * 1024
    return 0


def _in_child(case: Case, write_fd: int) -> None:
    limit = _vm_size() + AVAILABLE_MEMORY
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    try:
        with tempfile.TemporaryDirectory() as tmp:
            outcome = run_case(case, Path(tmp))
            result = {"verdict": verdict(case, outcome), "message": outcome.message[:300],
                      "type": outcome.error_type, "changed": outcome.changed,
                      "bad_data": outcome.bad_data}
    except BaseException as exc:  # noqa: BLE001  (setup failed, or memory ran out on the way)
        result = {"verdict": "blow-up" if isinstance(exc, MemoryError) else "harness-error",
                  "message": f"{type(exc).__name__}: {exc}"[:300], "type": type(exc).__name__}
    os.write(write_fd, json.dumps(result).encode())
    os.close(write_fd)


def run_isolated(case: Case) -> dict[str, object]:
    read_fd, write_fd = os.pipe()
    start = time.monotonic()
    pid = os.fork()
    if pid == 0:
        os.close(read_fd)
        code = 0
        try:
            _in_child(case, write_fd)
        finally:
            os._exit(code)
    os.close(write_fd)
    chunks = []
    while True:
        ready, _, _ = select.select([read_fd], [], [], max(0.0, TIME_LIMIT_S -
                                                           (time.monotonic() - start)))
        if not ready:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            os.close(read_fd)
            return {"verdict": "blow-up", "message": f"still running after {TIME_LIMIT_S} s",
                    "type": "timeout"}
        chunk = os.read(read_fd, 1 << 16)
        if not chunk:
            break
        chunks.append(chunk)
    os.close(read_fd)
    _, status = os.waitpid(pid, 0)
    if not chunks:
        return {"verdict": "blow-up", "message": f"the process died (status {status})",
                "type": "killed"}
    return json.loads(b"".join(chunks))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", help="write every case's result to this JSON file")
    parser.add_argument("--only", help="run only cases whose label contains this")
    args = parser.parse_args()
    warnings.simplefilter("ignore")
    logging.disable(logging.WARNING)
    try:  # a checkout with the memory check: the same free memory as the suite assumes
        import fl_shadow.apps.experiment as experiment

        experiment.available_memory_bytes = lambda: AVAILABLE_MEMORY
    except ImportError:
        pass
    # Imported once, before the children fork (each would take seconds).
    import fl_shadow.data  # noqa: F401
    import fl_shadow.report  # noqa: F401
    from fuzz_corpus import _modules

    _modules()
    cases = [c for c in CASES if not args.only or args.only in c.label]
    results = []
    for i, case in enumerate(cases, 1):
        result = {"label": case.label, "verb": case.verb, "expect": case.expect,
                  **run_isolated(case)}
        results.append(result)
        print(f"[{i}/{len(cases)}] {result['verdict']:>13}  {case.verb:8} {case.label}"
              + ("" if result["verdict"] in ("ok", "clean") else
                 f"  -- {result['type']}: {str(result['message'])[:160]}"), flush=True)
    print()
    print(f"{len(results)} cases, by verdict:", dict(Counter(r["verdict"] for r in results)))
    for verb in ("validate", "load", "cache", "resume", "rows"):
        counted = Counter(r["verdict"] for r in results if r["verb"] == verb)
        print(f"  {verb:8} {dict(counted)}")
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
