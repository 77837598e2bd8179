"""Exceptions that carry a one-line message meant for the user."""


class ConfigError(ValueError):
    """A config key, value or referenced file is wrong.

    The message names the key (``train.lr``) or the file and says what was expected; entry points
    print it as one line and exit with status 2, without a traceback.
    """


class DataError(ConfigError):
    """A data file is missing, unreadable or malformed; the message names the file."""


class ThreatModelError(RuntimeError):
    """An attack asked for something its configured threat model withholds."""


class ProtocolError(RuntimeError):
    """A Flower peer sent what this project's protocol does not allow (no experiment config,
    no weights, a Message-API message to a NumPyClient app); the message says what is needed,
    in one line."""


class RunFailed(RuntimeError):
    """The run cannot go on (e.g. a round got fewer successful replies than
    ``strategy.min_fit_clients``); the message is the run's one-line cause in ``status.json``."""


class ResumeError(RuntimeError):
    """A results folder cannot be resumed (no checkpoint, already completed, config changed).

    The message names the folder and says why, in one line; ``fl-shadow resume`` prints it and
    exits with status 2 before anything starts.
    """
