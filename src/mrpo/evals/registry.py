"""The built-in evaluation tasks, registered on import (see :mod:`mrpo.evals.tasks`), and the
resolution of any other name to lm-evaluation-harness.

- ``gsm8k``: harness ``gsm8k``, 5-shot -> ``eval/gsm8k/{strict_match,flexible_extract}``
- ``gsm8k_chat``: 0-shot, chat template -> ``eval/gsm8k_chat/{strict_match,flexible_extract}``
- ``truthfulqa``: harness ``truthfulqa_mc1`` and ``truthfulqa_mc2`` -> ``eval/truthfulqa/{mc1,mc2}``
- any other name: the lm-eval task, group or tag of that name, run by lm-eval on the model
  (:mod:`mrpo.evals.harness`) -> ``eval/<name>/<lm-eval metric>``
"""

from __future__ import annotations

from mrpo.evals import gsm8k, truthfulqa
from mrpo.evals.harness.options import HarnessOptions
from mrpo.evals.tasks import EvalTask, register_task, registered_tasks

for _task in (*gsm8k.EVAL_TASKS, *truthfulqa.EVAL_TASKS):
    register_task(_task)

EVAL_NAMES: tuple[str, ...] = tuple(registered_tasks())
"""Names of the built-in tasks, in registration order."""


def resolve_task(name: str, harness: HarnessOptions | None = None) -> EvalTask:
    """The task ``name`` runs: the registered task of that name, else lm-eval's.

    A built-in task shadows the lm-eval task of the same name (``gsm8k``: mrpo's own, scored
    per item as lm-eval's, see docs/evaluation.md). Nothing is loaded or checked here: an
    lm-eval name is checked when its data is loaded (or, before that, by the config checks).
    """
    tasks = registered_tasks()
    if name in tasks:
        return tasks[name]
    from mrpo.evals.harness.backend import harness_task  # imports lm-eval only when it runs

    return harness_task(name, harness or HarnessOptions())
