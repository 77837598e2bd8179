"""Route this project's log lines through Flower's logger, so `flwr run --stream` shows them.

Flower configures its own ``flwr`` logger (console, and the log stream the SuperLink sends to
``flwr run``); loggers of other packages are not attached to anything and their INFO lines
would vanish. Progress (rounds, attack iterations, scores) must be visible, so the apps attach
the project's package loggers to Flower's handlers at start-up.
"""

from __future__ import annotations

import logging

PACKAGES = ("fl_shadow", "attacks", "strategies", "clients")


def route_to_flower(level: int = logging.INFO) -> None:
    """Attach the project's loggers to the ``flwr`` logger's handlers (idempotent)."""
    handlers = logging.getLogger("flwr").handlers
    for name in PACKAGES:
        logger = logging.getLogger(name)
        logger.setLevel(level)
        for handler in handlers:
            if handler not in logger.handlers:
                logger.addHandler(handler)
        logger.propagate = not handlers
