"""Warnings a run's results must carry: weak data, training that went wrong, wrong labels.

Pure functions over a dataset's labels and a run's rows (``utility.jsonl``, ``fit.jsonl``,
``privacy.jsonl``), so that one rule decides, for a single run
(:class:`fl_shadow.report.RunRecorder`, at its end) and for a sweep's records
(:mod:`fl_shadow.apps.sweep`), when training diverged or an attack got labels wrong:

* :func:`sparse_classes`: the test split's classes with too few images for a per-class score
  (checked at load, :func:`fl_shadow.apps.experiment.check_experiment`);
* :func:`training_warnings`: training that exploded (a non-finite loss) or diverged (the
  clients' mean train loss of the last round above :data:`DIVERGENCE_FACTOR` times the first
  round's);
* :func:`label_recovery_warning`, :func:`attack_warnings`: an attack that recovered labels
  wrongly (the per-pair ``label_correct`` of :mod:`fl_shadow.scoring`);
* :func:`capture_warnings`: the ``warnings.warn`` messages of a block (the load-time checks),
  recorded for the results folder instead of only printed.

A warning of a run is a :class:`RunWarning`: where it arose (:data:`WHERE_LOAD`,
:data:`WHERE_TRAINING`, :data:`WHERE_ATTACK`) and its one-line message.
"""

from __future__ import annotations

import contextlib
import math
import warnings
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

#: A federation whose clients' mean train loss ends this many times above where it started
#: diverged.
DIVERGENCE_FACTOR = 1.5

#: ``where`` of a warning raised while the experiment was loaded and checked.
WHERE_LOAD = "load"
#: ``where`` of a warning about the federation's training (end of the run).
WHERE_TRAINING = "training"
#: ``where`` of a warning about the attack's reconstructions (end of the run).
WHERE_ATTACK = "attack"


@dataclass(frozen=True)
class RunWarning:
    """One warning of a run, as ``warnings.jsonl`` holds it.

    Attributes:
        where: :data:`WHERE_LOAD`, :data:`WHERE_TRAINING` or :data:`WHERE_ATTACK`.
        message: one line.
    """

    where: str
    message: str

    def to_json(self) -> dict[str, str]:
        return {"where": self.where, "message": self.message}


def deduplicated(run_warnings: Iterable[RunWarning]) -> list[RunWarning]:
    """Each message once, where it was first seen, in first-seen order."""
    seen: dict[str, RunWarning] = {}
    for warning in run_warnings:
        seen.setdefault(warning.message, warning)
    return list(seen.values())


@contextlib.contextmanager
def capture_warnings() -> Iterator[list[str]]:
    """Record the ``UserWarning`` messages of the block instead of showing them.

    The project warns of weak-but-legal settings with ``UserWarning``; other categories (a
    library's ``DeprecationWarning``, a ``RuntimeWarning`` of NumPy) are not recorded but
    shown as usual, each once, when the block ends.

    Yields:
        A list that holds, once the block ends (also when it raises), each distinct message
        once, in first-seen order.

    Example:
        >>> with capture_warnings() as caught:
        ...     warnings.warn("data: few images")
        ...     warnings.warn("data: few images")
        >>> caught
        ['data: few images']
    """
    messages: list[str] = []
    seen: list[warnings.WarningMessage] = []
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")  # a message seen before (registry) is recorded too
            try:
                yield messages
            finally:
                seen = list(caught)
    finally:
        messages.extend(dict.fromkeys(str(w.message) for w in seen
                                      if issubclass(w.category, UserWarning)))
        others = {(w.category, str(w.message), w.filename, w.lineno): w for w in seen
                  if not issubclass(w.category, UserWarning)}
        for w in others.values():  # each once: a library may warn in every round
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)


def sparse_classes(labels: Sequence[int] | np.ndarray, class_names: Sequence[str], *,
                   minimum: int) -> list[tuple[str, int]]:
    """The classes with fewer than ``minimum`` images, and how many each has.

    Args:
        labels: ``(N,)`` integer labels in ``0..len(class_names)-1`` (a tensor is fine).
        class_names: one name per label.
        minimum: the fewest images a class should have (>= 1).

    Returns:
        ``[(name, count)]`` in label order; a class without any image has count 0.

    Raises:
        ValueError: ``minimum`` below 1, or a label outside the classes.

    Example:
        >>> sparse_classes([0, 0, 0, 2], ["a", "b", "c"], minimum=2)
        [('b', 0), ('c', 1)]
    """
    if minimum < 1:
        raise ValueError(f"minimum must be >= 1, got {minimum}")
    values = np.asarray(labels, dtype=np.int64).reshape(-1)
    if values.size and (values.min() < 0 or values.max() >= len(class_names)):
        raise ValueError(f"labels must be in 0..{len(class_names) - 1} (one per class name), "
                         f"got {int(values.min())}..{int(values.max())}")
    counts = np.bincount(values, minlength=len(class_names))
    return [(str(name), int(n)) for name, n in zip(class_names, counts) if n < minimum]


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def training_warnings(utility: Sequence[Mapping[str, Any]],
                      fits: Sequence[Mapping[str, Any]]) -> list[str]:
    """Training that exploded or diverged, from a run's rows.

    Args:
        utility: ``utility.jsonl`` rows (``loss``: the global model's test loss).
        fits: ``fit.jsonl`` rows (``round``, ``train_loss``: a client's mean loss of the
            round; rows without a numeric one are left out).

    Returns:
        At most two messages: the global test loss became non-finite; a client's train loss
        became non-finite, or else the clients' mean train loss of the last round is above
        :data:`DIVERGENCE_FACTOR` times the first round's (two rounds at least).

    Example:
        >>> training_warnings([], [{"round": 1, "train_loss": 1.0},
        ...                        {"round": 3, "train_loss": 2.0}])
        ["training diverged: the clients' mean train loss (weighted by their images) rose from 1 (round 1) to 2 (round 3)"]
    """
    out = []
    if any(_is_number(r.get("loss")) and not math.isfinite(r["loss"]) for r in utility):
        out.append("the global model's test loss became non-finite (training exploded)")
    by_round: dict[int, list[tuple[float, float]]] = {}
    for row in fits:
        if _is_number(row.get("train_loss")):
            # weighted by the client's images: a one-image hospital's loss swings by tens
            # between rounds at the default lr while the federation trains well
            weight = float(row["num_examples"]) if _is_number(row.get("num_examples")) else 1.0
            by_round.setdefault(int(row["round"]), []).append((float(row["train_loss"]),
                                                               max(weight, 0.0)))
    if any(not math.isfinite(v) for vs in by_round.values() for v, _ in vs):
        out.append("a client's train loss became non-finite (training exploded)")
    elif len(by_round) >= 2:
        first, last = (_weighted_mean(by_round[r]) for r in (min(by_round), max(by_round)))
        if last > DIVERGENCE_FACTOR * first:
            out.append(f"training diverged: the clients' mean train loss (weighted by their "
                       f"images) rose from {first:.3g} (round {min(by_round)}) to {last:.3g} "
                       f"(round {max(by_round)})")
    return out


def _weighted_mean(values: Sequence[tuple[float, float]]) -> float:
    total = sum(w for _, w in values)
    if total <= 0:
        return float(np.mean([v for v, _ in values]))
    return sum(v * w for v, w in values) / total


def label_recovery_warning(attack: str, label_correct: Sequence[float], *, server_round: int,
                           client: int) -> str | None:
    """The warning for one attacked update whose labels came out wrong (None: all right).

    Args:
        attack: the attack's name or label (first word of the message).
        label_correct: per matched pair, 1.0 when the recovered label is the true one.
        server_round, client: the attacked update.

    Example:
        >>> label_recovery_warning("ig", [1.0, 0.0, 1.0], server_round=2, client=0)
        'ig recovered 1 of 3 labels wrongly (round 2, client 0)'
    """
    wrong = sum(1 for hit in label_correct if hit < 1)
    if not wrong:
        return None
    return (f"{attack} recovered {wrong} of {len(label_correct)} labels wrongly (round "
            f"{server_round}, client {client})")


def attack_warnings(privacy: Sequence[Mapping[str, Any]], *, attack: str) -> list[str]:
    """:func:`label_recovery_warning` of every scored row of ``privacy.jsonl`` (rows of a
    skipped update, or unscored ones of a deployment, have no ``pairs`` and give none)."""
    out = []
    for row in privacy:
        pairs = row.get("pairs")
        hits = pairs.get("label_correct") if isinstance(pairs, Mapping) else None
        if not isinstance(hits, list) or not all(_is_number(h) for h in hits):
            continue
        message = label_recovery_warning(attack, hits, server_round=int(row["round"]),
                                         client=int(row["client"]))
        if message is not None:
            out.append(message)
    return out


def run_diagnostics(utility: Sequence[Mapping[str, Any]], fits: Sequence[Mapping[str, Any]],
                    privacy: Sequence[Mapping[str, Any]], *, attack: str) -> list[RunWarning]:
    """Every end-of-run warning of a run's rows: :func:`training_warnings`, then
    :func:`attack_warnings`."""
    return ([RunWarning(WHERE_TRAINING, m) for m in training_warnings(utility, fits)]
            + [RunWarning(WHERE_ATTACK, m) for m in attack_warnings(privacy, attack=attack)])


__all__ = ["DIVERGENCE_FACTOR", "WHERE_ATTACK", "WHERE_LOAD", "WHERE_TRAINING", "RunWarning",
           "attack_warnings", "capture_warnings", "deduplicated", "label_recovery_warning",
           "run_diagnostics", "sparse_classes", "training_warnings"]
