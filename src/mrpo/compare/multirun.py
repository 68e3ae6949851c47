"""Which jobs a Hydra multirun planned, read back from its ``multirun.yaml``.

Hydra's basic sweeper takes the sweeper's ``params`` followed by the command-line overrides
(a later override of the same key wins), expands each sweep (``a=1,2``, ``b=range(3)``) and
launches the cartesian product, numbering the jobs in that order. Repeating that expansion
tells how many jobs a sweep should have and which overrides a missing job number stood for,
so that an interrupted sweep shows its absent jobs, not only the gaps between present ones.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping
from typing import Any

_BASIC_SWEEPER = "BasicSweeper"


def sweep_job_overrides(multirun: Mapping[str, Any]) -> list[tuple[str, ...]] | None:
    """The overrides of every planned job, in job order; ``None`` when they cannot be known.

    ``multirun`` is the parsed ``multirun.yaml``. Only Hydra's basic sweeper has a fixed plan;
    other sweepers (Optuna, ...) choose jobs as they go, and for those this returns ``None``.
    """
    hydra = multirun.get("hydra")
    if not isinstance(hydra, Mapping):
        return None
    sweeper = hydra.get("sweeper") or {}
    if _BASIC_SWEEPER not in str(sweeper.get("_target_", _BASIC_SWEEPER)):
        return None
    task = (hydra.get("overrides") or {}).get("task") or []
    try:
        params = _resolved_params(multirun)
        lines = [f"{key}={value}" for key, value in params.items()] + [str(t) for t in task]
        return _expand(lines)
    except Exception:  # an override Hydra itself would reject: the plan is unknown, not fatal
        return None


def _resolved_params(multirun: Mapping[str, Any]) -> dict[str, Any]:
    """The sweeper's params, with interpolations resolved against the saved config as the
    sweeper resolved them at launch (``${mrpo_each_reference:${references.pool}}``)."""
    params = multirun["hydra"].get("sweeper", {}).get("params") or {}
    if not any("${" in str(value) for value in params.values()):
        return dict(params)
    from omegaconf import OmegaConf

    from mrpo.config.resolvers import register_resolvers

    register_resolvers()
    resolved = OmegaConf.create(dict(multirun)).hydra.sweeper.params
    return {key: str(resolved[key]) for key in params}


def swept_keys(multirun: Mapping[str, Any]) -> list[str]:
    """The config keys a sweep varies, in the order Hydra reads them.

    A key counts when its override sweeps (``a=1,2``, ``range``, ``choice``, ``interval``)
    in the sweeper's ``params`` or on the command line, whatever the sweeper. A swept dict
    (``loss={ctro:false},{ctro:true,epsilon:0.1}``, merged into a config group) stands for the
    keys it sets (``loss.ctro``, ``loss.epsilon``). Overrides Hydra would reject are skipped.
    """
    from hydra.core.override_parser.overrides_parser import OverridesParser

    hydra = multirun.get("hydra")
    if not isinstance(hydra, Mapping):
        return []
    params = (hydra.get("sweeper") or {}).get("params") or {}
    task = (hydra.get("overrides") or {}).get("task") or []
    lines = [f"{key}={value}" for key, value in params.items()] + [str(t) for t in task]
    keys: dict[str, None] = {}  # ordered, without repeats
    parser = OverridesParser.create()
    for line in lines:
        try:
            (override,) = parser.parse_overrides([line])
        except Exception:  # not Hydra's syntax: no key to read from it
            continue
        if not override.is_sweep_override():
            continue
        key = override.get_key_element().lstrip("+~")
        values = list(override.sweep_iterator()) if override.is_discrete_sweep() else []
        dicts = [v for v in values if isinstance(v, Mapping)]
        if values and len(dicts) == len(values):
            keys.update({f"{key}.{sub}": None for d in dicts for sub in d})
        else:
            keys[key] = None
    return list(keys)


def _expand(lines: list[str]) -> list[tuple[str, ...]] | None:
    # Imported here: Hydra's parser is only needed for multirun directories.
    from hydra.core.override_parser.overrides_parser import OverridesParser

    choices: dict[str, list[str]] = {}
    for override in OverridesParser.create().parse_overrides(lines):
        key = override.get_key_element()
        if override.is_sweep_override():
            if not override.is_discrete_sweep():
                return None  # interval sweeps need a search sweeper: no fixed plan
            choices[key] = [f"{key}={v}" for v in override.sweep_string_iterator()]
        else:
            choices[key] = [f"{key}={override.get_value_element_as_str()}"]
    return [tuple(job) for job in itertools.product(*choices.values())]
