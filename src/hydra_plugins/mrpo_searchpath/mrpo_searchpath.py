"""Makes the repository's ``sweeps/`` folder a Hydra config group.

Sweep files live at the top of the repository (one file per question) rather than inside
``conf/``. This plugin appends the folder that holds ``sweeps/`` to Hydra's config search
path, so ``mrpo-train -m +sweeps=num_refs`` composes ``sweeps/num_refs.yaml``. The
environment variable ``MRPO_SWEEPS_ROOT`` names another folder holding a ``sweeps/``.
"""

from __future__ import annotations

import os
from pathlib import Path

from hydra.core.config_search_path import ConfigSearchPath
from hydra.plugins.search_path_plugin import SearchPathPlugin


def sweeps_root() -> Path:
    """The folder whose ``sweeps/`` subfolder is the ``sweeps`` config group."""
    env = os.environ.get("MRPO_SWEEPS_ROOT")
    return Path(env) if env else Path(__file__).resolve().parents[3]


class MrpoSweepsSearchPathPlugin(SearchPathPlugin):
    """Appends :func:`sweeps_root` to every Hydra search path (after ``conf/``)."""

    def manipulate_search_path(self, search_path: ConfigSearchPath) -> None:
        search_path.append(provider="mrpo-sweeps", path=f"file://{sweeps_root()}")
