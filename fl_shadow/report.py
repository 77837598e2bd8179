"""The results folder of one run, written as the run goes.

Layout (every file is appended or rewritten as soon as its data exists, so a crashed run keeps
everything up to its last completed step)::

    <run_dir>/
      config.yaml        the resolved experiment config
      status.json        {"state": running|completed|failed, "rounds_completed": n, ...}
      utility.jsonl      one row per evaluated round: loss, accuracy, macro_f1
      fit.jsonl          one row per client update: examples, steps, train loss, seconds
      privacy.jsonl      one row per attacked update: psnr, ssim, lpips, label accuracy, time
      failures.jsonl     clients that failed in a round
      grids/round003_client01.png   originals (top) vs matched reconstructions (bottom)
      plots/utility.png, plots/privacy.png
      summary.md         the tables printed at the end
      checkpoint.npz     the global model after the last completed round (fl_shadow/checkpoint)

A resumed run (:class:`RunRecorder` with ``resume_after=k``) first drops every row of a round
after ``k`` from each ``*.jsonl`` (the unfinished round's partial rows, written before the kill)
and those rounds' grids, then appends to the same files, so nothing is duplicated.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from fl_shadow.scoring import Scores
    from fl_shadow.threat_model import AttackOutcome

log = logging.getLogger(__name__)

def new_run_dir(output_dir: str | Path, name: str) -> Path:
    """``<output_dir>/<name>-<YYYYmmdd-HHMMSS>``, never an existing folder."""
    base = Path(output_dir) / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}"
    path, n = base, 1
    while path.exists():
        n += 1
        path = base.with_name(f"{base.name}-{n}")
    return path


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
    """

    def __init__(self, run_dir: str | Path, config_yaml: str, num_rounds: int, *,
                 resume_after: int | None = None) -> None:
        self.run_dir = Path(run_dir)
        self.num_rounds = num_rounds
        self.started = time.time()
        self.utility: list[dict[str, Any]] = []
        self.privacy: list[dict[str, Any]] = []
        self.fits: list[dict[str, Any]] = []
        self.resumed_after: list[int] = []
        # The server's attacks and evaluation depend on it in the last digits (float order).
        self.server_threads = torch.get_num_threads()
        if resume_after is None:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            (self.run_dir / "config.yaml").write_text(config_yaml)
        else:
            self._reopen(resume_after)
        self._status("running", rounds_completed=resume_after or 0)
        log.info("results folder: %s", self.run_dir.resolve())

    def _reopen(self, last_round: int) -> None:
        status_file = self.run_dir / "status.json"
        previous = json.loads(status_file.read_text()) if status_file.exists() else {}
        self.started -= float(previous.get("seconds", 0.0))
        self.resumed_after = [*previous.get("resumed_after", []), last_round]
        drop_rows_after(self.run_dir, last_round)
        self.utility = read_jsonl(self.run_dir / "utility.jsonl")
        self.privacy = read_jsonl(self.run_dir / "privacy.jsonl")
        self.fits = read_jsonl(self.run_dir / "fit.jsonl")
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
        self._status("failed", rounds_completed=self._rounds_done(), error=str(error)[:500])

    def finish(self) -> str:
        """Write plots and ``summary.md``; log the summary; mark the run completed."""
        text = summary_markdown(self.utility, self.privacy, self.fits)
        (self.run_dir / "summary.md").write_text(text)
        try:
            save_plots(self.run_dir / "plots", self.utility, self.privacy)
        except Exception as exc:  # plots are a convenience; never lose a finished run to them
            log.warning("could not draw plots: %s", exc)
        self._status("completed", rounds_completed=self.num_rounds)
        log.info("summary of %s\n%s", self.run_dir, text)
        return text

    # -- internals --------------------------------------------------------------------------
    def _rounds_done(self) -> int:
        return max((r["round"] for r in self.utility), default=0)

    def _append(self, name: str, row: Mapping[str, Any]) -> None:
        with (self.run_dir / name).open("a") as f:
            f.write(json.dumps(row, default=float) + "\n")

    def _status(self, state: str, **extra: Any) -> None:
        status = {"state": state, "num_rounds": self.num_rounds,
                  "seconds": round(time.time() - self.started, 2),
                  "server_torch_threads": self.server_threads, **extra}
        if self.resumed_after:
            status["resumed_after"] = self.resumed_after
        tmp = self.run_dir / "status.json.tmp"
        tmp.write_text(json.dumps(status))
        tmp.replace(self.run_dir / "status.json")


def failure_reason(failure: object) -> str:
    """One line for a client failure as Flower hands it to a strategy: an exception, or a
    ``(proxy, result)`` pair whose status is not OK."""
    if isinstance(failure, BaseException):
        text = f"{type(failure).__name__}: {failure}"
    elif isinstance(failure, tuple) and len(failure) == 2 and hasattr(failure[1], "status"):
        status = failure[1].status
        text = f"{getattr(status.code, 'name', status.code)}: {status.message}"
    else:
        text = repr(failure)
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return " ".join(lines)[:1000]


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    path = Path(path)
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def drop_rows_after(run_dir: str | Path, last_round: int) -> int:
    """Drop the rows of rounds after ``last_round`` from every ``*.jsonl`` of a results folder,
    and those rounds' grids; returns how many rows were dropped.

    Rows of a round the run did not finish were appended before it died; the resumed run writes
    that round again. A line cut short by the kill is dropped too. Rows without a ``round`` are
    kept. Each file is rewritten atomically (temporary file, then rename).
    """
    run_dir = Path(run_dir)
    dropped = 0
    for path in sorted(run_dir.glob("*.jsonl")):
        kept: list[str] = []
        lines = [line for line in path.read_text().splitlines() if line.strip()]
        for line in lines:
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                log.warning("%s: dropping a truncated line", path.name)
                continue
            if isinstance(row, dict) and int(row.get("round", 0)) > last_round:
                continue
            kept.append(line)
        if len(kept) == len(lines):
            continue
        dropped += len(lines) - len(kept)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text("".join(line + "\n" for line in kept))
        tmp.replace(path)
    for grid in (run_dir / "grids").glob("round*_client*.png"):
        digits = grid.name[len("round"):].split("_", 1)[0]
        if digits.isdigit() and int(digits) > last_round:
            grid.unlink()
    if dropped:
        log.info("%s: dropped %d row(s) of rounds after %d", run_dir, dropped, last_round)
    return dropped


def summary_markdown(utility: list[dict[str, Any]], privacy: list[dict[str, Any]],
                     fits: list[dict[str, Any]]) -> str:
    """Markdown tables: utility per round, privacy per attacked update, client time per round."""
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
    if privacy:
        lines += ["| round | client | images | PSNR (dB) | SSIM | LPIPS | label acc. | "
                  "FG PSNR | FG SSIM | FG LPIPS | attack s |",
                  "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for r in privacy:
            if "skipped" in r:
                lines.append(f"| {r['round']} | {r['client']} | | not attacked: {r['skipped']} "
                             "| | | | | | | |")
                continue
            lines.append(
                f"| {r['round']} | {r['client']} | {r['num_images']} | "
                f"{r.get('psnr', math.nan):.2f} | {r.get('ssim', math.nan):.4f} | "
                f"{r.get('lpips', math.nan):.4f} | {r.get('label_accuracy', math.nan):.2f} | "
                f"{r.get('fg_psnr', math.nan):.2f} | {r.get('fg_ssim', math.nan):.4f} | "
                f"{r.get('fg_lpips', math.nan):.4f} | {r['attack_seconds']:.1f} |")
        lines += ["", "FG: inside each image's Grad-CAM++ foreground (top 30% of the global "
                  "model's map for its label)."]
    else:
        lines.append("(no update was attacked)")
    if fits:
        lines += ["", "## Client time (seconds per round, mean over clients)", "",
                  "| round | mean fit s | max fit s |", "|---:|---:|---:|"]
        by_round: dict[int, list[float]] = {}
        for r in fits:
            by_round.setdefault(r["round"], []).append(float(r.get("fit_seconds", math.nan)))
        for rnd, secs in sorted(by_round.items()):
            lines.append(f"| {rnd} | {sum(secs) / len(secs):.3f} | {max(secs):.3f} |")
    return "\n".join(lines) + "\n"


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
