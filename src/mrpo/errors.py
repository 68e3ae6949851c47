"""Errors that are the user's to fix, not bugs of the program, and the option error that
library code raises so that the caller can name the config key behind the option.

Config values, data files, model sources and checkpoints raise subclasses of
:class:`InputError`; the command-line entry points print its message (which names the config
key, file, row or source) without a traceback and exit with status 2.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager


class InputError(ValueError):
    """Unusable input: the message says what, where, and how to fix it."""

    kind = "input error"
    """How the entry points label the message (``config error``, ``data error``, ...)."""


class ConfigError(InputError):
    """A config value that cannot work; the message starts with its dotted key.

    Attributes:
        key: the dotted config key (``loss.beta``, ``references.pool.1.dtype``).
        detail: what is wrong with it, without the key.
    """

    kind = "config error"

    def __init__(self, key: str, detail: str) -> None:
        super().__init__(f"{key}: {detail}")
        self.key = key
        self.detail = detail


class OptionError(ValueError):
    """A library option with an unusable value; ``option`` names it.

    Library functions take plain keyword options (``beta``, ``fixed_weights``, ``r``); the
    code that builds those options from a config knows which config key each came from and
    turns this error into a :class:`ConfigError` for that key (no message parsing).

    Attributes:
        option: the option's name as the library function takes it.
    """

    def __init__(self, option: str, message: str) -> None:
        super().__init__(message)
        self.option = option


def reject_unknown_options(given: Iterable[str], accepted: Iterable[str], owner: str) -> None:
    """Raise :class:`OptionError` naming the first of ``given`` that ``owner`` does not take.

    ``owner`` says what takes the options, as messages name it (``weighting 'arwc'``).
    """
    allowed = list(accepted)
    unknown = sorted(set(given) - set(allowed))
    if unknown:
        raise OptionError(
            unknown[0],
            f"option(s) {unknown} do not apply to {owner} (it takes: {allowed or 'no options'})",
        )


@contextmanager
def option_keys(keys: Mapping[str, str], default: str) -> Iterator[None]:
    """Turn an :class:`OptionError` into a :class:`ConfigError` for the option's config key
    (``keys[option]``, else ``default``)."""
    try:
        yield
    except OptionError as err:
        raise ConfigError(keys.get(err.option, default), str(err)) from None


@contextmanager
def option_prefix(prefix: str = "") -> Iterator[None]:
    """Turn an :class:`OptionError` into a :class:`ConfigError` for ``<prefix>.<option>``
    (for groups whose config keys are the library's option names; an empty option names the
    group itself, an empty prefix a top-level key)."""
    try:
        yield
    except OptionError as err:
        raise ConfigError(".".join(filter(None, (prefix, err.option))), str(err)) from None


@contextmanager
def renamed(option: str) -> Iterator[None]:
    """Name ``option`` in the :class:`OptionError` of a helper whose own option names differ
    (its message kept)."""
    try:
        yield
    except OptionError as err:
        raise OptionError(option, str(err)) from None
