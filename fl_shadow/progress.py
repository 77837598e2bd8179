"""Progress for long loops: a live bar on a terminal, a log line per tenth elsewhere.

Flower streams the logs of the ServerApp and of the ClientApps; a tqdm bar there turns every
refresh into a line of text, so off a terminal the loop reports through ``logging`` instead.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterator

from tqdm.auto import tqdm

__all__ = ["Progress"]


class Progress:
    """Iterate ``range(total)`` with progress.

    Example:
        >>> progress = Progress(100, "gan pretraining", logging.getLogger("x"), enabled=False)
        >>> for it in progress:
        ...     progress.report(loss=0.1)  # shown on the bar, or in the next log line

    Args:
        total: number of iterations.
        desc: what is running (prefix of the bar and of the log lines).
        logger: where the log lines go when stderr is not a terminal.
        enabled: False for silence.
    """

    def __init__(self, total: int, desc: str, logger: logging.Logger, *,
                 enabled: bool = True) -> None:
        self.total, self.desc, self.logger = total, desc, logger
        self.live = enabled and sys.stderr.isatty()
        self.log_every = max(1, total // 10) if enabled and not self.live else 0
        self._bar = tqdm(range(total), desc=desc, disable=not self.live, leave=False)
        self._it = 0
        self._values: dict[str, object] = {}

    def __iter__(self) -> Iterator[int]:
        try:
            for it in self._bar:
                self._it = it
                yield it
                if self.log_every and ((it + 1) % self.log_every == 0 or it + 1 == self.total):
                    values = ", ".join(f"{k} {float(v):.4g}"  # type: ignore[arg-type]
                                       for k, v in self._values.items())
                    self.logger.info("%s: iteration %d/%d%s", self.desc, it + 1, self.total,
                                     f", {values}" if values else "")
        finally:
            self._bar.close()

    def report(self, **values: object) -> None:
        """Numbers (or 0-d tensors) to show for the current iteration; read only when shown,
        so passing a CUDA tensor does not synchronise every iteration."""
        self._values = values
        if self.live:
            self._bar.set_postfix({k: f"{float(v):.4g}"  # type: ignore[arg-type]
                                   for k, v in values.items()}, refresh=False)
