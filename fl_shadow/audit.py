"""The simulation's audit record: which images a client's update was computed from.

In simulation each client reports, next to its update, the global train-split indices of the
images of every local step. The server uses it only to score reconstructions after an attack;
attack code never receives it, and deployment clients never send it.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

import numpy as np

AuditRecord = list[list[int]]


def encode_audit(batches: Sequence[Sequence[int]], global_indices: np.ndarray) -> str:
    """Local per-step batch indices -> JSON text of global indices (a Flower metric value)."""
    return json.dumps([[int(global_indices[i]) for i in batch] for batch in batches])


def decode_audit(text: str) -> AuditRecord:
    record = json.loads(text)
    if not isinstance(record, list) or not all(isinstance(b, list) for b in record):
        raise ValueError("audit record must be a JSON list of lists of indices")
    return [[int(i) for i in batch] for batch in record]


def attacked_indices(audit: AuditRecord) -> list[int]:
    """Distinct image indices in order of first use: the order of the attacker's slots."""
    seen: dict[int, None] = {}
    for batch in audit:
        for index in batch:
            seen.setdefault(index, None)
    return list(seen)
