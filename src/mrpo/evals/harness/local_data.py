"""lm-eval tasks on the local data mirror: the shipped task-config overrides and their data.

lm-eval's tasks load their data from the Hugging Face hub. For the tasks whose data the local
mirror holds (``<data_dir>/gsm8k``, ``<data_dir>/truthfulqa``; ``data_dir`` is ``paths.data_dir``
or ``MRPO_DATA_DIR``), the package ships overrides in ``local_tasks/``: lm-eval task configs that
``include`` lm-eval's own config of the task and replace only where the data comes from (a
``custom_dataset`` function below, which reads the mirror with mrpo's loaders, so both backends
see the same records). :func:`write_local_tasks` fills in the two placeholders of each override
whose files are present (``${lm_eval_tasks}``: lm-eval's task folder, ``${data_dir}``) and
writes it into a folder that is given to lm-eval's ``TaskManager`` as an include path; a task
config found there replaces the built-in one of the same name, also inside groups and tags.

An override lists the mirror files it needs under ``mrpo_local_files`` (paths relative to the
data folder); that key is removed from the written config.
"""

from __future__ import annotations

import os
import string
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from mrpo.data.sources import data_root
from mrpo.evals.gsm8k.loader import load_gsm8k
from mrpo.evals.truthfulqa.loader import load_truthfulqa_mc

LOCAL_TASKS_DIR = Path(__file__).resolve().parent / "local_tasks"
"""The shipped overrides, one ``<task>.yaml`` per lm-eval task."""
FILES_KEY = "mrpo_local_files"


class FunctionRef(str):
    """A ``!function module.name`` value of an lm-eval task config, kept as written."""


class _Loader(yaml.SafeLoader):
    """Reads lm-eval task YAML without importing the functions it names."""


class _Dumper(yaml.SafeDumper):
    """Writes :class:`FunctionRef` values back as ``!function`` tags."""


def _read_function(loader: yaml.SafeLoader, node: yaml.ScalarNode) -> FunctionRef:
    return FunctionRef(loader.construct_scalar(node))


def _write_function(dumper: yaml.SafeDumper, value: FunctionRef) -> yaml.ScalarNode:
    return dumper.represent_scalar("!function", str(value))


_Loader.add_constructor("!function", _read_function)
_Dumper.add_representer(FunctionRef, _write_function)


def read_override(path: Path) -> dict[str, Any]:
    """One override file as a dict (``!function`` values as :class:`FunctionRef`)."""
    with path.open(encoding="utf-8") as f:
        config = yaml.load(f, Loader=_Loader)  # a SafeLoader with one tag added
    if not isinstance(config, dict) or "task" not in config:
        raise ValueError(f"{path}: an lm-eval task override needs a mapping with a 'task' key")
    return config


def _fill(value: Any, values: Mapping[str, str]) -> Any:
    """``value`` with ``${name}`` placeholders of every string replaced (types kept)."""
    if isinstance(value, str):
        filled = string.Template(value).substitute(values)
        return FunctionRef(filled) if isinstance(value, FunctionRef) else filled
    if isinstance(value, list):
        return [_fill(v, values) for v in value]
    if isinstance(value, dict):
        return {k: _fill(v, values) for k, v in value.items()}
    return value


def local_task_overrides(
    data_dir: str | os.PathLike[str] | None, lm_eval_tasks: Path
) -> dict[str, dict[str, Any]]:
    """The filled-in override of every shipped task whose mirror files exist, by task name.

    Args:
        data_dir: the local data folder (None: ``MRPO_DATA_DIR``; neither: no overrides).
        lm_eval_tasks: lm-eval's task folder (``lm_eval/tasks``), which the overrides include.
    """
    root = data_root(data_dir)
    if root is None:
        return {}
    values = {"data_dir": str(Path(root).resolve()), "lm_eval_tasks": str(lm_eval_tasks)}
    found = {}
    for path in sorted(LOCAL_TASKS_DIR.glob("*.yaml")):
        config = read_override(path)
        files = config.pop(FILES_KEY, [])
        if all((Path(root) / f).is_file() for f in files):
            found[str(config["task"])] = _fill(config, values)
    return found


def write_local_tasks(
    folder: Path, data_dir: str | os.PathLike[str] | None, lm_eval_tasks: Path
) -> list[str]:
    """Write the overrides of :func:`local_task_overrides` into ``folder``; return their names."""
    overrides = local_task_overrides(data_dir, lm_eval_tasks)
    folder.mkdir(parents=True, exist_ok=True)
    for name, config in overrides.items():
        text = yaml.dump(config, Dumper=_Dumper, sort_keys=False, allow_unicode=True)
        (folder / f"{name}.yaml").write_text(text, encoding="utf-8")
    return list(overrides)


def gsm8k_dataset(data_dir: str, **_: Any) -> Any:
    """GSM8K's train and test splits from ``<data_dir>/gsm8k`` as the hub's records.

    lm-eval calls a task's ``custom_dataset`` with the task's metadata and ``dataset_kwargs``
    as keyword arguments; only ``data_dir`` is used.
    """
    import datasets

    splits = {
        split: [
            {"question": r.question, "answer": r.answer}
            for r in load_gsm8k(split, data_dir=data_dir)
        ]
        for split in ("train", "test")
    }
    return datasets.DatasetDict({k: datasets.Dataset.from_list(v) for k, v in splits.items()})


def truthfulqa_mc_dataset(data_dir: str, **_: Any) -> Any:
    """TruthfulQA multiple choice from ``<data_dir>/truthfulqa/mc_task.json`` as the hub's
    ``multiple_choice`` validation split (``{choices, labels}`` targets in the release order)."""
    import datasets

    rows = [
        {
            "question": r.question,
            "mc1_targets": {"choices": list(r.mc1_choices), "labels": list(r.mc1_labels)},
            "mc2_targets": {"choices": list(r.mc2_choices), "labels": list(r.mc2_labels)},
        }
        for r in load_truthfulqa_mc(data_dir=data_dir)
    ]
    return datasets.DatasetDict({"validation": datasets.Dataset.from_list(rows)})
