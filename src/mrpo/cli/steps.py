"""Steps of a training run, each from the typed config to plain objects.

:mod:`mrpo.cli.train` calls these in order. They take the typed
:class:`~mrpo.config.TrainConfig` dataclasses (never OmegaConf objects) and hand plain
arguments to the library modules; the cheap objects every check also builds (the objective, the
reference specs) come from the groups' builders (:mod:`mrpo.groups`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

import mrpo.data.pipeline
import mrpo.models.policy
from mrpo.config.schema import TrainConfig
from mrpo.data.pipeline import PreparedData, tokenized_cache_dir
from mrpo.errors import option_prefix
from mrpo.groups.references import build_ensemble, num_references
from mrpo.models import load_tokenizer
from mrpo.models.policy import model_cache_dir
from mrpo.training.trainer import policy_device


def prepare_data(cfg: TrainConfig) -> PreparedData:
    """The run's data (:func:`mrpo.data.pipeline.prepare_data`), tokenized by the policy's
    tokenizer; a split the data cannot give is a config error naming its ``data`` key."""
    m, cache = cfg.model, model_cache_dir(cfg.paths.cache_dir)
    tokenizer = load_tokenizer(
        m.tokenizer or m.source, chat_template=m.chat_template, cache_dir=cache
    )
    with option_prefix("data"):
        return mrpo.data.pipeline.prepare_data(
            cfg.data,
            tokenizer,
            data_dir=cfg.paths.data_dir,
            cache_dir=tokenized_cache_dir(cfg.paths.cache_dir),
            references=lambda: build_ensemble(cfg),
        )


def load_policy(cfg: TrainConfig) -> tuple[torch.nn.Module, Any]:
    """The trainable policy and its tokenizer (:func:`mrpo.models.policy.load_policy`)."""
    cache, device = model_cache_dir(cfg.paths.cache_dir), policy_device(cfg.trainer)
    return mrpo.models.policy.load_policy(cfg.model, cache_dir=cache, device=device)


def logger_labels(cfg: TrainConfig) -> dict[str, Any]:
    """The W&B run's name, group and tags: the multirun's group, and tags for the swept values.

    Returns keyword arguments of :func:`mrpo.tracking.wandb.make_loggers`.
    """
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    group, name = None, None
    if HydraConfig.initialized():
        hc = HydraConfig.get()
        if hc.mode == RunMode.MULTIRUN:
            group = Path(hc.sweep.dir).name
            name = hc.job.override_dirname or f"job{hc.job.num}"
    tags = [
        f"loss:{cfg.loss.name}",
        f"num_refs:{num_references(cfg)}",
        f"weights:{cfg.weights.strategy}",
        f"seed:{cfg.seed}",
    ]
    return {"name": name, "group": group, "tags": tags}
