"""The results folder of one run, written as the run goes.

Layout (every file is appended or rewritten as soon as its data exists, so a crashed run keeps
everything up to its last completed step)::

    <run_dir>/
      config.yaml        the resolved experiment config
      status.json        {"state": running|completed|failed|stopped, "rounds_completed": n,
                          "error": the one-line cause of a failed or stopped run, ...}
      utility.jsonl      one row per evaluated round: loss, accuracy, macro_f1
      fit.jsonl          one row per client update: examples, steps, train loss, seconds
      privacy.jsonl      one row per attacked update: psnr, ssim, lpips, their intensity-
                         invariant scores, leakage above the prior, label accuracy, time
      failures.jsonl     clients that failed in a round
      warnings.jsonl     one row per warning, {"where": load|training|attack, "message": ...}
      grids/round003_client01.png   originals (top) vs matched reconstructions (bottom)
      plots/utility.png, plots/privacy.png
      summary.md         the tables printed at the end, then the warnings
      checkpoint.npz     the global model after the last completed round (fl_shadow/checkpoint)

``status.json`` ends in exactly one final state, the first one recorded: ``completed``;
``failed`` (a round without enough replies, a server error: ``error`` is the cause in one
line); ``stopped`` (``flwr stop``, SIGINT or SIGTERM: whatever the dying process writes after
that is ignored). A run killed outright (SIGKILL, a lost machine) stays ``running``.

``warnings.jsonl`` holds each distinct message once (:mod:`fl_shadow.diagnostics`):
``load``: the experiment's checks at load (:func:`~fl_shadow.apps.experiment.check_experiment`:
a small test split, overall or per class; few public images for a generator; ...), written as
the run starts; ``training`` (the loss became non-finite, or the clients' mean train loss,
weighted by their images, rose above :data:`~fl_shadow.diagnostics.DIVERGENCE_FACTOR` times
its first round's) and ``attack`` (labels recovered wrongly), computed from the rows when the run ends (completed or failed).
The file is rewritten whole each time; ``summary.md`` lists the same rows under "Warnings".

A resumed run (:class:`RunRecorder` with ``resume_after=k``) first drops every row of a round
after ``k`` from each ``*.jsonl`` (the unfinished round's partial rows, written before the kill)
and those rounds' grids, then appends to the same files, so nothing is duplicated; it keeps
the ``load`` warnings and computes the others again at its end.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from fl_shadow.diagnostics import WHERE_LOAD, RunWarning, deduplicated, run_diagnostics
from fl_shadow.errors import ConfigError, RunFailed

if TYPE_CHECKING:
    from fl_shadow.scoring import Scores
    from fl_shadow.threat_model import AttackOutcome

log = logging.getLogger(__name__)

#: States after which ``status.json`` is not rewritten.
FINAL_STATES = ("completed", "failed", "stopped")
#: The run's warnings, one ``{"where", "message"}`` row each (see the module docstring).
WARNINGS_FILE = "warnings.jsonl"


def new_run_dir(output_dir: str | Path, name: str) -> Path:
    """``<output_dir>/<name>-<YYYYmmdd-HHMMSS>``, never an existing folder."""
    base = Path(output_dir) / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}"
    path, n = base, 1
    while path.exists():
        n += 1
        path = base.with_name(f"{base.name}-{n}")
    return path


def check_writable_folder(folder: str | Path, key: str) -> None:
    """Refuse a results folder no run can write, before anything starts.

    The folder may not exist yet (it is created), but the nearest existing folder on its way
    must be a folder, and writable.

    Raises:
        ConfigError: naming ``key`` (``output_dir``, ``run-dir``) and the path at fault.
    """
    path = Path(folder)
    for existing in (path, *path.parents):
        if not existing.exists():
            continue
        if not existing.is_dir():
            raise ConfigError(f"{key}: {existing} is a file, not a folder"
                              + ("" if existing == path else f" (on the way to {path})"))
        if not os.access(existing, os.W_OK | os.X_OK):
            raise ConfigError(f"{key}: {existing} is not writable")
        return


class RunRecorder:
    """Writes one run's results folder.

    Args:
        run_dir: the folder (created).
        config_yaml: the resolved config, saved as ``config.yaml``.
        num_rounds: total rounds (for status and progress lines).
        resume_after: continue the folder of an interrupted run whose last completed round is
            this one: rows of later rounds are dropped (:func:`drop_rows_after`), the kept rows
            are read back for the final summary, ``seconds`` keeps counting from the earlier
            attempts, and ``status.json`` lists it under ``resumed_after``. None: a new run.
        load_warnings: the messages of the experiment's checks at load
            (:func:`fl_shadow.diagnostics.capture_warnings` around
            :func:`~fl_shadow.apps.experiment.check_experiment`), written to ``warnings.jsonl``
            at once.
        attack_name: the attack's name, first word of its warnings (None: "the attack").
    """

    def __init__(self, run_dir: str | Path, config_yaml: str, num_rounds: int, *,
                 resume_after: int | None = None, load_warnings: Sequence[str] = (),
                 attack_name: str | None = None) -> None:
        self.run_dir = Path(run_dir)
        self.num_rounds = num_rounds
        self.attack_name = attack_name or "the attack"
        self.load_warnings = deduplicated(RunWarning(WHERE_LOAD, m) for m in load_warnings)
        self.warnings: list[RunWarning] = []  # what warnings.jsonl holds
        self.started = time.time()
        self.utility: list[dict[str, Any]] = []
        self.privacy: list[dict[str, Any]] = []
        self.fits: list[dict[str, Any]] = []
        self.resumed_after: list[int] = []
        self.final_state: str | None = None
        self._status_lock = threading.Lock()  # a stop handler runs in another thread
        # The server's attacks and evaluation depend on it in the last digits (float order).
        self.server_threads = torch.get_num_threads()
        if resume_after is not None and not 1 <= resume_after < num_rounds:
            raise ValueError(f"resume_after: expected a completed round in 1..{num_rounds - 1}, "
                             f"got {resume_after}")  # checked before any row is dropped
        if resume_after is None:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            (self.run_dir / "config.yaml").write_text(config_yaml)
        else:
            self._reopen(resume_after)
        self._set_warnings(self.load_warnings)
        self._status("running", rounds_completed=resume_after or 0)
        log.info("results folder: %s", self.run_dir.resolve())

    def _reopen(self, last_round: int) -> None:
        try:  # an unreadable status only loses the earlier attempts' time and resumes
            previous = json.loads((self.run_dir / "status.json").read_text())
        except (OSError, ValueError):
            previous = {}
        previous = previous if isinstance(previous, dict) else {}
        seconds, resumed = previous.get("seconds", 0.0), previous.get("resumed_after", [])
        self.started -= float(seconds) if _is_number(seconds) and math.isfinite(seconds) else 0.0
        earlier = [r for r in resumed if _is_int(r)] if isinstance(resumed, list) else []
        self.resumed_after = [*earlier, last_round]
        drop_rows_after(self.run_dir, last_round)
        self.utility = read_jsonl(self.run_dir / "utility.jsonl")
        self.privacy = read_jsonl(self.run_dir / "privacy.jsonl")
        self.fits = read_jsonl(self.run_dir / "fit.jsonl")
        # The earlier attempts' checks at load stay; the end-of-run ones are computed again.
        earlier = [w for w in read_warnings(self.run_dir) if w.where == WHERE_LOAD]
        self.load_warnings = deduplicated([*earlier, *self.load_warnings])
        by_round: dict[int, list[dict[str, Any]]] = {}
        for row in read_jsonl(self.run_dir / "client_utility.jsonl"):
            by_round.setdefault(int(row["round"]), []).append(row)
        for server_round, rows in by_round.items():
            self._join_client_means(server_round, rows)
        log.info("resuming %s after round %d/%d", self.run_dir, last_round, self.num_rounds)

    # -- rows -------------------------------------------------------------------------------
    def log_fit(self, server_round: int, client_id: int, num_examples: int,
                metrics: Mapping[str, Any]) -> None:
        row = {"round": server_round, "client": client_id, "num_examples": num_examples}
        row.update({k.replace("-", "_"): v for k, v in metrics.items()
                    if k not in ("audit", "partition-id")})
        self.fits.append(row)
        self._append("fit.jsonl", row)

    def log_failure(self, server_round: int, reason: str, *, client_id: int | None = None
                    ) -> None:
        """One row of ``failures.jsonl``: the round, the client when known, the reason."""
        row: dict[str, Any] = {"round": server_round}
        if client_id is not None:
            row["client"] = client_id
        row["error"] = reason
        self._append("failures.jsonl", row)
        log.warning("round %d: a client failed: %s", server_round, reason)

    def log_skipped_attack(self, server_round: int, client_id: int, reason: str) -> None:
        """A ``privacy.jsonl`` row for an update the attack wanted but did not attack."""
        row = {"round": server_round, "client": client_id, "skipped": reason}
        self.privacy.append(row)
        self._append("privacy.jsonl", row)

    def log_utility(self, server_round: int, loss: float, metrics: Mapping[str, Any]) -> None:
        row = {"round": server_round, "loss": float(loss), **{k: float(v) for k, v in
                                                             metrics.items()}}
        self.utility.append(row)
        self._append("utility.jsonl", row)
        log.info("round %d/%d: test accuracy %.4f, macro-F1 %.4f, loss %.4f", server_round,
                 self.num_rounds, row.get("accuracy", math.nan), row.get("macro_f1", math.nan),
                 loss)
        self._status("running", rounds_completed=server_round)

    def log_client_utility(self, server_round: int, rows: list[dict[str, Any]]) -> None:
        """Clients' own evaluation of the round's global model (through their private part,
        e.g. FedKL's key): one row per client into ``client_utility.jsonl``; the example-weighted
        means join the round's utility row as ``client_accuracy`` / ``client_macro_f1``."""
        for row in rows:
            self._append("client_utility.jsonl", {"round": server_round, **row})
        means = self._join_client_means(server_round, rows)
        if means:
            log.info("round %d/%d: clients' own models: accuracy %.4f, macro-F1 %.4f",
                     server_round, self.num_rounds, means["client_accuracy"],
                     means["client_macro_f1"])

    def _join_client_means(self, server_round: int,
                           rows: list[dict[str, Any]]) -> dict[str, float]:
        total = sum(r["num_examples"] for r in rows)
        if not rows or total == 0:
            return {}
        means = {f"client_{m}": sum(r[m] * r["num_examples"] for r in rows) / total
                 for m in ("accuracy", "macro_f1")}
        for row in self.utility:
            if row["round"] == server_round:
                row.update(means)
        return means

    def log_attack(self, outcome: AttackOutcome, scores: Scores | None) -> None:
        rec = outcome.reconstruction
        row: dict[str, Any] = {
            "round": outcome.server_round, "client": outcome.client_id,
            "num_images": int(rec.images.shape[0]), "attack_loss": rec.loss,
            "iterations": rec.iterations, "attack_seconds": rec.seconds,
        }
        if scores is not None:
            row.update(scores.summary)
            # Per matched pair (image_index joins the same image across attacks and runs).
            row["pairs"] = scores.per_pair
        self.privacy.append(row)
        self._append("privacy.jsonl", row)
        grid = self.run_dir / "grids" / f"round{outcome.server_round:03d}_client" \
                                        f"{outcome.client_id:02d}.png"
        save_grid(grid, rec.images, scores, title=f"round {outcome.server_round}, client "
                  f"{outcome.client_id}")
        if scores is not None:
            log.info("round %d client %d: PSNR %.2f dB, SSIM %.3f, LPIPS %.3f (%d images, "
                     "%.1fs)", outcome.server_round, outcome.client_id, row["psnr"], row["ssim"],
                     row["lpips"], row["num_images"], rec.seconds)

    def fail(self, error: BaseException) -> None:
        """Mark the run failed with ``error`` as its one-line cause (an interrupt or exit
        marks it stopped); nothing if the run already ended."""
        if isinstance(error, (KeyboardInterrupt, SystemExit)):
            self.stop(f"stopped by {type(error).__name__}")
            return
        # The project's own causes are written for the user; anything else gets its type.
        cause = str(error) if isinstance(error, RunFailed) else exception_line(error)
        self._status("failed", rounds_completed=self.rounds_done(), error=one_line(cause))
        self._diagnose()  # a diverged training may be why it failed

    def stop(self, reason: str) -> None:
        """Mark the run stopped (``flwr stop``, a signal); nothing if the run already ended."""
        self._status("stopped", rounds_completed=self.rounds_done(), error=one_line(reason))

    def finish(self) -> str:
        """Write the end-of-run warnings, plots and ``summary.md``; log the summary; mark the
        run completed."""
        self._diagnose()
        text = summary_markdown(self.utility, self.privacy, self.fits,
                                run_warnings=self.warnings)
        (self.run_dir / "summary.md").write_text(text)
        try:
            save_plots(self.run_dir / "plots", self.utility, self.privacy)
        except Exception as exc:  # plots are a convenience; never lose a finished run to them
            log.warning("could not draw plots: %s", exc)
        self._status("completed", rounds_completed=self.num_rounds)
        log.info("summary of %s\n%s", self.run_dir, text)
        return text

    # -- internals --------------------------------------------------------------------------
    def _diagnose(self) -> None:
        """The load warnings and the end-of-run diagnostics of the rows, into
        ``warnings.jsonl``."""
        self._set_warnings([*self.load_warnings, *run_diagnostics(
            self.utility, self.fits, self.privacy, attack=self.attack_name)])

    def _set_warnings(self, run_warnings: Sequence[RunWarning]) -> None:
        """Rewrite ``warnings.jsonl`` with ``run_warnings`` (deduplicated); log the new ones."""
        new = deduplicated(run_warnings)
        for warning in new:
            if warning not in self.warnings:
                log.warning("warning (%s): %s", warning.where, warning.message)
        self.warnings = new
        tmp = self.run_dir / "warnings.jsonl.tmp"
        tmp.write_text("".join(json.dumps(w.to_json()) + "\n" for w in new))
        tmp.replace(self.run_dir / WARNINGS_FILE)

    def rounds_done(self) -> int:
        """The last round with a utility row (0 before any)."""
        return max((r["round"] for r in self.utility), default=0)

    def _append(self, name: str, row: Mapping[str, Any]) -> None:
        with (self.run_dir / name).open("a") as f:
            f.write(json.dumps(row, default=float) + "\n")

    def _status(self, state: str, **extra: Any) -> None:
        with self._status_lock:
            if self.final_state is not None:
                log.debug("status %s ignored: the run already %s", state, self.final_state)
                return
            if state in FINAL_STATES:
                self.final_state = state
                if state != "completed":
                    log.error("run %s: %s", state, extra.get("error", ""))
            self._write_status(state, **extra)

    def _write_status(self, state: str, **extra: Any) -> None:
        status = {"state": state, "num_rounds": self.num_rounds,
                  "seconds": round(time.time() - self.started, 2),
                  "server_torch_threads": self.server_threads, **extra}
        if self.resumed_after:
            status["resumed_after"] = self.resumed_after
        tmp = self.run_dir / "status.json.tmp"
        tmp.write_text(json.dumps(status))
        tmp.replace(self.run_dir / "status.json")


#: Longest failure reason kept in a row (a client's message can be a whole traceback).
MAX_REASON_CHARS = 1000
_ANSI_ESCAPE = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]")
# GridClientProxy's ValueError around an error reply (flwr.server.compat.grid_client_proxy).
_GRID_WRAPPER = re.compile(r"Message contains an Error \(reason: (?P<reason>.*)\)\. It originated "
                           r"during client-side execution of a message\.", re.S)
# Flower's runtimes' reason for a ClientApp that raised: "<class 'T'>:<'message'>".
_RUNTIME_REASON = re.compile(r"<class '(?P<type>[^']+)'>:<'(?P<message>.*)'>", re.S)
# Ray's simulation wraps the ClientApp's exception; only its message survives, after this.
_CLIENT_APP_EXCEPTION = "ClientAppException occurred. Message: "
# The one-line reason of clients.protocol.one_line_errors_mod: "client 3: Type: message".
_CLIENT_PREFIX = re.compile(r"client (?P<client>\d+): (?P<reason>.+)", re.S)


def one_line(text: str, *, limit: int = MAX_REASON_CHARS) -> str:
    """``text`` without terminal escapes, its non-empty lines joined by spaces, cut to
    ``limit`` characters."""
    lines = [line.strip() for line in _ANSI_ESCAPE.sub("", text).splitlines() if line.strip()]
    joined = " ".join(lines)
    return joined if len(joined) <= limit else joined[:limit - 3] + "..."


def exception_line(exc: BaseException) -> str:
    """``Type: message`` of an exception, in one line (the type alone when it has no message)."""
    message = one_line(str(exc))
    return f"{type(exc).__name__}: {message}" if message else type(exc).__name__


def describe_failure(failure: object) -> tuple[int | None, str]:
    """``(client, reason)`` of a client failure as Flower hands it to a strategy: an
    exception, or a ``(proxy, result)`` pair whose status is not OK.

    The reason is the client's own ``Type: message`` in one line: Flower's wrappers (the
    legacy proxy's ``Message contains an Error (reason: ...)``, the runtimes'
    ``<class '...'>:<'...'>``, Ray's traceback header and colours) are taken off. ``client``
    is the id a reply of :func:`clients.protocol.one_line_errors_mod` names (None when the
    failure does not say).
    """
    if isinstance(failure, BaseException):
        wrapped = _GRID_WRAPPER.fullmatch(_ANSI_ESCAPE.sub("", str(failure)).strip())
        text = (_runtime_reason(wrapped.group("reason")) if wrapped is not None
                else exception_line(failure))
    elif isinstance(failure, tuple) and len(failure) == 2 and hasattr(failure[1], "status"):
        status = failure[1].status
        text = f"{getattr(status.code, 'name', status.code)}: {status.message}"
    else:
        text = repr(failure)
    text = one_line(text)
    prefixed = _CLIENT_PREFIX.fullmatch(text)
    if prefixed is not None:
        return int(prefixed.group("client")), prefixed.group("reason")
    return None, text


def failure_reason(failure: object) -> str:
    """:func:`describe_failure` as one line: ``client 3: Type: message``."""
    client, reason = describe_failure(failure)
    return reason if client is None else f"client {client}: {reason}"


def _runtime_reason(reason: str) -> str:
    """The client's error inside an error reply's reason (see :func:`describe_failure`)."""
    match = _RUNTIME_REASON.fullmatch(reason.strip())
    if match is None:
        return reason  # already one line of this project's ClientApp, or Flower's own text
    type_name, message = match.group("type"), match.group("message")
    if _CLIENT_APP_EXCEPTION in message:  # Ray: the type is gone, the message survives
        return message.rsplit(_CLIENT_APP_EXCEPTION, 1)[1]
    return f"{type_name.rsplit('.', 1)[-1]}: {message}"


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


#: The privacy table's score columns: ``(privacy.jsonl key, header, decimals)``. ``a·x+b``:
#: up to brightness and contrast (:mod:`fl_shadow.metrics.invariant`); ``leak``: above the
#: public mean image (:mod:`fl_shadow.metrics.baseline`).
PRIVACY_TABLE: tuple[tuple[str, str, int], ...] = (
    ("psnr", "PSNR (dB)", 2), ("psnr_affine", "PSNR a·x+b (dB)", 2), ("ssim", "SSIM", 4),
    ("ssim_affine", "SSIM a·x+b", 4), ("ncc", "NCC", 4), ("lpips", "LPIPS", 4),
    ("leak_psnr_affine", "leak PSNR a·x+b (dB)", 2), ("leak_ssim_affine", "leak SSIM a·x+b", 4),
    ("label_accuracy", "label acc.", 2))
#: The foreground table's columns (inside each image's Grad-CAM++ region).
FOREGROUND_TABLE: tuple[tuple[str, str, int], ...] = (
    ("fg_psnr", "FG PSNR (dB)", 2), ("fg_ssim", "FG SSIM", 4), ("fg_lpips", "FG LPIPS", 4))
PRIVACY_COLUMNS = tuple(key for key, _, _ in PRIVACY_TABLE + FOREGROUND_TABLE)
#: The line under the privacy table.
PRIVACY_LEGEND = ("a·x+b: scored after the best brightness/contrast map a·x+b (least squares, "
                  "a >= 0) of the reconstruction onto the original, so a right picture at the "
                  "wrong intensity counts; NCC: normalized cross-correlation (1 = the same "
                  "image up to brightness/contrast); leak: the score minus that of the public "
                  "split's mean image (what an attacker shows without the update; > 0: more "
                  "than that prior).")
_MISSING = "-"

#: What every row of a results file must hold for the summary and a resume to read it:
#: ``file -> {field: (required, check)}``; other fields are free.
ROW_FIELDS: dict[str, dict[str, tuple[bool, Callable[[Any], bool]]]] = {
    "utility.jsonl": {"round": (True, _is_int), "loss": (True, _is_number),
                      "accuracy": (False, _is_number), "macro_f1": (False, _is_number)},
    "fit.jsonl": {"round": (True, _is_int), "client": (True, _is_int),
                  "num_examples": (False, _is_int), "fit_seconds": (False, _is_number)},
    "privacy.jsonl": {"round": (True, _is_int), "client": (True, _is_int),
                      "skipped": (False, lambda v: isinstance(v, str)),
                      "num_images": (False, _is_int), "attack_seconds": (False, _is_number),
                      **{m: (False, _is_number) for m in PRIVACY_COLUMNS}},
    "client_utility.jsonl": {"round": (True, _is_int), "client": (True, _is_int),
                             "num_examples": (True, _is_int), "accuracy": (True, _is_number),
                             "macro_f1": (True, _is_number)},
    "failures.jsonl": {"round": (True, _is_int)},
    WARNINGS_FILE: {"where": (True, lambda v: isinstance(v, str)),
                    "message": (True, lambda v: isinstance(v, str))},
}
_ANY_ROW: dict[str, tuple[bool, Callable[[Any], bool]]] = {"round": (False, _is_int)}


def row_problem(row: Any, fields: Mapping[str, tuple[bool, Callable[[Any], bool]]]
                ) -> str | None:
    """Why ``row`` is not a valid row with ``fields`` (None: it is one)."""
    if not isinstance(row, dict):
        return f"not a JSON object ({type(row).__name__})"
    for name, (required, check) in fields.items():
        if name not in row:
            if required:
                return f"no {name!r}"
        elif not check(row[name]):
            return f"{name!r} is {row[name]!r}"
    if fields is ROW_FIELDS["privacy.jsonl"] and "skipped" not in row \
            and not ("num_images" in row and "attack_seconds" in row):
        return "neither a skipped nor an attacked update"
    return None


def read_rows(path: str | Path) -> tuple[list[dict[str, Any]], list[str]]:
    """The valid rows of a ``.jsonl`` results file, and one line per line that is not one.

    A line is skipped when it is not UTF-8, not JSON, not a JSON object, or lacks a field of
    :data:`ROW_FIELDS` for this file (any file: a ``round`` that is not an integer). A torn
    last line (a kill while appending) is one of those.
    """
    path = Path(path)
    if not path.exists():
        return [], []
    fields = ROW_FIELDS.get(path.name, _ANY_ROW)
    rows: list[dict[str, Any]] = []
    problems: list[str] = []
    for number, raw in enumerate(path.read_bytes().splitlines(), start=1):
        if not raw.strip():
            continue
        try:
            row = json.loads(raw.decode("utf-8"))
        except UnicodeDecodeError:
            problems.append(f"{path.name} line {number}: not UTF-8 text")
            continue
        except json.JSONDecodeError:
            problems.append(f"{path.name} line {number}: not JSON (a torn line?)")
            continue
        problem = row_problem(row, fields)
        if problem is not None:
            problems.append(f"{path.name} line {number}: {problem}")
            continue
        rows.append(row)
    return rows, problems


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    """The valid rows of a ``.jsonl`` results file (see :func:`read_rows`); each skipped line
    is logged as one warning line naming the file and the line."""
    rows, problems = read_rows(path)
    for problem in problems:
        log.warning("%s: skipped", problem)
    return rows


def read_warnings(run_dir: str | Path) -> list[RunWarning]:
    """The warnings of a results folder (``warnings.jsonl``; none when it has no such file)."""
    return [RunWarning(r["where"], r["message"])
            for r in read_jsonl(Path(run_dir) / WARNINGS_FILE)]


def drop_rows_after(run_dir: str | Path, last_round: int) -> int:
    """Drop the rows of rounds after ``last_round`` from every ``*.jsonl`` of a results folder,
    and those rounds' grids; returns how many rows were dropped.

    Rows of a round the run did not finish were appended before it died; the resumed run writes
    that round again. A line that is not a valid row (:func:`read_rows`: a line cut short by
    the kill, bytes that are not text, a round that is not an integer) is dropped too, with a
    warning. Each file is rewritten atomically (temporary file, then rename).
    """
    run_dir = Path(run_dir)
    dropped = 0
    for path in sorted(run_dir.glob("*.jsonl")):
        rows, problems = read_rows(path)
        for problem in problems:
            log.warning("%s: dropped", problem)
        kept = [row for row in rows if row.get("round", 0) <= last_round]
        lines = [raw for raw in path.read_bytes().splitlines() if raw.strip()]
        if len(kept) == len(lines):
            continue
        dropped += len(lines) - len(kept)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text("".join(json.dumps(row) + "\n" for row in kept))
        tmp.replace(path)
    for grid in (run_dir / "grids").glob("round*_client*.png"):
        digits = grid.name[len("round"):].split("_", 1)[0]
        if digits.isdigit() and int(digits) > last_round:
            grid.unlink()
    if dropped:
        log.info("%s: dropped %d row(s) of rounds after %d", run_dir, dropped, last_round)
    return dropped


def summary_markdown(utility: list[dict[str, Any]], privacy: list[dict[str, Any]],
                     fits: list[dict[str, Any]], *,
                     run_warnings: Sequence[RunWarning] = ()) -> str:
    """Markdown tables: utility per round, privacy per attacked update (raw, up to brightness
    and contrast, leakage above the prior; :data:`PRIVACY_TABLE`), client time per round; then
    ``run_warnings`` under "Warnings" ("(none)" when there are none)."""
    lines = ["## Utility (global model, test split)", ""]
    if any("client_accuracy" in r for r in utility):
        lines += ["| round | accuracy | macro-F1 | loss | clients' accuracy | clients' macro-F1 |",
                  "|---:|---:|---:|---:|---:|---:|"]
        for r in utility:
            lines.append(f"| {r['round']} | {r.get('accuracy', math.nan):.4f} | "
                         f"{r.get('macro_f1', math.nan):.4f} | {r['loss']:.4f} | "
                         f"{r.get('client_accuracy', math.nan):.4f} | "
                         f"{r.get('client_macro_f1', math.nan):.4f} |")
        lines += ["", "Clients' columns: the global model as each client uses it (with its "
                  "private part, e.g. its FedKL key), on the test split, weighted by examples."]
    else:
        lines += ["| round | accuracy | macro-F1 | loss |", "|---:|---:|---:|---:|"]
        for r in utility:
            lines.append(f"| {r['round']} | {r.get('accuracy', math.nan):.4f} | "
                         f"{r.get('macro_f1', math.nan):.4f} | {r['loss']:.4f} |")
    lines += ["", "## Privacy (attacker's reconstructions vs. the attacked images)", ""]
    lines += _privacy_tables(privacy) if privacy else ["(no update was attacked)"]
    if fits:
        lines += ["", "## Client time (seconds per round, mean over clients)", "",
                  "| round | mean fit s | max fit s |", "|---:|---:|---:|"]
        by_round: dict[int, list[float]] = {}
        for r in fits:
            by_round.setdefault(r["round"], []).append(float(r.get("fit_seconds", math.nan)))
        for rnd, secs in sorted(by_round.items()):
            lines.append(f"| {rnd} | {sum(secs) / len(secs):.3f} | {max(secs):.3f} |")
    lines += ["", "## Warnings", ""]
    lines += [f"- {w.where}: {w.message}" for w in run_warnings] or ["(none)"]
    return "\n".join(lines) + "\n"


def _privacy_tables(privacy: list[dict[str, Any]]) -> list[str]:
    """The privacy table (one row per attacked or skipped update) with its legend, then the
    foreground table when the rows have foreground scores."""
    headers = [header for _, header, _ in PRIVACY_TABLE]
    lines = ["| round | client | images | " + " | ".join(headers) + " | attack s |",
             "|" + "---:|" * (len(headers) + 4)]
    for r in privacy:
        if "skipped" in r:
            lines.append(f"| {r['round']} | {r['client']} | | not attacked: {r['skipped']} |"
                         + " |" * len(headers))
            continue
        lines.append(f"| {r['round']} | {r['client']} | {r['num_images']} | "
                     + _cells(r, PRIVACY_TABLE) + f" | {r['attack_seconds']:.1f} |")
    lines += ["", PRIVACY_LEGEND]
    scored = [r for r in privacy if "skipped" not in r]
    if any(key in r for r in scored for key, _, _ in FOREGROUND_TABLE):
        lines += ["", "| round | client | " + " | ".join(h for _, h, _ in FOREGROUND_TABLE)
                  + " |", "|" + "---:|" * (len(FOREGROUND_TABLE) + 2)]
        lines += [f"| {r['round']} | {r['client']} | " + _cells(r, FOREGROUND_TABLE) + " |"
                  for r in scored]
        lines += ["", ("FG: inside each image's Grad-CAM++ foreground (top 30% of the "
                       "global model's map for its label).")]
    return lines


def _cells(row: Mapping[str, Any], columns: tuple[tuple[str, str, int], ...]) -> str:
    """The row's values of ``columns``, ``|``-separated; :data:`_MISSING` for an absent one
    (no public split: no ``leak_*``)."""
    return " | ".join(f"{row[key]:.{digits}f}" if key in row else _MISSING
                      for key, _, digits in columns)


def save_grid(path: Path, reconstructions: torch.Tensor, scores: Scores | None, *,
              title: str) -> None:
    """Originals (top row, when known) above their matched reconstructions (bottom row)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path.parent.mkdir(parents=True, exist_ok=True)
    if scores is not None:
        top, bottom = scores.matched_truth, scores.matched_reconstructions
        captions = [f"{p:.1f} dB / {s:.2f}" for p, s in zip(scores.per_pair["psnr"],
                                                           scores.per_pair["ssim"])]
    else:
        top, bottom, captions = None, reconstructions, [""] * len(reconstructions)
    n = bottom.shape[0]
    rows = 2 if top is not None else 1
    fig, axes = plt.subplots(rows, n, figsize=(1.6 * n + 0.4, 1.8 * rows + 0.4), squeeze=False)
    for j in range(n):
        if top is not None:
            _show(axes[0][j], top[j])
            axes[0][j].set_title("original" if j == 0 else "", fontsize=7)
        _show(axes[rows - 1][j], bottom[j])
        axes[rows - 1][j].set_title(captions[j], fontsize=7)
    fig.suptitle(title + ("  (PSNR / SSIM)" if top is not None else ""), fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _show(ax: Any, image: torch.Tensor) -> None:
    img = image.detach().cpu().clamp(0, 1)
    if img.shape[0] == 1:
        ax.imshow(img[0].numpy(), cmap="gray", vmin=0, vmax=1)
    else:
        ax.imshow(img.permute(1, 2, 0).numpy())
    ax.axis("off")


def save_plots(folder: Path, utility: list[dict[str, Any]], privacy: list[dict[str, Any]]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    folder.mkdir(parents=True, exist_ok=True)
    if utility:
        fig, ax = plt.subplots(figsize=(5, 3.2))
        rounds = [r["round"] for r in utility]
        for key, label in (("accuracy", "accuracy"), ("macro_f1", "macro-F1")):
            ax.plot(rounds, [r.get(key, math.nan) for r in utility], marker="o", label=label)
        ax.set_xlabel("round")
        ax.set_ylim(0, 1)
        ax.legend()
        ax.set_title("global model on the test split")
        fig.tight_layout()
        fig.savefig(folder / "utility.png", dpi=120)
        plt.close(fig)
    scored = [r for r in privacy if "psnr" in r]
    if scored:
        fig, axes = plt.subplots(1, 3, figsize=(10, 3.2))
        for ax, key in zip(axes, ("psnr", "ssim", "lpips")):
            for client in sorted({r["client"] for r in scored}):
                rows = [r for r in scored if r["client"] == client]
                ax.plot([r["round"] for r in rows], [r[key] for r in rows], marker="o",
                        label=f"client {client}")
            ax.set_xlabel("round")
            ax.set_title(key.upper())
        axes[0].legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(folder / "privacy.png", dpi=120)
        plt.close(fig)
