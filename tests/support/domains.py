"""Out-of-domain values for every key of a composed config, for the property tests of the
config checks (``tests/test_config_domains.py``).

Each leaf key of the composed config is looked up in the schema's settings objects; its
declared domain (:mod:`mrpo.domains`) lists values outside it, each turned into a Hydra
override the command line would take.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Iterator
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf

from mrpo.domains import Domain, domain_of

__all__ = ["bad_overrides", "hydra_value", "leaf_domains", "with_override"]


def _leaves(node: Any, prefix: str) -> Iterator[str]:
    """Dotted keys of the leaves: scalars, lists of scalars and empty mappings."""
    container = isinstance(node, DictConfig | ListConfig) and not node._is_none()
    if container and isinstance(node, DictConfig) and len(node) > 0:
        for key in node:
            yield from _leaves(node._get_node(key), f"{prefix}{key!s}.")
    elif (
        isinstance(node, ListConfig)
        and container
        and any(isinstance(node._get_node(i), DictConfig) for i in range(len(node)))
    ):
        for i in range(len(node)):
            yield from _leaves(node._get_node(i), f"{prefix}{i}.")
    else:
        yield prefix.rstrip(".")


def leaf_domains(cfg: DictConfig, settings: Any) -> dict[str, Domain | None]:
    """Every leaf key of ``cfg`` (Hydra's own keys left out) with the domain its field in
    ``settings`` (the same config as the schema's dataclasses) declares, or None."""
    keys = [k for k in _leaves(cfg, "") if not k.startswith("hydra.")]
    return {key: _domain_at(settings, key) for key in keys}


def _domain_at(settings: Any, key: str) -> Domain | None:
    parent, node = None, settings
    *path, leaf = key.split(".")
    for part in path:
        node = node[int(part)] if isinstance(node, list) else getattr(node, part, None)
    parent = node
    if not dataclasses.is_dataclass(parent):
        return None
    fields = {f.name: f for f in dataclasses.fields(parent)}
    return domain_of(fields[leaf]) if leaf in fields else None


def hydra_value(value: Any) -> str:
    """``value`` as the right-hand side of a Hydra override."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, str):
        return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"
    if isinstance(value, list | tuple):
        return "[" + ",".join(hydra_value(v) for v in value) + "]"
    return repr(value)


def bad_overrides(domains: dict[str, Domain | None]) -> list[tuple[str, str]]:
    """(key, override) for every value outside every leaf's domain."""
    return [
        (key, f"{key}={hydra_value(value)}")
        for key, domain in domains.items()
        if domain is not None
        for value in domain.outside()
    ]


def with_override(cfg: DictConfig, override: str) -> DictConfig:
    """A copy of the composed ``cfg`` with one ``key=value`` override applied the way Hydra
    applies it (``OmegaConf.update`` of the parsed value, the config in struct mode): the
    same errors, without composing the whole config again."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parsed = OverridesParser.create().parse_override(override)
    changed = copy.deepcopy(cfg)
    OmegaConf.update(changed, parsed.key_or_group, parsed.value(), merge=True)
    return changed
