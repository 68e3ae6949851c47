"""Composition of the primary configs, with its errors as config errors naming the key.

Hydra reports a wrong type in an override (``seed=abc``), an unknown key
(``data.batchsize=2``) or an unknown group option (``loss=nope``) itself, with exit status 1
and several lines. The entry points compose the command line's overrides first with
:func:`check_composition`, so these end like every other bad value: one line naming the key,
exit status 2. The key comes from OmegaConf's error (``full_key``), or else from the one
override that fails on its own.
"""

from __future__ import annotations

import dataclasses
import re
import sys
from collections.abc import Sequence
from pathlib import Path

from hydra import compose, initialize_config_dir
from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import ConfigAttributeError, ConfigKeyError, OmegaConfBaseException

from mrpo.errors import ConfigError, InputError

__all__ = [
    "check_command_line",
    "check_composition",
    "check_known_keys",
    "compose_checked",
    "composition_error",
    "exit_on_bad_command_line",
]


def compose_checked(
    config_dir: Path, config_name: str, overrides: Sequence[str], hydra_config: bool = False
) -> DictConfig:
    """Compose ``config_name`` with ``overrides``.

    Raises:
        ConfigError: naming the key of a failed composition.
    """
    try:
        cfg = _compose(config_dir, config_name, overrides, hydra_config)
    except Exception as err:  # Hydra's and OmegaConf's composition errors
        raise composition_error(err, config_dir, config_name, overrides) from None
    check_known_keys(cfg)
    return cfg


def check_composition(
    config_dir: Path, config_name: str, overrides: Sequence[str], multirun: bool
) -> None:
    """Compose the jobs of a command line and raise :class:`ConfigError` for the first that
    does not compose. A multirun's jobs are checked so that every swept value of a list or
    range is composed once; values a sweeper samples (``interval(...)``) are its own."""
    jobs = [list(overrides)]
    if multirun:
        try:
            jobs = _covering_jobs(overrides)
        except Exception as err:  # a syntax error in an override
            raise composition_error(err, config_dir, config_name, overrides) from None
    for job in jobs:
        compose_checked(config_dir, config_name, job, hydra_config=True)


def _covering_jobs(overrides: Sequence[str]) -> list[list[str]]:
    """Jobs of a multirun (its overrides' combinations) in which every swept value appears at
    least once: one per value of the longest sweep, not their product."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.core.override_parser.types import ValueType

    listed = (ValueType.CHOICE_SWEEP, ValueType.SIMPLE_CHOICE_SWEEP, ValueType.RANGE_SWEEP)
    parsed = OverridesParser.create().parse_overrides(list(overrides))
    checkable = [o for o in parsed if not o.is_sweep_override() or o.value_type in listed]
    jobs: list[list[str]] = []
    seen: set[str] = set()
    for job in BasicSweeper.split_arguments(checkable, None)[0]:
        if not set(job) <= seen:
            jobs.append(job)
            seen |= set(job)
    return jobs


def _compose(
    config_dir: Path, config_name: str, overrides: Sequence[str], hydra_config: bool
) -> DictConfig:
    with initialize_config_dir(config_dir=str(config_dir), version_base="1.3"):
        return compose(config_name, overrides=list(overrides), return_hydra_config=hydra_config)


def composition_error(
    err: Exception, config_dir: Path, config_name: str, overrides: Sequence[str]
) -> ConfigError:
    """The :class:`ConfigError` of a failed composition of ``overrides``: the key OmegaConf
    names, else the override that fails on its own; its message on one line."""
    cause = _omegaconf_cause(err)
    if cause is not None and cause.full_key:
        key = _dotted(cause.full_key)
        return ConfigError(key, _one_line(cause) + _extra_hint(key, cause))
    key = _failing_override(config_dir, config_name, overrides)
    options = getattr(err, "options", None)  # Hydra's MissingConfigException: the group's
    hint = f"; available: {', '.join(options)}" if options else ""
    return ConfigError(key, _one_line(cause or err) + hint)


def _dotted(full_key: str) -> str:
    """OmegaConf's ``pool[0].name`` as the command line's ``pool.0.name``; an item of a list of
    values (``loss_weights[0]``) as the list's key."""
    key = re.sub(r"\[(\d+)\]", r".\1", full_key)
    return re.sub(r"\.\d+$", "", key)


def _omegaconf_cause(err: BaseException) -> OmegaConfBaseException | None:
    """The OmegaConf error behind a Hydra error (it knows the key), if any."""
    seen: BaseException | None = err
    while seen is not None:
        if isinstance(seen, OmegaConfBaseException) and getattr(seen, "full_key", None):
            return seen
        seen = seen.__cause__ or seen.__context__
    return None


def _one_line(err: BaseException) -> str:
    message = getattr(err, "msg", None) or str(err) or type(err).__name__
    return str(message).strip().splitlines()[0]


_EXTRA_WHAT = {
    "trainer": "a lightning.Trainer argument",
    "optimizer": "another argument of the optimizer class",
    "callbacks": "another Lightning callback (with its _target_)",
}


def _extra_hint(key: str, err: BaseException) -> str:
    group, _, leaf = key.partition(".")
    unknown_key = isinstance(err, ConfigAttributeError | ConfigKeyError)
    if group in _EXTRA_WHAT and "." not in leaf and unknown_key:
        return (
            f"; {_EXTRA_WHAT[group]} mrpo does not model goes under {group}.extra "
            f"(+{group}.extra.{leaf}=...)"
        )
    return ""


def _failing_override(config_dir: Path, config_name: str, overrides: Sequence[str]) -> str:
    """The key (or group) of the first override that fails on its own; ``overrides`` when
    only their combination fails."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parser = OverridesParser.create()
    for override in overrides:
        try:
            key = parser.parse_override(override).key_or_group
        except Exception:  # the override's own syntax is the problem
            return override.partition("=")[0].lstrip("+~") or override
        try:
            _compose(config_dir, config_name, [override], hydra_config=True)
        except Exception:
            return key
    return "overrides"


def check_command_line(config_dir: Path, config_name: str, argv: Sequence[str]) -> None:
    """Compose what a Hydra command line asks for (nothing when it asks for help, a config
    print-out or another config folder) and raise :class:`ConfigError` if it cannot be."""
    from hydra._internal.utils import get_args_parser

    args, _ = get_args_parser().parse_known_args(list(argv))
    informational = args.help or args.hydra_help or args.cfg or args.info or args.shell_completion
    elsewhere = args.config_path or args.config_dir or args.config_name or args.experimental_rerun
    if informational or elsewhere:
        return
    check_composition(config_dir, config_name, args.overrides, multirun=args.multirun)


def check_known_keys(cfg: DictConfig, prefix: str = "") -> None:
    """Raise :class:`ConfigError` for a key added (``+group.key=...``) to a group whose
    settings have no such field: the conversion to the schema would drop it silently."""
    schema = OmegaConf.get_type(cfg)
    known = (
        {f.name for f in dataclasses.fields(schema)} if dataclasses.is_dataclass(schema) else None
    )
    for key in cfg:
        name = f"{prefix}{key!s}"
        if name == "hydra":  # Hydra's own settings, checked by Hydra
            continue
        if known is not None and key not in known:
            hint = _extra_hint(name, ConfigKeyError(name))
            raise ConfigError(name, f"is not a key of {getattr(schema, '__name__', schema)}{hint}")
        node = cfg._get_node(key)
        if isinstance(node, DictConfig) and not node._is_none() and not node._is_missing():
            check_known_keys(node, f"{name}.")
        elif isinstance(node, ListConfig) and not node._is_none() and not node._is_missing():
            for i in range(len(node)):
                item = node._get_node(i)
                if isinstance(item, DictConfig):
                    check_known_keys(item, f"{name}.{i}.")


def exit_on_bad_command_line(config_dir: Path, config_name: str, logger: str) -> None:
    """Compose the command line's configs before Hydra runs the job: a wrong type, an unknown
    key or group option ends here with one line naming the key and exit status 2, as every
    other bad value does (Hydra itself would exit 1 with several lines)."""
    try:
        check_command_line(config_dir, config_name, sys.argv[1:])
    except InputError as err:
        print(f"[{logger}][ERROR] - {err.kind}: {err}", file=sys.stderr, flush=True)
        sys.exit(2)
