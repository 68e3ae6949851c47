"""Compose the packaged configs the way the entry points do, for tests and smoke checks."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

from mrpo.config import CONFIG_DIR, TrainConfig, register_configs, to_dataclass
from mrpo.groups.checks import check_train_config


def compose_config(
    overrides: Sequence[str],
    *,
    config_name: str = "train",
    conf_dir: Path = CONFIG_DIR,
    return_hydra_config: bool = False,
) -> DictConfig:
    """Compose ``config_name`` from ``conf_dir`` with command-line style overrides."""
    register_configs()  # idempotent: the schemas the primary configs name first
    with initialize_config_dir(config_dir=str(conf_dir), version_base="1.3"):
        return compose(
            config_name, overrides=list(overrides), return_hydra_config=return_hydra_config
        )


def checked_train_config(overrides: Sequence[str], output_dir: Path) -> TrainConfig:
    """Compose the train config, convert it to the schema and run the config checks."""
    cfg = compose_config([f"paths.output_dir={output_dir}", *overrides])
    run_cfg = to_dataclass(cfg, TrainConfig)
    check_train_config(run_cfg)
    return run_cfg
