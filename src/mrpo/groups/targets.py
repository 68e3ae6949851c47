"""Classes named by a ``_target_`` (``package.module.Name``), imported for a config key."""

from __future__ import annotations

import importlib
from typing import Any

from mrpo.errors import ConfigError

__all__ = ["import_target"]


def import_target(path: str, key: str) -> Any:
    """The object a ``_target_`` names, imported.

    Raises:
        ConfigError: for ``key``, when the module or the name cannot be found.
    """
    module_name, _, name = str(path).rpartition(".")
    try:
        if not module_name:
            raise ImportError(f"{path!r} names no module")
        target = getattr(importlib.import_module(module_name), name)
    except (ImportError, AttributeError, ValueError) as err:
        raise ConfigError(key, f"cannot import {path!r} ({type(err).__name__}: {err})") from None
    return target
