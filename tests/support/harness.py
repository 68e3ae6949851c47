"""Tiny lm-evaluation-harness tasks on local files, for tests and offline smoke checks.

:func:`write_tiny_harness_tasks` writes, into one folder, three plain lm-eval task configs
that read a JSON-lines file next to them (``dataset_path: json`` with ``data_files``, lm-eval's
own way of pointing a task at local files) and cache what ``datasets`` prepares inside the
folder, so nothing reaches the hub or the user's cache:

- ``tiny_mc``: multiple choice (log-likelihood of each choice), metrics ``acc`` and
  ``acc_norm``;
- ``tiny_gen``: generate until a newline, 4 new tokens at most, filtered by a regex
  (``exact_match`` under the filter ``first-word``);
- ``tiny_group``: a group of both, with ``acc`` aggregated over ``tiny_mc``.

Give the folder as ``eval.harness.include_path`` (``include_defaults=false`` skips indexing
lm-eval's own thousands of tasks).
"""

from __future__ import annotations

import json
from pathlib import Path

TINY_DOCS = [
    {"question": "Is the sea blue?", "choices": ["Yes.", "No.", "Maybe."], "answer": 0},
    {"question": "What is the capital of France?", "choices": ["Paris.", "Rome."], "answer": 0},
    {"question": "How many clips did she sell?", "choices": ["72", "48", "24"], "answer": 0},
]
"""Three multiple-choice documents; the tasks read them from ``tiny.jsonl``."""

_COMMON = """dataset_path: json
dataset_name: null
dataset_kwargs:
  data_files:
    test: {data}
  cache_dir: {cache}
test_split: test
doc_to_text: "Q: {{{{question}}}}\\nA:"
metadata:
  version: 1.0
"""

_TASKS = {
    "tiny_mc": """task: tiny_mc
output_type: multiple_choice
doc_to_choice: "{{choices}}"
doc_to_target: "{{answer}}"
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
  - metric: acc_norm
    aggregation: mean
    higher_is_better: true
""",
    "tiny_gen": """task: tiny_gen
output_type: generate_until
doc_to_target: "{{choices[answer]}}"
generation_kwargs:
  until: ["\\n"]
  do_sample: false
  max_gen_toks: 4
filter_list:
  - name: first-word
    filter:
      - function: regex
        regex_pattern: "(\\\\S+)"
      - function: take_first
metric_list:
  - metric: exact_match
    aggregation: mean
    higher_is_better: true
""",
}

_GROUP = """group: tiny_group
task: [tiny_mc, tiny_gen]
aggregate_metric_list:
  - metric: acc
    weight_by_size: true
metadata:
  version: 1.0
"""


def write_tiny_harness_tasks(folder: Path) -> Path:
    """Write ``tiny.jsonl``, the two task configs and the group config into ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    data = folder / "tiny.jsonl"
    data.write_text("".join(json.dumps(d) + "\n" for d in TINY_DOCS), encoding="utf-8")
    common = _COMMON.format(data=json.dumps(str(data)), cache=json.dumps(str(folder / "cache")))
    for name, text in _TASKS.items():
        (folder / f"{name}.yaml").write_text(text + common, encoding="utf-8")
    (folder / "tiny_group.yaml").write_text(_GROUP, encoding="utf-8")
    return folder
