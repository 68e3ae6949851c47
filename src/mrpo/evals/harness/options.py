"""Settings of the lm-evaluation-harness backend (``eval.harness`` in the configs).

Plain data, importable without lm-eval: the config schema uses :class:`HarnessOptions` as the
type of ``eval.harness``.
"""

from __future__ import annotations

from dataclasses import dataclass

from mrpo.domains import Flag, Items, Table, Text, setting


@dataclass
class HarnessOptions:
    """How tasks that mrpo does not implement itself are found and run by lm-eval.

    Attributes:
        include_path: folders of lm-eval task YAMLs (lm-eval's ``--include_path``); a task found
            there replaces lm-eval's own task of the same name, which is how a task is pointed
            at local files (docs/evaluation.md, "Offline data").
        include_defaults: index lm-eval's own task configs (False: only ``include_path``'s,
            which also starts much faster).
        num_fewshot: few-shot examples per task name (lm-eval's ``--num_fewshot``, but per
            task); a task not named here uses its config's own number.
        apply_chat_template: render the prompts with the tokenizer's chat template
            (lm-eval's ``--apply_chat_template``).
        local_data: read the local data mirror (``paths.data_dir``, ``MRPO_DATA_DIR``) for the
            lm-eval tasks it holds (the overrides in ``mrpo/evals/harness/local_tasks``).
    """

    include_path: list[str] = setting([], Items(Text()))
    include_defaults: bool = setting(True, Flag())
    num_fewshot: dict[str, int] = setting({}, Table())
    apply_chat_template: bool = setting(False, Flag())
    local_data: bool = setting(True, Flag())
