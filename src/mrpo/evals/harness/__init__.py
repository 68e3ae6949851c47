"""lm-evaluation-harness as an evaluation backend: any lm-eval task, group or tag by name.

- :mod:`~mrpo.evals.harness.options`: :class:`HarnessOptions` (``eval.harness``);
- :mod:`~mrpo.evals.harness.backend`: the :class:`~mrpo.evals.tasks.EvalTask` of an lm-eval
  name, run by lm-eval's ``simple_evaluate`` on the in-memory model (``HFLM``);
- :mod:`~mrpo.evals.harness.preflight`: name and data checks before anything loads;
- :mod:`~mrpo.evals.harness.manager`: importing lm-eval (an optional extra) and its task index;
- :mod:`~mrpo.evals.harness.local_data`: lm-eval's GSM8K and TruthfulQA tasks on the local
  data mirror (the overrides in ``local_tasks/``).

Importing this package does not import lm-eval; running an lm-eval task without it installed
fails with a message that says how to install it (``pip install 'mrpo[lm-eval]'``).
"""

from mrpo.evals.harness.options import HarnessOptions

__all__ = ["HarnessOptions"]
