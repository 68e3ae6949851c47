"""The ``references`` group: the pool of reference models and which of them a run uses.

The references a run uses are built here from the config without loading anything (the specs,
checked with their keys, ``references.pool.<i>.<field>``); the config checks and the training
steps call the same functions, so a config that passed the checks builds the same objects.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import TYPE_CHECKING

from mrpo.errors import ConfigError, option_prefix
from mrpo.references.ensemble import ReferenceEnsemble
from mrpo.references.spec import ReferenceSpec

if TYPE_CHECKING:
    from mrpo.config.schema import TrainConfig

__all__ = ["build_ensemble", "num_references", "reference_specs", "selected_references"]


def selected_references(cfg: TrainConfig) -> list[tuple[int, ReferenceSpec]]:
    """(pool position, entry) of the references the run uses, primary first.

    ``references.select`` names them in order; otherwise they are the first
    ``references.num_refs`` entries of the pool (all when null).

    Raises:
        ConfigError: ``references.select`` names an entry twice or one the pool lacks, or
            ``references.num_refs`` is set as well and disagrees with it.
    """
    refs = cfg.references
    if refs.select is None:
        count = len(refs.pool) if refs.num_refs is None else refs.num_refs
        return list(enumerate(refs.pool[:count]))
    names = [r.name for r in refs.pool]
    unknown = [n for n in refs.select if n not in names]
    if unknown or not refs.select:
        raise ConfigError(
            "references.select", f"names {unknown or 'nothing'}; the pool holds {names}"
        )
    if len(set(refs.select)) != len(refs.select):
        raise ConfigError("references.select", f"names an entry twice: {list(refs.select)}")
    if refs.num_refs is not None and refs.num_refs != len(refs.select):
        raise ConfigError(
            "references.num_refs",
            f"is {refs.num_refs} but references.select names {len(refs.select)}; set one of them",
        )
    return [(names.index(n), refs.pool[names.index(n)]) for n in refs.select]


def num_references(cfg: TrainConfig) -> int:
    """K, the number of references the run uses (:func:`selected_references`)."""
    return len(selected_references(cfg))


def reference_specs(cfg: TrainConfig) -> list[ReferenceSpec]:
    """The K references the run uses; ``loss.length_normalize`` applies to all of them.

    Raises:
        ConfigError: naming ``references.pool.<i>.<field>`` for an unusable entry, or the
            selection (:func:`selected_references`).
    """
    specs = []
    for i, ref in selected_references(cfg):
        spec = replace(ref, length_normalize=ref.length_normalize or cfg.loss.length_normalize)
        with option_prefix(f"references.pool.{i}"):
            spec.check()
        specs.append(spec)
    return specs


def build_ensemble(
    cfg: TrainConfig, specs: Sequence[ReferenceSpec] | None = None
) -> ReferenceEnsemble:
    """The run's K references (or ``specs``, some of them), with their cache and ranks."""
    return ReferenceEnsemble.for_run(
        reference_specs(cfg) if specs is None else specs,
        model=cfg.model,
        data=cfg.data,
        settings=cfg.references,
        cache_dir=cfg.paths.cache_dir,
        ld_alpha=cfg.loss.ld_alpha,
    )
