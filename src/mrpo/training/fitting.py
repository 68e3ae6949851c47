"""A run's fit between two validations, and its test split scored after training."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import lightning as L


def fit_and_validate(
    trainer: L.Trainer,
    module: L.LightningModule,
    datamodule: L.LightningDataModule,
    ckpt_path: str | None = None,
) -> tuple[dict[str, float], dict[str, float]]:
    """Validate (unless resuming from ``ckpt_path``), train, validate, then score the test
    split if the data module has one; return the metrics before and after training
    (``test/...`` among the latter)."""
    before = (
        {} if ckpt_path else _first(trainer.validate(module, datamodule=datamodule, verbose=False))
    )
    trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path)
    after = _first(trainer.validate(module, datamodule=datamodule, verbose=False))
    if getattr(datamodule, "test_pairs", None):
        after.update(_first(trainer.test(module, datamodule=datamodule, verbose=False)))
    return before, after


def _first(results: Sequence[Mapping[str, float]]) -> dict[str, float]:
    """The metrics of the first dataloader of ``Trainer.validate`` / ``Trainer.test``."""
    return {k: float(v) for k, v in (results[0] if results else {}).items()}
