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


class ResumeError(RuntimeError):
    """A results folder cannot be resumed (no checkpoint, already completed, config changed).

    The message names the folder and says why, in one line; ``fl-shadow resume`` prints it and
    exits with status 2 before anything starts.
    """
