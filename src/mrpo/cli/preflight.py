"""The pre-flight of ``mrpo-train``: everything that can be checked before a model is loaded.

:func:`check_train_config` (pure value checks) runs first; then :func:`preflight_train` checks
what needs the machine and the files, cheapest first:

1. the run and cache folders can be written;
2. what Lightning, torch and transformers would refuse later, built early on dummies: the
   optimizer (on one dummy parameter), the scheduler, the Trainer's accelerator, devices,
   precision and its other arguments, the checkpoint options and the metric they monitor, the
   extra callbacks named by ``_target_``;
3. the evaluation data of every task in ``eval.tasks`` (found at the first evaluation
   otherwise, after training steps);
4. the checkpoint to resume from: ``last``/``best`` found, the file readable as a whole;
5. every model source: the weight files whole (headers against sizes), the tokenizer and its
   chat template rendering a conversation, the LoRA target modules present in the model (its
   architecture built on the meta device), the context length against ``data.max_length``,
   the model family's support of ``model.attn_implementation``.

After the data is loaded and tokenized (still no model), :func:`check_prepared_data` compares
the data with the run (a validation split of zero pairs, warm-up longer than the run) and a
resumed run with its checkpoint (:mod:`mrpo.tracking.rundir`). Every problem is an
:class:`~mrpo.errors.InputError` naming the key, file or row; a value that is legal but almost
surely a mistake is a warning in the log.
"""

from __future__ import annotations

import logging
import pickle
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from mrpo.config.schema import TrainConfig
from mrpo.errors import ConfigError, InputError, OptionError, option_prefix
from mrpo.evals.runner import EvalData, load_eval_data
from mrpo.groups.callbacks import check_callbacks
from mrpo.groups.objective import build_weighting
from mrpo.groups.optimizer import check_optimizer, check_scheduler
from mrpo.groups.references import num_references, reference_specs
from mrpo.groups.trainer import build_sharding
from mrpo.models.integrity import check_source
from mrpo.models.loading import model_config
from mrpo.models.policy import ModelConfig, check_architecture, model_cache_dir
from mrpo.models.sources import source_option
from mrpo.references.spec import POLICY_SOURCES, ReferenceSpec
from mrpo.tracking.rundir import identity_differences
from mrpo.training.checkpointing import (
    SHARDED_META,
    best_checkpoints,
    best_model_path,
    is_sharded_checkpoint,
    last_checkpoints,
)
from mrpo.training.metrics import logged_metric_names
from mrpo.training.module import RUN_IDENTITY_KEY

log = logging.getLogger("mrpo.train")


@dataclass
class Preflight:
    """What the pre-flight found and the later steps reuse.

    Attributes:
        ckpt_path: the checkpoint file to resume from (``last``/``best`` resolved), or None.
        checkpoint_identity: the run identity that checkpoint recorded (None without one).
        eval_data: each evaluation task's data, loaded once.
        warnings: what was legal but probably a mistake (already logged).
    """

    ckpt_path: str | None = None
    checkpoint_identity: dict[str, Any] | None = None
    eval_data: EvalData | None = None
    warnings: list[str] = field(default_factory=list)

    def warn(self, message: str) -> None:
        self.warnings.append(message)
        log.warning("%s", message)


def preflight_train(cfg: TrainConfig, output_dir: Path) -> Preflight:
    """Check the machine, the files and the objects the run will build; load no model.

    Raises:
        InputError: naming the key, file or row of the first problem found.
    """
    found = Preflight()
    check_writable(output_dir, "hydra.run.dir")
    check_writable(Path(cfg.paths.cache_dir), "paths.cache_dir")
    check_built_objects(cfg)
    if cfg.eval.tasks:
        found.eval_data = _load_eval_data(cfg)
    found.ckpt_path = resolve_ckpt_path(cfg.ckpt_path, output_dir)
    if found.ckpt_path is not None:
        found.checkpoint_identity = read_checkpoint_identity(found.ckpt_path)
        if found.checkpoint_identity is None:
            found.warn(
                f"{found.ckpt_path} records no run settings (saved by an older mrpo): resuming "
                "without checking that its settings and data match this run's"
            )
    check_model_sources(cfg, found)
    return found


def check_built_objects(cfg: TrainConfig) -> None:
    """What torch, transformers and Lightning would refuse later, built now on dummies: the
    optimizer, the scheduler, the Trainer, the callbacks (no file is read)."""
    check_optimizer(cfg.optimizer)
    check_scheduler(cfg.scheduler)
    check_trainer(cfg.trainer.kwargs(), strategy=_sharded_strategy_factory(cfg))
    logged = logged_metric_names(num_references(cfg))
    check_callbacks(cfg.callbacks, logged, cfg.eval.tasks)


def check_writable(folder: Path, key: str) -> None:
    """Create ``folder`` if needed and write a probe file into it."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".mrpo-write-probe-"):
            pass
    except OSError as err:
        raise ConfigError(key, f"{folder} is not writable ({err.strerror or err})") from None


def _sharded_strategy_factory(cfg: TrainConfig) -> Callable[[], Any] | None:
    """Builds the strategy object of a sharded strategy's mapping (``trainer=fsdp``,
    ``deepspeed``) as :func:`mrpo.cli.train.build_run` does; None for a strategy name."""
    sharding = build_sharding(cfg.trainer)
    if sharding is None:
        return None
    return lambda: sharding.strategy(cfg.trainer.kwargs())


def check_trainer(kwargs: Mapping[str, Any], strategy: Callable[[], Any] | None = None) -> None:
    """Build Trainers on this machine from the arguments, one concern at a time, so that a
    refusal names its key: accelerator and devices, then precision, then all arguments.

    ``strategy`` builds the strategy object that replaces ``kwargs["strategy"]`` (a fresh one
    for every Trainer: Lightning binds a strategy object to the Trainer that takes it)."""
    import lightning as L

    quiet = {
        "logger": False,
        "enable_checkpointing": False,
        "enable_progress_bar": False,
        "enable_model_summary": False,
    }
    hardware = {k: kwargs[k] for k in ("accelerator", "devices", "num_nodes") if k in kwargs}
    steps: list[tuple[str, dict[str, Any]]] = [
        ("trainer.accelerator", hardware),
        ("trainer.precision", {**hardware, **_subset(kwargs, "precision")}),
        ("trainer.strategy", {**hardware, **_subset(kwargs, "precision", "strategy")}),
        ("trainer", dict(kwargs)),
    ]
    for key, subset in steps:
        if key == "trainer.accelerator" and not subset:
            continue
        try:
            if strategy is not None and "strategy" in subset:
                subset = {**subset, "strategy": strategy()}
            with tempfile.TemporaryDirectory() as root:
                L.Trainer(**{**subset, **quiet, "default_root_dir": root})
        except Exception as err:  # Lightning's MisconfigurationException, ValueError, ...
            if key == "trainer.accelerator" and "devices" in hardware:
                key = "trainer.accelerator/devices"
            raise ConfigError(key, f"this machine cannot run it: {err}") from None


def _subset(mapping: Mapping[str, Any], *keys: str) -> dict[str, Any]:
    return {k: mapping[k] for k in keys if k in mapping}


def _load_eval_data(cfg: TrainConfig) -> EvalData:
    try:
        return load_eval_data(cfg.eval.tasks, data_dir=cfg.paths.data_dir, harness=cfg.eval.harness)
    except InputError:
        raise
    except OptionError as err:  # an lm-eval task that cannot load (named in the message)
        raise ConfigError(f"eval.{err.option}", str(err)) from None
    except Exception as err:  # a missing or malformed file, or the hub out of reach
        raise ConfigError(
            "eval.tasks",
            f"the evaluation data of {list(cfg.eval.tasks)} cannot be loaded: {err} "
            "(set paths.data_dir or MRPO_DATA_DIR to a mirror holding it, or drop the task)",
        ) from None


def resolve_ckpt_path(ckpt_path: str | None, output_dir: Path) -> str | None:
    """``last`` / ``best`` as files of ``output_dir``, or a checked local file.

    Raises:
        ConfigError: (``ckpt_path``) remote, missing, a folder, or nothing to resume.
    """
    if ckpt_path is None:
        return None
    if "://" in ckpt_path:
        raise ConfigError(
            "ckpt_path",
            f"{ckpt_path!r} is remote; a checkpoint is loaded with pickle, which runs code, so "
            "mrpo loads local files only: download it and pass its path",
        )
    if ckpt_path == "last":
        candidates = last_checkpoints(output_dir)
        if not candidates:
            raise ConfigError(
                "ckpt_path",
                f"'last' but {output_dir / 'checkpoints'} holds no last.ckpt; start without it",
            )
        return str(candidates[0])
    if ckpt_path == "best":
        bests = best_checkpoints(output_dir)
        if not bests:
            raise ConfigError("ckpt_path", f"'best' but {output_dir} holds no best-step_*.ckpt")
        recorded = best_model_path(_load_checkpoint(str(bests[0])))
        chosen = Path(recorded) if recorded and Path(recorded).is_file() else bests[0]
        return str(chosen)
    path = Path(ckpt_path).expanduser()
    if path.is_dir() and not is_sharded_checkpoint(path):
        raise ConfigError(
            "ckpt_path",
            f"{path} is a folder; pass its .ckpt file, or ckpt_path=last with "
            "hydra.run.dir=<the run's directory>",
        )
    if not path.exists():
        raise ConfigError("ckpt_path", f"{path} does not exist")
    return str(path)


def _load_checkpoint(path: str) -> dict[str, Any]:
    """A checkpoint's contents, memory-mapped (tensors are not read) and without running code;
    of a sharded checkpoint folder, everything but its tensors (which stay in the shards)."""
    sharded = is_sharded_checkpoint(path)
    try:
        file = Path(path) / SHARDED_META if sharded else path
        loaded = torch.load(file, map_location="cpu", mmap=not sharded, weights_only=True)
    except (OSError, RuntimeError, EOFError, pickle.UnpicklingError, ValueError) as err:
        raise ConfigError(
            "ckpt_path", f"{path} cannot be read as a checkpoint (truncated or damaged?): {err}"
        ) from None
    if not isinstance(loaded, dict) or ("state_dict" not in loaded and not sharded):
        raise ConfigError("ckpt_path", f"{path} is not a Lightning checkpoint (no state_dict)")
    return loaded


def read_checkpoint_identity(path: str) -> dict[str, Any] | None:
    """The run identity a checkpoint recorded (None for one written without it)."""
    identity = _load_checkpoint(path).get(RUN_IDENTITY_KEY)
    return dict(identity) if isinstance(identity, Mapping) and identity else None


def check_model_sources(cfg: TrainConfig, found: Preflight) -> None:
    """Weight files, tokenizers and chat templates of the policy and of every reference (each
    source once: :func:`mrpo.models.integrity.check_source`), then the policy's context
    length and architecture (:func:`mrpo.models.policy.check_architecture`)."""
    cache, m = model_cache_dir(cfg.paths.cache_dir), cfg.model
    sources: list[tuple[str, ModelConfig | ReferenceSpec]] = [("model", m)]
    for i, spec in enumerate(reference_specs(cfg)):
        if spec.source not in POLICY_SOURCES:  # "self", "moving": the policy, checked above
            sources.append((f"references.pool.{i}", spec))
    for prefix, s in sources:
        with option_prefix(prefix):
            check_source(s.source, s.tokenizer, s.chat_template, cache)
    with option_prefix("model"):
        with source_option("source"):
            config = model_config(m.source, cache_dir=cache)
        context = getattr(config, "max_position_embeddings", None)
        if isinstance(context, int) and cfg.data.max_length > context:
            found.warn(
                f"data.max_length={cfg.data.max_length} is beyond the model's context of "
                f"{context} positions: longer pairs will score badly; lower data.max_length"
            )
        check_architecture(m, config)


def check_prepared_data(
    cfg: TrainConfig,
    train_pairs: int,
    val_pairs: int,
    identity: Mapping[str, Any],
    found: Preflight,
) -> None:
    """Checks that need the data's size and fingerprints (still no model loaded).

    Raises:
        ConfigError: a validation split the weighting cannot do without, or a resume whose
            checkpoint was saved with other settings or data (unless ``force_resume``).
    """
    needs_val = cfg.loss.name != "dpo" and (
        build_weighting(cfg).fits_on_validation or build_weighting(cfg).needs_feedback
    )
    if val_pairs == 0:
        if needs_val:
            raise ConfigError(
                "data.val_size",
                f"gives 0 validation pairs, but weighting {cfg.weights.strategy!r} "
                "needs them; raise data.val_size",
            )
        total = train_pairs + val_pairs
        found.warn(
            f"data.val_size={cfg.data.val_size} gives 0 validation pairs of {total}: no "
            "validation metrics, and no best checkpoint"
        )
    _warn_on_warmup(cfg, train_pairs, found)
    if found.checkpoint_identity is not None:
        differences = identity_differences(found.checkpoint_identity, identity)
        if differences and not cfg.force_resume:
            raise ConfigError(
                "ckpt_path",
                f"{found.ckpt_path} was saved by a run with other settings or data: "
                f"{'; '.join(differences)}. Resume with the checkpoint's settings, or pass "
                "force_resume=true to resume anyway",
            )
        if differences:
            found.warn(f"resuming despite differences (force_resume): {'; '.join(differences)}")


def _warn_on_warmup(cfg: TrainConfig, train_pairs: int, found: Preflight) -> None:
    from mrpo.cli.plan import planned_steps

    steps = planned_steps(cfg, train_pairs)
    warmup = int(cfg.scheduler.warmup_ratio * steps)
    if steps > 0 and cfg.scheduler.warmup_ratio > 0 and warmup == 0:
        found.warn(
            f"scheduler.warmup_ratio={cfg.scheduler.warmup_ratio} of {steps} step(s) is no "
            "warm-up step at all"
        )
    if steps <= 1 and train_pairs > 0:
        found.warn(f"the run takes {steps} optimizer step(s): is trainer.max_steps meant?")
