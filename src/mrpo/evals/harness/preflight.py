"""Checks of lm-eval task names and their data before anything is loaded.

:func:`check_harness_tasks` runs with the config checks of ``mrpo-train`` and ``mrpo-eval``:
every name must be a task, group or tag of lm-eval's index (with the include paths), and each
of its tasks must find its data without downloading anything that cannot be downloaded. A
task's data is available when

- the task brings its own loader (``custom_dataset``, as the local-data overrides do);
- its ``dataset_path`` is a local folder or file, or its ``data_files`` are local files;
- its hub data set is in the Hugging Face cache, or the hub answers for it.

Otherwise the task is refused, naming the task and the data set. Nothing is loaded: the
checks read the task index (configs as written, functions not imported) and the file system,
and ask the hub once per data set.
"""

from __future__ import annotations

import difflib
import functools
import glob
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mrpo.errors import OptionError
from mrpo.evals.harness.manager import import_lm_eval, task_manager
from mrpo.evals.harness.options import HarnessOptions

# `datasets` builders that read the files named in `data_files` (no hub involved).
FILE_BUILDERS = frozenset({"json", "csv", "parquet", "text", "arrow", "pandas", "xml"})
# Keys of a group config that describe the group, not its tasks (lm-eval's GroupConfig).
GROUP_KEYS = frozenset(
    {"group", "group_alias", "task", "aggregate_metric_list", "metadata", "tag", "version"}
)
OFFLINE_DOC = "docs/evaluation.md, 'Offline data'"


@dataclass(frozen=True)
class Leaf:
    """One task that a requested name runs, with its config as lm-eval would build it."""

    name: str
    config: Mapping[str, Any]


def check_harness_tasks(
    names: Sequence[str],
    options: HarnessOptions,
    *,
    data_dir: str | os.PathLike[str] | None = None,
) -> None:
    """Raise :class:`OptionError` unless every name is an lm-eval task whose data is at hand.

    Raises:
        OptionError: option ``tasks`` (lm-eval missing, an unknown name, missing data), or
            ``harness.num_fewshot.<name>`` (shots asked of a task whose config fixes 0).
    """
    if not names:
        return
    import_lm_eval(list(names))
    index = task_manager(options, data_dir).task_index
    for name in names:
        if name not in index:
            close = difflib.get_close_matches(name, list(index), n=3)
            hint = f"; close matches: {', '.join(close)}" if close else ""
            raise OptionError(
                "tasks",
                f"unknown task {name!r}: neither a built-in task nor a task, group or tag of "
                f"lm-evaluation-harness{hint}",
            )
        leaves = list(leaf_tasks(index, name))
        for leaf in leaves:
            missing = missing_data(leaf.config)
            if missing is not None:
                part = "" if leaf.name == name else f" (its task {leaf.name!r})"
                raise OptionError(
                    "tasks",
                    f"lm-eval task {name!r}{part} cannot get its data: {missing}. Run it where "
                    f"the data can be downloaded once (it is cached), or point the task at "
                    f"local files ({OFFLINE_DOC})",
                )
        shots = options.num_fewshot.get(name)
        fixed = [leaf.name for leaf in leaves if leaf.config.get("num_fewshot") == 0]
        if shots and fixed:
            raise OptionError(
                f"harness.num_fewshot.{name}",
                f"lm-eval runs {', '.join(fixed)} 0-shot whatever is asked (num_fewshot: 0 in "
                f"its config); remove the setting or use a task config of your own",
            )


def leaf_tasks(
    index: Mapping[str, Any], name: str, overrides: Mapping[str, Any] | None = None
) -> Iterator[Leaf]:
    """The tasks that ``name`` (a task, group or tag of lm-eval's index) runs.

    Follows lm-eval's ``TaskFactory``: a group's own non-group keys and an entry's keys
    override its members' configs; an entry that is not in the index is an inline task.
    """
    entry = index[name]
    kind = entry.kind.name
    if kind == "TAG":
        for member in sorted(entry.tags):
            if member in index:
                yield from leaf_tasks(index, member, overrides)
    elif kind == "GROUP":
        yield from _group_members(index, name, dict(entry.cfg or {}), overrides)
    else:
        yield Leaf(name, {**(entry.cfg or {}), **(overrides or {})})


def _group_members(
    index: Mapping[str, Any],
    group: str,
    config: Mapping[str, Any],
    overrides: Mapping[str, Any] | None,
) -> Iterator[Leaf]:
    shared = {**{k: v for k, v in config.items() if k not in GROUP_KEYS}, **(overrides or {})}
    members = config.get("task")
    for item in members if isinstance(members, list) else []:
        if isinstance(item, str):
            if item in index:
                yield from leaf_tasks(index, item, shared)
        elif isinstance(item, dict) and "group" in item:
            inner = {k: v for k, v in item.items() if k != "group"}
            if item["group"] in index:
                yield from leaf_tasks(index, item["group"], {**shared, **inner})
            else:  # a group defined inline
                yield from _group_members(index, f"{group}::{item['group']}", item, shared)
        elif isinstance(item, dict) and "task" in item:
            merged = {**shared, **item}
            if item["task"] in index:
                yield from leaf_tasks(index, item["task"], merged)
            else:  # a task defined inline
                yield Leaf(f"{group}::{item['task']}", merged)


def missing_data(config: Mapping[str, Any]) -> str | None:
    """What data a task config lacks (a sentence naming it), or None when it has its data."""
    if config.get("custom_dataset"):
        return None  # the task's own loader: nothing here can tell
    path = config.get("dataset_path")
    if not isinstance(path, str) or not path:
        return None  # lm-eval itself reports a config without data
    kwargs = config.get("dataset_kwargs") or {}
    files = list(_file_names(kwargs.get("data_files")))
    base = Path(path).expanduser()
    if files:
        remote = [f for f in files if "://" in f]
        folder = base if base.is_dir() else Path()
        absent = [f for f in files if f not in remote and not glob.glob(str(folder / f))]
        if absent:
            return f"its data files {absent} do not exist"
        if not remote:
            return None
    elif base.exists():
        return None
    elif path in FILE_BUILDERS:
        return f"dataset_path {path!r} reads dataset_kwargs.data_files, and none are given"
    if in_hf_cache(path):
        return None
    problem = hub_problem(path)
    if problem is None:
        return None
    subset = config.get("dataset_name")
    label = f"{path} ({subset})" if subset else path
    return f"the data set {label} is neither local nor in the Hugging Face cache, and {problem}"


def _file_names(data_files: Any) -> Iterator[str]:
    """Every file name in a ``data_files`` value (a string, a list, or split -> either)."""
    if isinstance(data_files, str):
        yield data_files
    elif isinstance(data_files, list):
        for item in data_files:
            yield from _file_names(item)
    elif isinstance(data_files, dict):
        for item in data_files.values():
            yield from _file_names(item)


def in_hf_cache(repo_id: str) -> bool:
    """Whether a hub data set was downloaded before (the hub's or ``datasets``' cache)."""
    import datasets.config
    from huggingface_hub import constants

    hub = Path(constants.HF_HUB_CACHE) / f"datasets--{repo_id.replace('/', '--')}"
    prepared = Path(datasets.config.HF_DATASETS_CACHE) / repo_id.replace("/", "___")
    return hub.is_dir() or prepared.is_dir()


@functools.lru_cache(maxsize=256)
def hub_problem(repo_id: str) -> str | None:
    """Why the hub cannot give ``repo_id`` (a sentence), or None when it can; asked once."""
    from huggingface_hub import HfApi, constants
    from huggingface_hub.errors import RepositoryNotFoundError

    if constants.HF_HUB_OFFLINE:
        return "the hub is switched off (HF_HUB_OFFLINE)"
    try:
        HfApi().dataset_info(repo_id, timeout=10)
    except RepositoryNotFoundError:
        return f"the hub has no data set {repo_id!r} (or it is private)"
    except Exception as err:  # no network, DNS, timeout, proxy: all mean "not reachable"
        return f"the hub cannot be reached ({type(err).__name__})"
    return None
