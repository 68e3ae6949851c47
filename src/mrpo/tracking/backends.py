"""The optional loggers beside W&B and the CSV record: TensorBoard and MLflow.

``logger=tensorboard``, ``logger=mlflow`` and ``logger=many`` turn them on (as
lightning-hydra-template offers them). Each is one entry of :data:`OPTIONAL_LOGGERS`: the
``logger`` flag that turns it on, the module it needs, the pip extra that provides that
module, and how it is built. Lightning sends every logger the same ``log_metrics`` calls, so
the metric names are the same in each (``train/loss``, ``train/ref_weight/0``, ...).

A logger whose package is missing is refused before anything loads
(:func:`check_logger_packages`), naming the flag and the extra.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mrpo.atomic import write_text
from mrpo.errors import ConfigError

if TYPE_CHECKING:  # Lightning loads only when a logger is built (mrpo-compare stays light)
    from lightning.pytorch.loggers import Logger

    from mrpo.tracking.wandb import LoggerConfig

MLFLOW_ID_FILE = "mlflow_run_id.txt"
"""The MLflow run id of a run directory: a resumed run continues that MLflow run."""
MLFLOW_DB = "mlflow.db"
"""The MLflow store's database in ``logger.mlflow_dir`` (its artifacts go in ``artifacts/``)."""
TENSORBOARD_DIR = "tensorboard"
"""TensorBoard's event files: ``<run>/tensorboard/attempt_<n>/``, like the CSV record."""


@dataclass(frozen=True)
class LoggerRun:
    """What a logger is built for: the run directory and attempt, the resolved config (as
    dotted keys) and the run's labels."""

    output_dir: Path
    attempt: str
    settings: LoggerConfig
    params: Mapping[str, Any]
    name: str | None
    group: str | None
    tags: Sequence[str]


@dataclass(frozen=True)
class OptionalLogger:
    """One optional logger: ``logger.<flag>`` turns it on; it needs ``module`` from the pip
    extra ``mrpo[<extra>]``."""

    flag: str
    module: str
    extra: str
    build: Callable[[LoggerRun], Logger]

    def enabled(self, settings: LoggerConfig) -> bool:
        return bool(getattr(settings, self.flag))


def _tensorboard(run: LoggerRun) -> Logger:
    from lightning.pytorch.loggers import TensorBoardLogger

    # No ``hp_metric`` placeholder: every logger holds the same metric names.
    logger = TensorBoardLogger(
        save_dir=str(run.output_dir),
        name=TENSORBOARD_DIR,
        version=run.attempt,
        default_hp_metric=False,
    )
    logger.log_hyperparams(dict(run.params))
    return logger


def _mlflow(run: LoggerRun) -> Logger:
    from lightning.pytorch.loggers import MLFlowLogger

    id_file = run.output_dir / MLFLOW_ID_FILE
    run_id = id_file.read_text().strip() if id_file.exists() else None
    tags = {"group": run.group} if run.group else {}
    for tag in run.tags:  # "loss:mrpo" -> loss = mrpo, so the MLflow UI can filter on it
        key, _, value = tag.partition(":")
        tags[key] = value or "true"
    store = Path(run.settings.mlflow_dir).expanduser().resolve()
    store.mkdir(parents=True, exist_ok=True)
    logger = MLFlowLogger(
        experiment_name=run.settings.project,
        run_name=run.name or run.output_dir.name,
        tracking_uri=mlflow_uri(run.settings.mlflow_dir),
        tags=tags,
        run_id=run_id,
        artifact_location=(store / "artifacts").as_uri(),
    )
    if run_id is None:
        write_text(id_file, str(logger.run_id))  # creates the run now
        # MLflow refuses to change a parameter: a resumed run keeps those of its first start.
        logger.log_hyperparams(dict(run.params))
    return logger


def mlflow_uri(directory: str) -> str:
    """The tracking URI of the local MLflow store in ``directory``: one SQLite file,
    ``mlflow.db`` (MLflow 3 refuses its older folder-per-run file store by default). The path
    is absolute, so every job of a sweep writes to the same store whatever its working
    directory."""
    return f"sqlite:///{Path(directory).expanduser().resolve() / MLFLOW_DB}"


OPTIONAL_LOGGERS: dict[str, OptionalLogger] = {
    "tensorboard": OptionalLogger("tensorboard", "tensorboard", "tensorboard", _tensorboard),
    "mlflow": OptionalLogger("mlflow", "mlflow", "mlflow", _mlflow),
}


def module_available(module: str) -> bool:
    """Whether ``module`` can be imported (without importing it)."""
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a parent package missing, or a broken entry
        return False


def check_logger_packages(settings: LoggerConfig) -> None:
    """Raise :class:`ConfigError` for the first enabled logger whose package is missing,
    naming its ``logger.<flag>`` key and the extra that installs it."""
    for entry in OPTIONAL_LOGGERS.values():
        if entry.enabled(settings) and not module_available(entry.module):
            raise ConfigError(
                f"logger.{entry.flag}",
                f"needs the {entry.module!r} package, which is not installed: "
                f"pip install 'mrpo[{entry.extra}]' (or choose another logger=...)",
            )
    if settings.mlflow and Path(settings.mlflow_dir).is_file():
        raise ConfigError("logger.mlflow_dir", f"{settings.mlflow_dir} is a file, not a folder")


def optional_loggers(run: LoggerRun) -> list[Logger]:
    """The enabled optional loggers, built in :data:`OPTIONAL_LOGGERS` order."""
    return [e.build(run) for e in OPTIONAL_LOGGERS.values() if e.enabled(run.settings)]
