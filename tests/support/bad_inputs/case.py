"""One bad input to ``mrpo-train`` (:class:`BadInput`) and how it is run."""

from __future__ import annotations

import subprocess
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from mrpo.testing.runs import run_train_cli, tiny_run_args

MODEL_LOADED = ("loading model", "converting the GGUF model")
"""Log lines that only a model load writes: none may appear before a bad input's message."""


@dataclass(frozen=True)
class BadInput:
    """One bad input: ``mrpo-train`` arguments (``{name}`` placeholders for the fixtures'
    paths) and a regular expression the error message must match."""

    name: str
    args: tuple[str, ...]
    message: str
    env: Mapping[str, str] = field(default_factory=dict)


def base_args(files: Mapping[str, Path], cache: Path | None = None) -> list[str]:
    """A tiny run that would train: the cases replace or add one thing."""
    return tiny_run_args(files["model"], files["good"], cache or files["cache"])


def case_args(case: BadInput, files: Mapping[str, Path], cache: Path | None = None) -> list[str]:
    """The case's full argument list, placeholders filled in; a key the case sets replaces
    the base run's."""
    names = {k: str(v) for k, v in files.items()}
    own = [a.format(**names) for a in case.args]
    keys = {a.split("=", 1)[0].lstrip("+") for a in own}
    kept = [a for a in base_args(files, cache) if a.split("=", 1)[0] not in keys]
    return [*kept, *own]


def run_case(
    case: BadInput,
    files: Mapping[str, Path],
    run_dir: Path,
    *,
    cache: Path | None = None,
    env: Mapping[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run ``mrpo-train`` with the case's arguments in ``run_dir`` (unless the case names its
    own ``hydra.run.dir``) and reference cache ``cache`` (default: the fixtures')."""
    args = case_args(case, files, cache)
    if any(a.startswith("hydra.run.dir=") for a in args):
        run_dir = Path(next(a for a in args if a.startswith("hydra.run.dir=")).split("=", 1)[1])
        args = [a for a in args if not a.startswith("hydra.run.dir=")]
    full_env = {**dict(env or {}), **case.env}
    return run_train_cli(args, run_dir, env=full_env, timeout=600)


def environment(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment of the case runs: offline, one thread, no data mirror."""
    env = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "MRPO_DATA_DIR": ""}
    return {**env, **dict(extra or {})}
