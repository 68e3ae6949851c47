"""Any lm-evaluation-harness task as an mrpo evaluation task, run on the in-memory model.

:func:`harness_task` builds the :class:`~mrpo.evals.tasks.EvalTask` of an lm-eval task, group
or tag name: its data are lm-eval's task objects (built once, from lm-eval's own task configs,
or from the local-data overrides and include paths, see :mod:`mrpo.evals.harness.manager`),
and each evaluation wraps the model and tokenizer in lm-eval's ``HFLM`` (which accepts a model
instance) and calls ``lm_eval.simple_evaluate`` on them: lm-eval's prompts, few-shot sampling,
requests, filters, metrics and aggregation, nothing of mrpo's.

Results (:func:`harness_result`): the metric ``<metric>,<filter>`` of lm-eval's table becomes
``<metric>`` (filter ``none``) or ``<metric>_<filter>`` (``exact_match_strict_match``), logged
as ``eval/<name>/...``; for a group or tag, the members' metrics go under
``eval/<name>/<member>/...``. Every per-sample record of lm-eval (document, arguments, raw and
filtered responses, per-sample metrics) becomes a sample, with its task's name.
``info`` keeps lm-eval's version, the task versions, shots, ``higher_is_better`` and the task
configs it ran.

Reproducibility: the few-shot sampler is re-seeded on every evaluation (lm-eval's default
seed 1234), so evaluations at different training steps see the same examples; lm-eval's
global seeding runs inside :func:`~lightning.pytorch.utilities.seed.isolate_rng`, which puts
the training run's random state back afterwards.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from lightning.pytorch.utilities.seed import isolate_rng
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from mrpo.errors import OptionError
from mrpo.evals.harness.manager import import_lm_eval, task_manager
from mrpo.evals.harness.options import HarnessOptions
from mrpo.evals.tasks import EvalSettings, EvalTask, TaskResult


@dataclass(frozen=True)
class HarnessData:
    """lm-eval's built task objects for one name, and the task manager that built them.

    Attributes:
        name: the lm-eval task, group or tag name.
        objects: what ``simple_evaluate`` runs: the group, or the task(s).
        manager: the ``TaskManager`` (``simple_evaluate`` resolves members through it).
    """

    name: str
    objects: list[Any]
    manager: Any


def load_harness_data(
    name: str, options: HarnessOptions, data_dir: str | os.PathLike[str] | None = None
) -> HarnessData:
    """Build lm-eval's task objects for ``name`` (this loads their data sets).

    Raises:
        OptionError: (option ``tasks``) lm-eval is missing, the name is unknown to it, or a
            data set cannot be loaded (naming the task).
    """
    import_lm_eval([name])
    manager = task_manager(options, data_dir)
    if name not in manager.task_index:
        raise OptionError("tasks", f"unknown task {name!r}: not a task, group or tag of lm-eval")
    try:
        loaded = manager.load([name])
    except (OSError, ValueError) as err:  # datasets' not-found and connection errors are OSErrors
        raise OptionError(
            "tasks",
            f"lm-eval task {name!r}: its data could not be loaded ({type(err).__name__}: {err})",
        ) from err
    groups = loaded.get("groups") or {}
    objects = [groups[name]] if name in groups else list(loaded["tasks"].values())
    return HarnessData(name, objects, manager)


def evaluate_harness(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    data: HarnessData,
    settings: EvalSettings,
    *,
    num_fewshot: int | None = None,
    apply_chat_template: bool = False,
) -> TaskResult:
    """Run lm-eval's ``simple_evaluate`` on ``model`` for ``data``'s tasks.

    ``settings.limit`` is lm-eval's ``limit`` (the first n documents of each task),
    ``settings.batch_size`` and ``settings.max_length`` go to ``HFLM``; ``num_fewshot`` None
    keeps each task's own number of shots. Generation length and stop strings are the task
    configs' (``settings.max_new_tokens`` concerns mrpo's own tasks).
    """
    lm_eval = import_lm_eval([data.name])
    from lm_eval.models.huggingface import HFLM

    lm = HFLM(
        pretrained=model,
        tokenizer=tokenizer,
        batch_size=settings.batch_size,
        max_length=settings.max_length,
    )
    with isolate_rng():
        out = lm_eval.simple_evaluate(
            model=lm,
            tasks=list(data.objects),
            num_fewshot=num_fewshot,
            limit=settings.limit,
            task_manager=data.manager,
            log_samples=True,
            apply_chat_template=apply_chat_template,
        )
    return harness_result(data.name, out)


def metric_key(metric_and_filter: str) -> str | None:
    """mrpo's name of an lm-eval result key ``"<metric>,<filter>"``; None for other keys."""
    metric, sep, filter_name = metric_and_filter.partition(",")
    if not sep:
        return None  # "alias" and other labels
    return metric if filter_name == "none" else f"{metric}_{filter_name.replace('-', '_')}"


def harness_result(name: str, out: Mapping[str, Any]) -> TaskResult:
    """A :class:`TaskResult` from ``simple_evaluate``'s output for the requested ``name``."""
    metrics: dict[str, float] = {}
    for task, values in out["results"].items():
        prefix = "" if task == name else f"{task}/"
        for key, value in values.items():
            metric = metric_key(key)
            numeric = isinstance(value, int | float) and not isinstance(value, bool)
            if metric is not None and numeric and math.isfinite(value):
                metrics[prefix + metric] = float(value)
    samples = [
        {"task": task, **_jsonable(row)}
        for task, rows in (out.get("samples") or {}).items()
        for row in rows
    ]
    counts = {"num_samples": sum(int(n["effective"]) for n in out["n-samples"].values())}
    info = _jsonable(
        {
            "backend": "lm-eval",
            "lm_eval_version": out.get("lm_eval_version"),
            **{k: out.get(k) for k in ("versions", "n-shot", "higher_is_better", "configs")},
        }
    )
    return TaskResult(metrics, samples, counts, info)


def _jsonable(value: Any) -> Any:
    """``value`` as plain JSON types, converted as lm-eval writes its own sample files."""
    from lm_eval.utils import handle_non_serializable

    return json.loads(json.dumps(value, default=handle_non_serializable, ensure_ascii=False))


def harness_task(name: str, options: HarnessOptions) -> EvalTask:
    """The evaluation task that runs lm-eval's task (or group, or tag) ``name``."""
    shots = options.num_fewshot.get(name)

    def evaluate(
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        data: HarnessData,
        settings: EvalSettings,
    ) -> TaskResult:
        return evaluate_harness(
            model,
            tokenizer,
            data,
            settings,
            num_fewshot=shots,
            apply_chat_template=options.apply_chat_template,
        )

    return EvalTask(
        name=name,
        description=f"lm-evaluation-harness task {name}",
        load_data=lambda data_dir: load_harness_data(name, options, data_dir),
        evaluate=evaluate,
    )
