"""The ``references`` group: the pool of reference models and which of them a run uses.

The references a run uses are built here from the config without loading anything (the specs,
checked with their keys, ``references.pool.<i>.<field>``); the config checks and the training
steps call the same functions, so a config that passed the checks builds the same objects.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from omegaconf import MISSING

from mrpo.domains import Choice, Flag, Items, Number, Text, setting
from mrpo.errors import ConfigError, OptionError
from mrpo.references.spec import ReferenceSpec

if TYPE_CHECKING:
    from mrpo.config.schema import TrainConfig

__all__ = [
    "REF_MODES",
    "ReferencesConfig",
    "num_references",
    "reference_specs",
    "selected_references",
]

REF_MODES = ("cached", "live")


@dataclass
class ReferencesConfig:
    """The reference ensemble: the first ``num_refs`` entries of ``pool`` (all when null)."""

    pool: list[ReferenceSpec] = setting(MISSING, Items(min_len=1))
    num_refs: int | None = setting(None, Number(int, ge=1, nullable=True))
    # Pool entries to use, by name and in this order, instead of the first num_refs.
    select: list[str] | None = setting(None, Items(Text(), min_len=1, nullable=True))
    mode: str = setting("cached", Choice(REF_MODES))
    batch_size: int = setting(8, Number(int, ge=1))
    # Ranks started together (torchrun, srun) each score 1/N of a missing cache entry's rows.
    split_across_ranks: bool = setting(True, Flag())
    shard_timeout_s: float = setting(7200.0, Number(float, gt=0))  # wait for the others' shards
    # How long a job waits for another job filling the same cache entry (null: forever).
    lock_timeout_s: float | None = setting(10800.0, Number(float, gt=0, nullable=True))


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
        try:
            spec.check()
        except OptionError as err:
            raise ConfigError(f"references.pool.{i}.{err.option}", str(err)) from None
        specs.append(spec)
    return specs
