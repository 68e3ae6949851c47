"""The run's plan, made after the data is tokenized and before any model loads.

:func:`make_plan` gathers what the run will do (pairs per split, the K references and which
are in the cache, steps, the batch layout), its estimated peak memory per device
(:mod:`mrpo.planning.memory`, sizes from the models' configs) and an estimated time (from a
speed measured by an earlier run on this machine, :mod:`mrpo.planning.speed`).
:func:`check_fits` refuses a run that cannot fit the device, naming the overrides that would
make it fit. :meth:`RunPlan.line` is the one line printed at the start of a run.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import psutil  # type: ignore[import-untyped]  # no stubs installed
import torch

from mrpo.data.layout import PairLayout
from mrpo.data.pipeline import DataConfig, PreparedData, pair_layout
from mrpo.data.types import PreferenceExample
from mrpo.errors import OptionError
from mrpo.models import DTYPES
from mrpo.models.loading import model_config
from mrpo.models.parallel import wants_cuda
from mrpo.models.policy import ModelConfig, model_cache_dir
from mrpo.planning.batches import epoch_tokens, largest_batch
from mrpo.planning.memory import GB, MemoryPlan, ModelShape, RunShape, estimate_memory, memory_fixes
from mrpo.planning.shapes import model_shape
from mrpo.planning.speed import (
    estimate_seconds,
    format_duration,
    read_speed,
    record_speed,
    speed_key,
)
from mrpo.references import ReferenceEnsemble
from mrpo.tracking.card import render_card, write_card
from mrpo.training.trainer import TrainerConfig

log = logging.getLogger("mrpo.train")

# Optimizer states per trainable parameter, by optimizer class (2 unless listed).
_OPTIMIZER_STATES = {"SGD": 1, "Adagrad": 1, "RMSprop": 1, "Adafactor": 1}


@dataclass(frozen=True)
class PlanSettings:
    """The settings of the run its plan reads: the policy's, the data's (batches, layout), the
    Trainer's, the optimizer class, the references' ``mode`` and the cache folder (converted
    models; measured speeds)."""

    model: ModelConfig
    data: DataConfig
    trainer: TrainerConfig
    optimizer: str
    reference_mode: str
    cache_dir: str | Path

    @property
    def layout(self) -> PairLayout:
        return pair_layout(self.data)

    @property
    def cuda(self) -> bool:
        return wants_cuda(self.trainer.kwargs())


@dataclass(frozen=True)
class ReferencePlan:
    """A reference of the run: its name, weights source, state (``cached``, ``to score``,
    ``live`` or ``moving``), weights fingerprint and the cache key of its log-probs on this
    run's rows (empty for a moving one)."""

    name: str
    source: str
    state: str
    model_fingerprint: str
    cache_key: str
    system_prompt: str | None = None


@dataclass
class RunPlan:
    """What the run will do and what it will take (module doc)."""

    splits: tuple[int, int, int]
    truncated: int
    references: list[ReferencePlan]
    steps: int
    layout: str
    memory: MemoryPlan
    device: str
    capacity: float
    seconds: float | None = None
    tokens_per_second: float | None = None
    fixes: list[tuple[str, float]] = field(default_factory=list)
    speed_key: str = ""

    def line(self) -> str:
        """The plan in one line (printed at the start of a run)."""
        train, val, test = self.splits
        refs = ", ".join(f"{r.name} ({r.state})" for r in self.references)
        speed = (
            f"at {self.tokens_per_second:.0f} tokens/s measured here"
            if self.tokens_per_second
            else "no speed measured on this machine yet"
        )
        return (
            f"plan: {train}/{val}/{test} pairs (train/val/test, {self.truncated} truncated) | "
            f"K={len(self.references)}: {refs} | {self.steps} steps | layout {self.layout} | "
            f"memory ~{self.memory.total_gb:.1f} GB of {self.capacity / GB:.1f} GB "
            f"({self.device}) | time {format_duration(self.seconds)} ({speed})"
        )

    def record(self) -> dict[str, Any]:
        """The plan for ``summary.json`` (beside the measured peak)."""
        return {
            **self.memory.as_dict(),
            "device": self.device,
            "capacity_gb": round(self.capacity / GB, 3),
            "estimated_seconds": self.seconds,
        }


def planned_steps(settings: PlanSettings, train_pairs: int) -> int:
    """Optimizer steps the run will take: epochs of batches, accumulation, ``max_steps``."""
    trainer = settings.trainer
    per_epoch = -(-train_pairs // max(settings.data.batch_size, 1))
    epochs = int(trainer.max_epochs or 1)
    steps = -(-per_epoch * max(epochs, 1) // trainer.accumulate_grad_batches)
    if trainer.max_steps > 0:
        steps = min(steps, trainer.max_steps) if epochs > 0 else trainer.max_steps
    return steps


def step_warnings(settings: PlanSettings, train_pairs: int, warmup_ratio: float) -> list[str]:
    """What is legal but probably a mistake in the run's optimizer steps: a warm-up ratio that
    gives no warm-up step, or a run of at most one step."""
    steps = planned_steps(settings, train_pairs)
    warnings = []
    if steps > 0 and warmup_ratio > 0 and int(warmup_ratio * steps) == 0:
        warnings.append(
            f"scheduler.warmup_ratio={warmup_ratio} of {steps} step(s) is no warm-up step at all"
        )
    if steps <= 1 and train_pairs > 0:
        warnings.append(f"the run takes {steps} optimizer step(s): is trainer.max_steps meant?")
    return warnings


def make_plan(settings: PlanSettings, ensemble: ReferenceEnsemble, data: PreparedData) -> RunPlan:
    """The run's plan (module doc); reads configs and the cache, loads no model."""
    s = settings
    model, run = run_shapes(s, data, ensemble)
    device, capacity, devices = device_capacity(s.cuda)
    references = reference_plans(ensemble, data.all_examples, live=s.reference_mode == "live")
    steps = planned_steps(s, len(data.train_pairs))
    key = run_speed_key(s, device)
    speed = read_speed(s.cache_dir, key)
    seconds = None
    if speed is not None:
        per_pair = epoch_tokens(data.train_pairs, s.layout) / max(len(data.train_pairs), 1)
        trained = per_pair * steps * s.data.batch_size * int(s.trainer.accumulate_grad_batches)
        missing = sum(r.state == "to score" for r in references)
        rows = [*data.train_pairs, *data.val_pairs, *data.test_pairs]
        scored = missing * epoch_tokens(rows, s.layout)
        seconds = estimate_seconds(int(trained), scored, speed)
    return RunPlan(
        splits=(len(data.train_pairs), len(data.val_pairs), len(data.test_pairs)),
        truncated=int(data.report.get("truncated", 0)),
        references=references,
        steps=steps,
        layout=layout_name(s.layout),
        memory=estimate_memory(model, run),
        device=device,
        capacity=capacity,
        seconds=seconds,
        tokens_per_second=speed,
        fixes=memory_fixes(model, run, capacity, devices=devices),
        speed_key=key,
    )


def layout_name(layout: PairLayout) -> str:
    """``padded``, ``shared`` (prompt computed once), ``packed`` or ``shared+packed``."""
    names = [name for name, on in (("shared", layout.share_prefix), ("packed", layout.pack)) if on]
    return "+".join(names) or "padded"


def run_speed_key(settings: PlanSettings, device: str) -> str:
    """The speed key of this run (:func:`mrpo.planning.speed.speed_key`)."""
    m = settings.model
    keyed = {
        "layout": layout_name(settings.layout),
        "checkpointing": m.gradient_checkpointing,
        "lora": m.lora.enabled,
        "dtype": m.dtype,
        "precision": settings.trainer.precision,
        "references": settings.reference_mode,
    }
    return speed_key(device, m.source, keyed)


def run_shapes(
    settings: PlanSettings, data: PreparedData, ensemble: ReferenceEnsemble
) -> tuple[ModelShape, RunShape]:
    """The policy's sizes (from its config) and the run's largest batch and settings."""
    s, m, t = settings, settings.model, settings.trainer
    shape = model_shape(model_config(m.source, cache_dir=model_cache_dir(s.cache_dir)), m.lora)
    batch = largest_batch(data.train_pairs, s.layout, s.data.batch_size)
    run = RunShape(
        batch_tokens=batch.positions,
        rows=batch.rows,
        row_tokens=batch.row_tokens,
        scored_tokens=batch.scored,
        weight_bytes=_weight_bytes(m.dtype, m.quantization),
        activation_bytes=2 if "16" in str(t.precision) else 4,
        optimizer_states=_OPTIMIZER_STATES.get(s.optimizer.rsplit(".", 1)[-1], 2),
        lora=m.lora.enabled,
        gradient_checkpointing=m.gradient_checkpointing,
        fused_head=m.fused_lm_head,
        tile_tokens=m.lm_head_chunk_tokens,
        attention_scores=m.attn_implementation == "eager",
        live_models=live_models(ensemble, m.lora.enabled) if s.reference_mode == "live" else 0,
        shards=fsdp_shards(t.strategy, t.devices, t.num_nodes) if s.cuda else 1,
        process_bytes=0 if s.cuda else resident_bytes(),
    )
    return shape, run


def _weight_bytes(dtype: str, quantization: str | None) -> float:
    if quantization is not None:
        return 1.0 if quantization == "int8" else 0.5
    torch_dtype = DTYPES.get(dtype)
    return float(torch_dtype.itemsize) if isinstance(torch_dtype, torch.dtype) else 4.0


def fsdp_shards(strategy: Any, devices: Any, num_nodes: int) -> int:
    """Devices the policy is sharded over: FSDP's world (devices x nodes), else 1."""
    if not isinstance(strategy, dict) or strategy.get("name") != "fsdp":
        return 1
    count = torch.cuda.device_count() if devices in (-1, "auto") else devices
    count = len(count) if isinstance(count, list) else int(count)
    return max(count, 1) * int(num_nodes)


def live_models(ensemble: ReferenceEnsemble, lora: bool) -> int:
    """Reference models kept beside the policy in live mode (one per group of references
    sharing weights; a LoRA policy with its adapters off stands in for ``self``)."""
    groups = ensemble.model_groups().values()
    return sum(not (lora and all(ensemble.resolved[k].is_self for k in g)) for g in groups)


def resident_bytes() -> int:
    """This process's resident memory now."""
    return int(psutil.Process().memory_info().rss)


def device_capacity(cuda: bool) -> tuple[str, float, int]:
    """(device name, bytes one device offers this run, devices visible): a GPU's memory, or
    the memory available on this machine plus what the process holds already."""
    if cuda and torch.cuda.is_available():
        _, total = torch.cuda.mem_get_info()
        return torch.cuda.get_device_name(), float(total), torch.cuda.device_count()
    available = psutil.virtual_memory().available + resident_bytes()
    return "cpu", float(available), 1


def reference_plans(
    ensemble: ReferenceEnsemble, rows: list[PreferenceExample], *, live: bool
) -> list[ReferencePlan]:
    """Each reference's identity and whether its log-probs of ``rows`` are cached
    (tokenizers and weight-file hashes only; no model is loaded)."""
    memo, plans = {}, []  # type: ignore[var-annotated]
    for k, name in enumerate(ensemble.names):
        if ensemble.specs[k].is_moving:  # follows the policy: scored live, never cached
            plans.append(ReferencePlan(name, "policy", "moving", "", ""))
            continue
        key = ensemble.key(k, ensemble.tokenize(k, rows, memo, keep=True).pairs)
        state = "live" if live else ("cached" if ensemble.cache.path(key).is_file() else "to score")
        weights, prompt = ensemble.resolved[k].weights, ensemble.specs[k].system_prompt
        plans.append(ReferencePlan(name, weights, state, key.model, key.digest, prompt))
    return plans


def check_fits(plan: RunPlan, *, force_memory: bool) -> None:
    """Refuse a run whose estimated peak exceeds the device, unless ``force_memory``.

    Raises:
        OptionError: (``force_memory``) naming the overrides that would make it fit.
    """
    if plan.memory.total <= plan.capacity:
        return
    need, have = plan.memory.total / GB, plan.capacity / GB
    fits = [f"{key} (~{peak / GB:.1f} GB)" for key, peak in plan.fixes]
    message = (
        f"this run needs ~{need:.1f} GB per device but {plan.device} offers {have:.1f} GB "
        f"({', '.join(f'{k} {v / GB:.2f}' for k, v in plan.memory.components.items())} GB). "
        f"Overrides that lower it: {'; '.join(fits) or 'none known'}. "
        "Or pass force_memory=true to run anyway"
    )
    if force_memory:
        log.warning("force_memory: %s", message)
        return
    raise OptionError("force_memory", message)


def memory_record(plan: RunPlan | None, measured: float | None) -> dict[str, Any]:
    """The plan's estimate beside the measured peak, and its error (estimate / measured - 1)."""
    if plan is None:
        return {}
    record = {**plan.record(), "measured_peak_gb": measured}
    if measured:
        record["error"] = plan.memory.total_gb / measured - 1
    return record


def remember_speed(speed_dir: str | Path, plan: RunPlan, summary: dict[str, Any]) -> None:
    """Keep the finished run's training speed for the time estimates of later runs."""
    speed = summary.get("throughput", {}).get("tokens_per_second", 0.0)
    record_speed(speed_dir, plan.speed_key, speed)


def save_card(
    model_dir: Path, plan: RunPlan, resolved: dict[str, Any], summary: dict[str, Any], command: str
) -> Path:
    """Write the model card of the saved policy (:mod:`mrpo.tracking.card`); ``command``
    reproduces the run."""
    refs = [asdict(r) for r in plan.references]
    return write_card(model_dir, render_card(resolved, summary, refs, command))
