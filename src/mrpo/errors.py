"""The base class of every error that is the user's to fix, not a bug of the program.

Config values, data files, model sources and checkpoints raise subclasses of
:class:`InputError`; the command-line entry points print its message (which names the config
key, file, row or source) without a traceback and exit with status 2.
"""

from __future__ import annotations


class InputError(ValueError):
    """Unusable input: the message says what, where, and how to fix it."""

    kind = "input error"
    """How the entry points label the message (``config error``, ``data error``, ...)."""


class ConfigError(InputError):
    """A config value that cannot work; the message starts with the config key."""

    kind = "config error"
