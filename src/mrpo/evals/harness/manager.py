"""lm-eval itself: importing it (an optional extra) and its task index, built once per process.

lm-eval is imported only here and in the modules that run it, and only when a task that mrpo
does not implement is asked for; without it, such a task fails with
:class:`HarnessUnavailable`, which says how to install it.

Building lm-eval's ``TaskManager`` indexes every task YAML it ships (thousands; about 15 s on a
small CPU), so one manager is kept per setting (include paths, data folder): the config
checks, the data loading and every later evaluation of the process share it.
"""

from __future__ import annotations

import atexit
import functools
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from mrpo.data.sources import data_root
from mrpo.errors import OptionError
from mrpo.evals.harness.local_data import write_local_tasks
from mrpo.evals.harness.options import HarnessOptions

INSTALL_HINT = "pip install 'mrpo[lm-eval]'"


class HarnessUnavailable(OptionError):
    """lm-eval is not installed, but a task only lm-eval can run was asked for."""


def import_lm_eval(names: list[str]) -> Any:
    """The ``lm_eval`` module.

    Raises:
        HarnessUnavailable: (option ``tasks``) when it is not installed, naming ``names``.
    """
    try:
        import lm_eval
        import lm_eval.tasks
    except ImportError:
        raise HarnessUnavailable(
            "tasks",
            f"{', '.join(map(repr, names))}: not a built-in task, and lm-evaluation-harness, "
            f"which runs every other task, is not installed; install it with {INSTALL_HINT}",
        ) from None
    return lm_eval


def lm_eval_tasks_dir() -> Path:
    """lm-eval's own task folder (``lm_eval/tasks``)."""
    import lm_eval.tasks

    return Path(lm_eval.tasks.__file__).resolve().parent


def task_manager(options: HarnessOptions, data_dir: str | os.PathLike[str] | None = None) -> Any:
    """lm-eval's ``TaskManager`` for ``options`` and the data folder (shared per process).

    Its include paths are, in increasing precedence: lm-eval's own tasks (unless
    ``include_defaults`` is off), the local-data overrides for the mirror's files
    (:mod:`mrpo.evals.harness.local_data`, unless ``local_data`` is off), and the user's
    ``include_path`` folders.
    """
    root = data_root(data_dir) if options.local_data else None
    return _task_manager(
        tuple(str(Path(p).expanduser().resolve()) for p in options.include_path),
        options.include_defaults,
        None if root is None else str(root.resolve()),
    )


@functools.lru_cache(maxsize=4)
def _task_manager(include_path: tuple[str, ...], include_defaults: bool, root: str | None) -> Any:
    from lm_eval.tasks import TaskManager

    paths = list(include_path)
    if root is not None:
        # Kept for the life of the process: the manager reads the task files when it builds
        # the tasks, which may be long after it was made. Removed when the process ends.
        folder = Path(tempfile.mkdtemp(prefix="mrpo-lm-eval-tasks-"))
        atexit.register(shutil.rmtree, folder, ignore_errors=True)
        if write_local_tasks(folder, root, lm_eval_tasks_dir()):
            paths.insert(0, str(folder))
    return TaskManager(include_path=paths or None, include_defaults=include_defaults)
