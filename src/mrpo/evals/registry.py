"""The built-in evaluation tasks, registered on import (see :mod:`mrpo.evals.tasks`).

- ``gsm8k``: harness ``gsm8k``, 5-shot -> ``eval/gsm8k/{strict_match,flexible_extract}``
- ``gsm8k_chat``: 0-shot, chat template -> ``eval/gsm8k_chat/{strict_match,flexible_extract}``
- ``truthfulqa``: harness ``truthfulqa_mc1`` and ``truthfulqa_mc2`` -> ``eval/truthfulqa/{mc1,mc2}``
"""

from __future__ import annotations

from mrpo.evals import gsm8k, truthfulqa
from mrpo.evals.tasks import register_task, registered_tasks

for _task in (*gsm8k.EVAL_TASKS, *truthfulqa.EVAL_TASKS):
    register_task(_task)

EVAL_NAMES: tuple[str, ...] = tuple(registered_tasks())
"""Names of the built-in tasks, in registration order."""
