"""``PreferenceDataModule``: data loaders over already tokenized preference pairs.

Loading, validation, tokenization and reference scoring all happen before the Trainer
starts (see :mod:`mrpo.data.pipeline`), so this module only batches: length-grouped shuffled
batches for training, length-sorted batches for validation, and the collator that pads and
attaches cached reference log-probs.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, cast

import lightning as L
from torch.utils.data import DataLoader, Dataset

from mrpo.data.collate import LengthGroupedBatchSampler, PreferenceCollator, pair_lengths
from mrpo.data.layout import PADDED, PairLayout, pair_costs
from mrpo.data.types import RefLookup, TokenizedPair


class PreferenceDataModule(L.LightningDataModule):
    """Serves tokenized train and validation pairs as :class:`PreferenceBatch` objects.

    Args:
        train_pairs, val_pairs: tokenized pairs (policy tokenizer).
        pad_token_id: the policy tokenizer's pad id.
        ref_lookup: maps a (B,) tensor of row indices to cached reference log-probs
            ``(ref_chosen (K, B), ref_rejected (K, B))``; None in live mode.
        batch_size, eval_batch_size: pairs per batch (each pair gives two rows).
        group_by_length: batch pairs of similar length together to cut padding.
        seed: shuffling seed; with the epoch it fixes the order (so a resumed run sees the
            same batches).
        layout: how a batch's pairs become rows (:mod:`mrpo.data.layout`).
        max_tokens_per_batch: cut training batches by this token budget (in ``layout``'s
            tokens) instead of ``batch_size`` pairs; None keeps ``batch_size``.
        test_pairs: tokenized pairs of the held-out test split (``trainer.test``), if any.
    """

    def __init__(
        self,
        train_pairs: Sequence[TokenizedPair],
        val_pairs: Sequence[TokenizedPair],
        *,
        pad_token_id: int,
        ref_lookup: RefLookup | None,
        batch_size: int,
        eval_batch_size: int,
        group_by_length: bool = True,
        seed: int = 0,
        num_workers: int = 0,
        layout: PairLayout = PADDED,
        max_tokens_per_batch: int | None = None,
        test_pairs: Sequence[TokenizedPair] = (),
    ) -> None:
        super().__init__()
        self.train_pairs = train_pairs  # a PairTable stays columns (and memory-mapped)
        self.val_pairs = val_pairs
        self.test_pairs = test_pairs
        self.collator = PreferenceCollator(pad_token_id, ref_lookup=ref_lookup, layout=layout)
        self.max_tokens_per_batch = max_tokens_per_batch
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size
        self.group_by_length = group_by_length
        self.seed = seed
        self.num_workers = num_workers
        self._resume_skip = 0
        self._train_sampler: LengthGroupedBatchSampler | None = None

    def train_dataloader(self) -> DataLoader:
        sampler = LengthGroupedBatchSampler(
            pair_lengths(self.train_pairs),
            self.batch_size,
            seed=self.seed,
            group_by_length=self.group_by_length,
            epoch_source=self._current_epoch,
            max_tokens=self.max_tokens_per_batch,
            costs=pair_costs(self.train_pairs, self.collator.layout),
            **self._replicas(),
        )
        _skip_done(sampler, self._resume_skip)
        self._resume_skip = 0
        self._train_sampler = sampler
        return self._loader(self.train_pairs, sampler)

    def _current_epoch(self) -> int:
        return 0 if self.trainer is None else int(self.trainer.current_epoch)

    def state_dict(self) -> dict[str, Any]:
        """Saved in checkpoints: the epoch and how many of its batches were trained on."""
        if self.trainer is None:
            return {}
        # Checkpoints are written in on_train_batch_end (the batch is processed but not yet
        # counted as completed) or at the end of the epoch (every batch processed).
        progress = self.trainer.fit_loop.epoch_loop.batch_progress.current
        return {
            "epoch": int(self.trainer.current_epoch),
            "batches_done": int(progress.processed),  # type: ignore[attr-defined]
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        done = int(state_dict.get("batches_done", 0))
        if self._train_sampler is not None:
            # Strategies that restore after setup (FSDP's ModelParallelStrategy) have built
            # the training loader already, to count the steps: its sampler skips instead.
            _skip_done(self._train_sampler, done)
        else:
            self._resume_skip = done

    def val_dataloader(self) -> DataLoader:
        return self._eval_loader(self.val_pairs)

    def test_dataloader(self) -> DataLoader:
        return self._eval_loader(self.test_pairs)

    def _eval_loader(self, pairs: Sequence[TokenizedPair]) -> DataLoader:
        # Sorted by length, not shuffled: evaluation order does not matter, padding does.
        sampler = LengthGroupedBatchSampler(
            pair_lengths(pairs), self.eval_batch_size, shuffle=False, **self._replicas()
        )
        return self._loader(pairs, sampler)

    def _replicas(self) -> dict[str, Any]:
        """Data parallel position: rank r of n takes every n-th batch of the global order.

        The Trainer must not swap in its own distributed sampler (``use_distributed_sampler=
        False``): the samplers here split the same length-grouped order that one process
        would see, so n ranks with batch size B step like one process with B and n-fold
        gradient accumulation.
        """
        if self.trainer is None:
            return {}
        return {"num_replicas": self.trainer.world_size, "rank": self.trainer.global_rank}

    def _loader(
        self, pairs: Sequence[TokenizedPair], sampler: LengthGroupedBatchSampler
    ) -> DataLoader:
        # A list or a PairTable is a map-style data set (``__getitem__``, ``__len__``) as it is.
        dataset = cast("Dataset[TokenizedPair]", pairs)
        return DataLoader(
            dataset, batch_sampler=sampler, collate_fn=self.collator, num_workers=self.num_workers
        )


def _skip_done(sampler: LengthGroupedBatchSampler, batches_done: int) -> None:
    """Make a resumed run's sampler skip the batches its epoch already trained on.

    The order depends only on (seed, epoch), so skipping them continues exactly where the
    interrupted run stopped. A checkpoint from the end of an epoch (every batch done) resumes
    with the next epoch, whole.
    """
    if 0 < batches_done < len(sampler):
        sampler.skip_next(batches_done)
