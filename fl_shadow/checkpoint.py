"""Checkpoint and resume: the server's state after each completed round, and how a killed run
continues from it.

After every completed round (global model aggregated, evaluated and, for a defense with a private
model, evaluated by the clients) the server writes ``<run_dir>/checkpoint.npz`` atomically (a
temporary file, fsynced, then renamed over the old one), so a kill at any instant leaves either
the previous round's checkpoint or the new one, never a torn file. It holds:

* the global model's arrays, in ``state_dict`` order;
* the round it closes and the run's total rounds;
* the SHA-256 of the resolved config (``config.yaml``), so a folder whose config was edited
  afterwards is not continued as if it were the same experiment;
* the wrapped strategy's own arrays across rounds (``StrategySpec.server_state``: FedAdam's and
  FedYogi's moments, FedAvgM's momentum), so a resumed server optimizer continues where it was;
* the server process's random states (torch CPU, NumPy's global generator, Python's ``random``).
  Nothing in the server draws from them after set-up today (the attack seeds its own generator
  per update, evaluation is deterministic), but a resumed server rebuilds everything from the
  config, which reseeds them; restoring them keeps any future draw identical too.

:func:`prepare_resume` checks a folder (config readable, run not completed, checkpoint present
and made from this config); the ServerApp then starts Flower with the checkpoint's weights as
initial parameters and only the remaining rounds, and :class:`~strategies.curious.
CuriousServer` numbers them from ``checkpoint.server_round + 1``, because clients derive their
per-round randomness from ``(seed, client_id, server_round)``.

What resumes exactly, and what does not:

* Stateless clients (no defense, ``dp``, ``clipping``, ``sparsification``, ``soteria``,
  ``outpost``): the resumed run ends with the same numbers as an uninterrupted one under the same
  seed (tested, in-process and with a real Flower simulation).
* Defenses that keep client state between rounds in Flower's node state (``context.state``:
  ``shadow``, ``fedkl``, ``latent_minimax``, ``censor``): the clients are other processes, on
  other machines in deployment, and a new simulation starts them empty, so a resumed run differs
  from an uninterrupted one (e.g. the shadow defense refits its latent codes, FedKL draws new
  keys). :func:`keeps_client_state` finds them; ``fl-shadow resume`` refuses them unless told
  that this loss is acceptable, and the server logs a warning.
* Client sampling with ``strategy.fraction_fit < 1`` uses Flower's sampler over node ids that a
  new simulation assigns afresh, so which clients take part after the resume can differ (such
  runs are not reproducible from scratch either).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import random
import zipfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from fl_shadow.config import ExperimentConfig, load_config
from fl_shadow.defenses import DEFENSES
from fl_shadow.errors import ResumeError


CHECKPOINT_FILE = "checkpoint.npz"
MAX_ROUNDS = 100_000  # train.rounds' bound
FORMAT_VERSION = 2
READABLE_FORMATS = (1, 2)  # version 1 had no strategy state


@dataclass(frozen=True)
class RngState:
    """The server process's random states.

    Attributes:
        torch_cpu: ``torch.get_rng_state()`` as uint8.
        numpy_keys, numpy_pos, numpy_has_gauss, numpy_cached_gaussian: NumPy's legacy global
            MT19937 (``np.random.get_state()``).
        python_words, python_gauss_next: ``random.getstate()`` (version 3: 624 words + index).
    """

    torch_cpu: np.ndarray
    numpy_keys: np.ndarray
    numpy_pos: int
    numpy_has_gauss: int
    numpy_cached_gaussian: float
    python_words: np.ndarray
    python_gauss_next: float | None


@dataclass(frozen=True)
class Checkpoint:
    """The server's state after a completed round.

    Attributes:
        server_round: the last completed round (>= 1).
        num_rounds: the run's total rounds.
        config_sha256: digest of the resolved config (:func:`config_digest`).
        arrays: the global model, one array per ``state_dict`` entry, in order.
        rng: the server process's random states at the end of the round.
        strategy_state: the strategy's arrays kept across rounds, by attribute name (None:
            not set yet).
    """

    server_round: int
    num_rounds: int
    config_sha256: str
    arrays: list[np.ndarray]
    rng: RngState
    strategy_state: dict[str, list[np.ndarray] | None] = field(default_factory=dict)


def config_digest(config_yaml: str) -> str:
    """SHA-256 of the resolved config's YAML text (what ``config.yaml`` holds)."""
    return hashlib.sha256(config_yaml.encode()).hexdigest()


def capture_rng() -> RngState:
    """The current torch CPU, NumPy global and Python ``random`` states."""
    _, keys, pos, has_gauss, cached = np.random.get_state(legacy=True)
    version, words, gauss_next = random.getstate()
    if version != 3:
        raise RuntimeError(f"unsupported Python random state version {version}")
    return RngState(torch_cpu=torch.get_rng_state().numpy().copy(),
                    numpy_keys=np.asarray(keys, dtype=np.uint32).copy(), numpy_pos=int(pos),
                    numpy_has_gauss=int(has_gauss), numpy_cached_gaussian=float(cached),
                    python_words=np.asarray(words, dtype=np.uint64),
                    python_gauss_next=gauss_next)


def restore_rng(state: RngState) -> None:
    """Put back what :func:`capture_rng` returned."""
    torch.set_rng_state(torch.from_numpy(state.torch_cpu.astype(np.uint8)))
    np.random.set_state(("MT19937", state.numpy_keys.astype(np.uint32), state.numpy_pos,
                         state.numpy_has_gauss, state.numpy_cached_gaussian))
    random.setstate((3, tuple(int(w) for w in state.python_words), state.python_gauss_next))


def save_checkpoint(run_dir: str | Path, checkpoint: Checkpoint) -> Path:
    """Write ``<run_dir>/checkpoint.npz`` atomically; returns its path."""
    run_dir = Path(run_dir)
    rng = checkpoint.rng
    meta = {"format": FORMAT_VERSION, "server_round": checkpoint.server_round,
            "num_rounds": checkpoint.num_rounds, "config_sha256": checkpoint.config_sha256,
            "num_arrays": len(checkpoint.arrays), "numpy_pos": rng.numpy_pos,
            "numpy_has_gauss": rng.numpy_has_gauss,
            "numpy_cached_gaussian": rng.numpy_cached_gaussian,
            "python_gauss_next": rng.python_gauss_next,
            "strategy_state": {name: None if value is None else len(value)
                               for name, value in checkpoint.strategy_state.items()}}
    entries: dict[str, np.ndarray] = {
        "meta": np.array(json.dumps(meta)),
        "rng_torch_cpu": rng.torch_cpu, "rng_numpy_keys": rng.numpy_keys,
        "rng_python_words": rng.python_words,
    }
    entries.update({f"array_{i:04d}": np.asarray(a) for i, a in enumerate(checkpoint.arrays)})
    for name, value in checkpoint.strategy_state.items():
        entries.update({f"strategy_{name}_{i:04d}": np.asarray(a)
                        for i, a in enumerate(value or [])})
    path = run_dir / CHECKPOINT_FILE
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("wb") as f:
        np.savez(f, **entries)
        f.flush()
        os.fsync(f.fileno())
    tmp.replace(path)
    return path


#: Errors reading an archive that is damaged (truncated, not a zip, a bad deflate stream).
_READ_ERRORS = (OSError, EOFError, ValueError, KeyError, TypeError, zipfile.BadZipFile,
                zlib.error, MemoryError)


def load_checkpoint(run_dir: str | Path) -> Checkpoint:
    """Read ``<run_dir>/checkpoint.npz`` and check everything it holds.

    Checked here, on the file alone: it is an ``.npz`` archive of a readable format whose
    ``meta`` record has every field with its type; rounds ``1 <= server_round <= num_rounds``;
    every array it announces is there, numeric and finite; the random states are ones each
    generator accepts (tried on fresh generators, the process's own are not touched). What the
    experiment must match (rounds, the model's arrays, the strategy's state) is checked by
    :func:`prepare_resume` and :meth:`fl_shadow.apps.federation.Federation.check_checkpoint`.

    Raises:
        ResumeError: no checkpoint, or one that is damaged or this version cannot read, in one
            line naming the file.
    """
    run_dir = Path(run_dir)
    path = run_dir / CHECKPOINT_FILE
    if not path.is_file():
        raise ResumeError(f"{run_dir}: no {CHECKPOINT_FILE}: the run did not complete a round "
                          "(or predates checkpoints); start it again with fl-shadow run")
    try:
        loaded = np.load(path, allow_pickle=False)
        if not isinstance(loaded, np.lib.npyio.NpzFile):
            raise ResumeError(f"{path}: not a checkpoint (a single array, not an .npz archive)")
        with loaded as data:
            checkpoint = _read_checkpoint(data, path)
    except ResumeError:
        raise
    except _READ_ERRORS as exc:
        raise ResumeError(f"{path}: unreadable checkpoint ({type(exc).__name__}: "
                          f"{_first_line(exc)})") from None
    return checkpoint


def _read_checkpoint(data: np.lib.npyio.NpzFile, path: Path) -> Checkpoint:
    def bad(what: str) -> ResumeError:
        return ResumeError(f"{path}: damaged checkpoint: {what}")

    def entry(name: str) -> np.ndarray:
        if name not in data.files:
            raise bad(f"no {name!r} entry")
        return data[name]

    try:
        meta = json.loads(str(entry("meta")))
    except json.JSONDecodeError:
        raise bad("its meta record is not JSON") from None
    if not isinstance(meta, dict):
        raise bad("its meta record is not a mapping")
    if meta.get("format") not in READABLE_FORMATS:
        raise ResumeError(f"{path}: checkpoint format {meta.get('format')!r}, this version "
                          f"reads {', '.join(map(str, READABLE_FORMATS))}")

    def integer(name: str, low: int, high: int) -> int:
        value = meta.get(name)
        if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
            raise bad(f"{name} must be an integer in {low}..{high}, got {value!r}")
        return value

    def number(name: str, *, optional: bool = False) -> float | None:
        value = meta.get(name)
        if value is None and optional:
            return None
        if not isinstance(value, (int, float)) or isinstance(value, bool) \
                or not math.isfinite(value):
            raise bad(f"{name} must be a finite number, got {value!r}")
        return float(value)

    num_rounds = integer("num_rounds", 1, MAX_ROUNDS)
    server_round = integer("server_round", 1, num_rounds)
    digest = meta.get("config_sha256")
    if not isinstance(digest, str):
        raise bad(f"config_sha256 must be text, got {digest!r}")
    arrays = [_numeric_array(entry(f"array_{i:04d}"), f"array {i}", bad)
              for i in range(integer("num_arrays", 1, len(data.files)))]
    raw_state = meta.get("strategy_state", {})
    if not isinstance(raw_state, dict):
        raise bad(f"strategy_state must be a mapping, got {raw_state!r}")
    strategy_state: dict[str, list[np.ndarray] | None] = {}
    for name, count in raw_state.items():
        if count is not None and (not isinstance(count, int) or isinstance(count, bool)
                                  or not 0 <= count <= len(data.files)):
            raise bad(f"strategy_state.{name} must be an array count or null, got {count!r}")
        strategy_state[str(name)] = None if count is None else [
            _numeric_array(entry(f"strategy_{name}_{i:04d}"), f"strategy state {name}[{i}]",
                           bad) for i in range(count)]
    rng = RngState(torch_cpu=entry("rng_torch_cpu"), numpy_keys=entry("rng_numpy_keys"),
                   numpy_pos=integer("numpy_pos", 0, 624),
                   numpy_has_gauss=integer("numpy_has_gauss", 0, 1),
                   numpy_cached_gaussian=float(number("numpy_cached_gaussian") or 0.0),
                   python_words=entry("rng_python_words"),
                   python_gauss_next=number("python_gauss_next", optional=True))
    problem = rng_state_problem(rng)
    if problem is not None:
        raise bad(problem)
    return Checkpoint(server_round=server_round, num_rounds=num_rounds, config_sha256=digest,
                      arrays=arrays, rng=rng, strategy_state=strategy_state)


def _numeric_array(array: np.ndarray, what: str, bad: Callable[[str], ResumeError]
                   ) -> np.ndarray:
    if array.dtype.kind not in "biuf":
        raise bad(f"{what} has dtype {array.dtype}, not a number type")
    if array.dtype.kind == "f" and not np.isfinite(array).all():
        raise bad(f"{what} holds {int(array.size - np.isfinite(array).sum())} non-finite "
                  "values")
    return array


def rng_state_problem(state: RngState) -> str | None:
    """What is wrong with ``state`` (None: each generator accepts it), tried on fresh
    generators so that the process's own stay as they are."""
    torch_cpu, words = np.asarray(state.torch_cpu), np.asarray(state.python_words)
    if torch_cpu.dtype != np.uint8 or torch_cpu.ndim != 1:
        return f"the torch random state must be uint8 bytes, got {torch_cpu.dtype} " \
               f"{torch_cpu.shape}"
    if words.dtype.kind not in "iu" or words.shape != (625,) or words.min() < 0 \
            or words.max() >= 2**32:
        return f"the Python random state must be 625 words, got {words.dtype} {words.shape}"
    keys = np.asarray(state.numpy_keys)
    if keys.dtype.kind not in "iu" or keys.shape != (624,):
        return f"the NumPy random state must be 624 keys, got {keys.dtype} {keys.shape}"
    try:
        torch.Generator().set_state(torch.from_numpy(torch_cpu.copy()))
        np.random.RandomState().set_state(("MT19937", keys.astype(np.uint32), state.numpy_pos,
                                           state.numpy_has_gauss, state.numpy_cached_gaussian))
        random.Random().setstate((3, tuple(int(w) for w in words), state.python_gauss_next))
    except (RuntimeError, ValueError, TypeError, IndexError) as exc:
        return f"a random state is not valid ({type(exc).__name__}: {_first_line(exc)})"
    return None


def _first_line(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return lines[0][:300] if lines else ""


def read_status(run_dir: str | Path) -> dict[str, object]:
    """``status.json`` of a results folder (``{"state": "missing"}`` when absent)."""
    path = Path(run_dir) / "status.json"
    if not path.is_file():
        return {"state": "missing"}
    try:
        return dict(json.loads(path.read_text()))
    except (OSError, ValueError):
        return {"state": "unreadable"}


def prepare_resume(run_dir: str | Path) -> tuple[ExperimentConfig, Checkpoint]:
    """Check that a results folder can be resumed; returns its config and last checkpoint.

    Reads nothing but the folder: its ``config.yaml`` (the resolved config the run started with)
    is the experiment, whatever the command line says. Changes nothing on disk: every check
    here, and the model's in :meth:`fl_shadow.apps.federation.Federation.check_checkpoint`,
    runs before a resumed run drops the unfinished round's rows.

    Raises:
        ResumeError: no such folder, the run completed, no checkpoint or a damaged one
            (:func:`load_checkpoint`), the config changed since the checkpoint was written, or
            the checkpoint's rounds do not fit the config.
        ConfigError: ``config.yaml`` is not a valid config.
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise ResumeError(f"{run_dir}: no such results folder")
    config_file = run_dir / "config.yaml"
    if not config_file.is_file():
        raise ResumeError(f"{run_dir}: no config.yaml; not a results folder of fl-shadow run")
    config = load_config(config_file)
    status = read_status(run_dir)
    if status.get("state") == "completed":
        raise ResumeError(f"{run_dir}: the run already completed all {config.train.rounds} "
                          "rounds; nothing to resume")
    checkpoint = load_checkpoint(run_dir)
    # The file's own text, or its re-serialization: a newer fl_shadow that adds config keys
    # (defaults) between the crash and the resume must not block it; an edited file does.
    if checkpoint.config_sha256 not in (config_digest(config_file.read_text()),
                                        config_digest(config.to_yaml())):
        raise ResumeError(f"{run_dir}: config.yaml differs from the config the checkpoint was "
                          "written with; a changed experiment cannot continue this run")
    if checkpoint.num_rounds != config.train.rounds:
        raise ResumeError(f"{run_dir}: the checkpoint was written for a run of "
                          f"{checkpoint.num_rounds} rounds, config.yaml has train.rounds="
                          f"{config.train.rounds}")
    if checkpoint.server_round >= config.train.rounds:
        raise ResumeError(f"{run_dir}: the checkpoint already closes the last round "
                          f"({checkpoint.server_round}/{config.train.rounds}); nothing to resume")
    return config, checkpoint


def keeps_client_state(defense_name: str) -> bool:
    """Whether the defense keeps state on the clients between rounds (Flower's node state),
    which a resumed simulation starts empty (its spec says so)."""
    return DEFENSES.get(defense_name).keeps_client_state
