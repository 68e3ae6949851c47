"""Classes named by a ``_target_`` (``package.module.Name``), imported for an option."""

from __future__ import annotations

import importlib
from typing import Any

from mrpo.errors import OptionError

__all__ = ["import_target"]


def import_target(path: str, option: str) -> Any:
    """The object a ``_target_`` names, imported.

    Raises:
        OptionError: for ``option``, when the module or the name cannot be found.
    """
    module_name, _, name = str(path).rpartition(".")
    try:
        if not module_name:
            raise ImportError(f"{path!r} names no module")
        target = getattr(importlib.import_module(module_name), name)
    except (ImportError, AttributeError, ValueError) as err:
        raise OptionError(option, f"cannot import {path!r} ({type(err).__name__}: {err})") from None
    return target
