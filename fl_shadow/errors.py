"""Exceptions that carry a one-line message meant for the user.

The message stays one line whatever it quotes: a control character in it (a file name with a
newline, a NUL) is shown escaped (``\\n``, ``\\x00``).
"""

import re

_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def _escaped(text: str) -> str:
    return _CONTROL.sub(lambda m: repr(m.group())[1:-1], text)


class OneLineError(Exception):
    """An error whose ``str`` is one printable line (control characters escaped)."""

    def __str__(self) -> str:
        return _escaped(super().__str__())


class ConfigError(OneLineError, ValueError):
    """A config key, value or referenced file is wrong.

    The message names the key (``train.lr``) or the file and says what was expected; entry points
    print it as one line and exit with status 2, without a traceback.
    """


class DataError(ConfigError):
    """A data file is missing, unreadable or malformed; the message names the file."""


class ThreatModelError(OneLineError, RuntimeError):
    """An attack asked for something its configured threat model withholds."""


class ProtocolError(OneLineError, RuntimeError):
    """A Flower peer sent what this project's protocol does not allow (no experiment config,
    no weights, a Message-API message to a NumPyClient app); the message says what is needed,
    in one line."""


class RunFailed(OneLineError, RuntimeError):
    """The run cannot go on (e.g. a round got fewer successful replies than
    ``strategy.min_fit_clients``); the message is the run's one-line cause in ``status.json``."""


class ResumeError(OneLineError, RuntimeError):
    """A results folder cannot be resumed (no checkpoint, already completed, config changed).

    The message names the folder and says why, in one line; ``fl-shadow resume`` prints it and
    exits with status 2 before anything starts.
    """
